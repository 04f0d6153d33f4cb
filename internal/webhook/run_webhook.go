// Package webhook owns the validating admission webhook of Runs: the graph checks that the CRD
// schema cannot express, and the change-group update token's compare-and-swap.
package webhook

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/ledger"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/restart"
	"runservice.dev/runservice/pkg/dag"
)

// RunPath is where the Run webhook is served.
const RunPath = "/validate-runservice-dev-v1alpha1-run"

// +kubebuilder:webhook:path=/validate-runservice-dev-v1alpha1-run,mutating=false,failurePolicy=fail,sideEffects=NoneOnDryRun,groups=runservice.dev,resources=runs,verbs=create;update,versions=v1alpha1,name=vrun.runservice.dev,admissionReviewVersions=v1,timeoutSeconds=15

// +kubebuilder:rbac:groups=runservice.dev,resources=changegroups,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=runservice.dev,resources=changegroups/status,verbs=update

// RunValidator validates Runs, admits the requests that start a run into its change groups, and makes
// every request that carries an update token a compare-and-swap on the groups.
type RunValidator struct {
	Ledger *ledger.Ledger
	// Reader reads live from the apiserver.
	Reader client.Reader
	// Store is the archive's object store, where restarted runs no longer live are found (nil: none).
	Store *objectstore.Store
	// Manager is the user the manager's replicas run as (Self): the only one that may change a
	// run's shard labels.
	Manager string
}

var _ admission.Handler = (*RunValidator)(nil)

// SetupWithManager registers the webhook on the manager's webhook server.
func (v *RunValidator) SetupWithManager(mgr ctrl.Manager) {
	mgr.GetWebhookServer().Register(RunPath, &webhook.Admission{Handler: v})
}

// Handle implements admission.Handler.
func (v *RunValidator) Handle(ctx context.Context, req admission.Request) admission.Response {
	run := &rsv1.Run{}
	if err := json.Unmarshal(req.Object.Raw, run); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding run: %w", err))
	}
	dryRun := req.DryRun != nil && *req.DryRun
	switch req.Operation {
	case admissionv1.Create:
		return v.create(ctx, run, dryRun)
	case admissionv1.Update:
		old := &rsv1.Run{}
		if err := json.Unmarshal(req.OldObject.Raw, old); err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding old run: %w", err))
		}
		if errs := shardLabelChanges(old, run, req.UserInfo.Username, v.Manager); len(errs) > 0 {
			return invalid(run, errs)
		}
		return v.update(ctx, old, run, dryRun)
	}
	return admission.Allowed("")
}

func (v *RunValidator) create(ctx context.Context, run *rsv1.Run, dryRun bool) admission.Response {
	errs := append(dag.Validate(&run.Spec, field.NewPath("spec")), dag.ValidateSize(run)...)
	errs = append(errs, validateArchiveAfter(run)...)
	errs = append(errs, validateSelectedLabels(run)...)
	if len(run.Name)+1+63 > 253 {
		errs = append(errs, field.TooLong(field.NewPath("metadata", "name"), run.Name, 253-64))
	}
	if run.Spec.RestartFrom != nil {
		rerrs, err := v.validateRestart(ctx, run)
		if err != nil {
			return admission.Errored(http.StatusInternalServerError, err)
		}
		errs = append(errs, rerrs...)
	}
	token, carried := carriedToken(nil, run)
	tokens, terrs := parseToken(run, token, carried)
	if errs = append(errs, terrs...); len(errs) > 0 {
		return invalid(run, errs)
	}
	starting := !run.IsSuspended() && !run.IsStopped()
	if len(run.Spec.ChangeGroups) == 0 || (!starting && !carried) {
		return admission.Allowed("")
	}
	// A create that will fail with AlreadyExists must not touch the ledger.
	if err := v.Reader.Get(ctx, types.NamespacedName{Namespace: run.Namespace, Name: run.Name}, &rsv1.Run{}); err == nil {
		return admission.Allowed("")
	} else if !apierrors.IsNotFound(err) {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("reading run %s: %w", run.Name, err))
	}
	if starting {
		return v.admit(ctx, run, tokens, dryRun)
	}
	return v.touch(ctx, run, tokens, dryRun)
}

// validateArchiveAfter checks the run's AnnotationArchiveAfter.
func validateArchiveAfter(run *rsv1.Run) field.ErrorList {
	v := run.Annotations[rsv1.AnnotationArchiveAfter]
	if _, err := rsv1.ParseArchiveAfter(v); err != nil {
		return field.ErrorList{field.Invalid(field.NewPath("metadata", "annotations").Key(rsv1.AnnotationArchiveAfter), v, err.Error())}
	}
	return nil
}

// validateRestart checks that the run a restart names exists, live or archived, with the uid
// named, and has ended. An error is one of reading, not a refusal.
func (v *RunValidator) validateRestart(ctx context.Context, run *rsv1.Run) (field.ErrorList, error) {
	rf := *run.Spec.RestartFrom
	p := field.NewPath("spec", "restartFrom")
	if errs := restart.Validate(rf, p); len(errs) > 0 {
		return errs, nil
	}
	doc, err := restart.Find(ctx, v.Reader, v.Store, run.Namespace, rf, false)
	var gone *restart.GoneError
	var many *restart.TooManyError
	if errors.As(err, &many) {
		return field.ErrorList{field.Required(p.Child("uid"), many.Error())}, nil
	}
	if errors.As(err, &gone) {
		if rf.UID != "" {
			// A run of that name with another uid (live or archived) makes it the uid that is wrong.
			byName := rf
			byName.UID = ""
			_, err := restart.Find(ctx, v.Reader, v.Store, run.Namespace, byName, false)
			if err == nil || errors.As(err, new(*restart.TooManyError)) {
				return field.ErrorList{field.Invalid(p.Child("uid"), rf.UID, gone.Error())}, nil
			}
			if !errors.As(err, new(*restart.GoneError)) {
				return nil, fmt.Errorf("finding the restarted run %s: %w", rf.Run, err)
			}
		}
		nowhere := &restart.GoneError{Namespace: run.Namespace, Run: rf.Run}
		return field.ErrorList{field.Invalid(p.Child("run"), rf.Run, nowhere.Error())}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("finding the restarted run %s: %w", rf.Run, err)
	}
	if phase := doc.Status.Phase; !phase.IsFinal() {
		if phase == "" {
			phase = rsv1.RunPhaseQueued
		}
		return field.ErrorList{field.Forbidden(p.Child("run"), fmt.Sprintf(
			"run %s is still %s: stop it (runctl stop %s) or wait for its end (runctl wait %s), then restart it", rf.Run, phase, rf.Run, rf.Run))}, nil
	}
	return nil, nil
}

// validateSelectedLabels checks the labels that select live and archived runs alike
// (archive.Labels): they say what the run is, so a run may not claim a phase or result it has not
// reached or a change group it is not in.
func validateSelectedLabels(run *rsv1.Run) field.ErrorList {
	var errs field.ErrorList
	path := field.NewPath("metadata", "labels")
	final := run.Status.Phase.IsFinal()
	for k, v := range run.Labels {
		switch {
		case k == arv1.LabelPhase && (!final || v != string(run.Status.Phase)):
			errs = append(errs, field.Forbidden(path.Key(k), "set by the manager when the run ends, to its final phase"))
		case k == arv1.LabelResult && (!final || v != string(run.Status.Result)):
			errs = append(errs, field.Forbidden(path.Key(k), "set by the manager when the run ends, to its result"))
		case strings.HasPrefix(k, arv1.LabelChangeGroupPrefix) && !slices.Contains(run.Spec.ChangeGroups, strings.TrimPrefix(k, arv1.LabelChangeGroupPrefix)):
			errs = append(errs, field.Forbidden(path.Key(k), "the run is not in that change group: name it in spec.changeGroups (the label follows)"))
		case strings.HasPrefix(k, arv1.LabelChangeGroupPrefix) && v != "":
			errs = append(errs, field.Invalid(path.Key(k), v, "a change-group label has no value (the manager sets it, empty, for each of spec.changeGroups)"))
		case k == rsv1.LabelRestartedFrom && (run.Spec.RestartFrom == nil || v != rsv1.LabelValue(run.Spec.RestartFrom.Run)):
			errs = append(errs, field.Forbidden(path.Key(k), "set at admission to the run spec.restartFrom names: only a restart has it (runctl restart RUN)"))
		}
	}
	return errs
}

func (v *RunValidator) update(ctx context.Context, old, run *rsv1.Run, dryRun bool) admission.Response {
	errs := immutableChanges(old, run)
	errs = append(errs, dag.ValidateApprovedTasks(&run.Spec, old.Spec.ApprovedTasks, field.NewPath("spec"))...)
	errs = append(errs, validateArchiveAfter(run)...)
	errs = append(errs, validateSelectedLabels(run)...)
	if len(dag.ValidateSize(old)) == 0 {
		// An update (annotations, approvals) may not make a run that fits outgrow what it may hold;
		// a run admitted before the limits existed can still be stopped.
		errs = append(errs, dag.ValidateSize(run)...)
	}
	token, carried := carriedToken(old, run)
	tokens, terrs := parseToken(run, token, carried)
	if errs = append(errs, terrs...); len(errs) > 0 {
		return invalid(run, errs)
	}
	if len(run.Spec.ChangeGroups) == 0 {
		return admission.Allowed("")
	}
	starting := run.DeletionTimestamp == nil && old.IsSuspended() && !run.IsSuspended() && !run.IsStopped() &&
		(old.Status.Phase == "" || old.Status.Phase == rsv1.RunPhaseQueued)
	resp := admission.Allowed("")
	switch {
	case starting:
		resp = v.admit(ctx, run, tokens, dryRun)
	case carried:
		resp = v.touch(ctx, run, tokens, dryRun)
	}
	// A client that changes the spec and keeps the stored token may believe it made a
	// compare-and-swap; the manager's writes leave the spec alone and get no warning.
	if resp.Allowed && spentToken(old, run) && !equality.Semantic.DeepEqual(old.Spec, run.Spec) {
		resp = resp.WithWarnings(fmt.Sprintf("metadata.annotations[%s] is the token the run already stores, spent by the request that set it: "+
			"this update was not a compare-and-swap; send a token read from the change groups now, or remove the annotation",
			rsv1.AnnotationUpdateToken))
	}
	return resp
}

// immutableChanges refuses the changes of the run's spec that it may not have once created: its
// tasks, change groups and restart are what was admitted and scheduled, and a stop is not undone.
// (The CRD schema said so in CEL rules, which the apiserver evaluated on every write of the run,
// status included.)
func immutableChanges(old, run *rsv1.Run) field.ErrorList {
	var errs field.ErrorList
	spec := field.NewPath("spec")
	if !equality.Semantic.DeepEqual(old.Spec.Tasks, run.Spec.Tasks) {
		errs = append(errs, field.Forbidden(spec.Child("tasks"), "tasks are immutable once the run is created"))
	}
	if !slices.Equal(old.Spec.ChangeGroups, run.Spec.ChangeGroups) {
		errs = append(errs, field.Forbidden(spec.Child("changeGroups"), "changeGroups is immutable"))
	}
	if !equality.Semantic.DeepEqual(old.Spec.RestartFrom, run.Spec.RestartFrom) {
		errs = append(errs, field.Forbidden(spec.Child("restartFrom"), "restartFrom is immutable"))
	}
	if old.IsStopped() && !run.IsStopped() {
		errs = append(errs, field.Forbidden(spec.Child("stop"), "stop cannot be undone"))
	}
	return errs
}

// carriedToken returns the update token the request sends, and whether it sends one. A create sends
// the annotation when it has it. An update sends it only when the annotation's value differs from the
// stored run's: the annotation stays on the run after the request that carried it, so the manager's
// own writes (its finalizer) and a client's patch that does not mention the annotation leave it as it
// was, and must not be refused. A value equal to the stored one cannot be a valid token anyway:
// the request that stored it was a compare-and-swap, and every ledger write bumps the group's
// status.sequence and so its resourceVersion, which spends the token. Removing the annotation carries
// nothing.
func carriedToken(old, run *rsv1.Run) (string, bool) {
	token, ok := run.Annotations[rsv1.AnnotationUpdateToken]
	if !ok || old == nil {
		return token, ok
	}
	prev, had := old.Annotations[rsv1.AnnotationUpdateToken]
	return token, !had || prev != token
}

// spentToken reports whether the update keeps the token the run already stores.
func spentToken(old, run *rsv1.Run) bool {
	_, ok := run.Annotations[rsv1.AnnotationUpdateToken]
	_, carried := carriedToken(old, run)
	return ok && !carried
}

// parseToken returns the resourceVersion a carried token holds for each of the run's groups (nil
// when the request carries none), or the errors that refuse it.
func parseToken(run *rsv1.Run, token string, carried bool) (map[string]string, field.ErrorList) {
	if !carried {
		return nil, nil
	}
	p := field.NewPath("metadata", "annotations").Key(rsv1.AnnotationUpdateToken)
	if len(run.Spec.ChangeGroups) == 0 {
		return nil, field.ErrorList{field.Forbidden(p, "the run has no spec.changeGroups, so there is no change group to compare and swap: "+
			"name the groups in spec.changeGroups (at create; they are immutable), or remove the annotation")}
	}
	tokens, err := rsv1.ParseUpdateToken(token, run.Spec.ChangeGroups)
	if err != nil {
		return nil, field.ErrorList{field.Invalid(p, token, err.Error())}
	}
	return tokens, nil
}

// admit records a run that is about to start in its groups' ledgers, as a compare-and-swap at the
// tokens when the request carries them. Groups with maxActiveRuns are left to the changegroup
// controller, which starts their runs oldest first.
func (v *RunValidator) admit(ctx context.Context, run *rsv1.Run, tokens map[string]string, dryRun bool) admission.Response {
	for _, g := range run.Spec.ChangeGroups {
		cg := &rsv1.ChangeGroup{}
		err := v.Reader.Get(ctx, types.NamespacedName{Namespace: run.Namespace, Name: g}, cg)
		if err == nil && cg.Spec.MaxActiveRuns != nil {
			if tokens != nil {
				return invalid(run, field.ErrorList{field.Forbidden(field.NewPath("metadata", "annotations").Key(rsv1.AnnotationUpdateToken),
					fmt.Sprintf("change group %q has maxActiveRuns: the manager starts its runs; drop the annotation", g))})
			}
			return admission.Allowed("queued: change group " + g + " starts its runs itself")
		}
	}
	if dryRun {
		return admission.Allowed("")
	}
	if err := v.Ledger.Admit(ctx, run.Namespace, run.Name, run.Spec.ChangeGroups, tokens, change(run)); err != nil {
		return ledgerError(err)
	}
	return admission.Allowed("")
}

// touch is the compare-and-swap of a request that carries a token but does not start the run: it
// bumps each group at the token's version without changing what the group counts.
func (v *RunValidator) touch(ctx context.Context, run *rsv1.Run, tokens map[string]string, dryRun bool) admission.Response {
	if dryRun {
		return admission.Allowed("")
	}
	if err := v.Ledger.Touch(ctx, run.Namespace, run.Name, run.Spec.ChangeGroups, tokens, change(run)); err != nil {
		return ledgerError(err)
	}
	return admission.Allowed("")
}

// change names what a request carrying a token asks for, for the ledger to recognize the request
// when the apiserver asks about it again: the run's uid and its spec as admitted. The apiserver asks
// again after its write met a concurrent write of the run (the manager's, under load): it applies the
// request to the newer run, whose spec is the same unless another client changed the spec between
// (then the second ask is refused, as a stale token is). Metadata is left out: the manager writes
// labels and finalizers; the spec is only the clients'.
func change(run *rsv1.Run) string {
	if run.UID == "" {
		return "" // not the apiserver's (it sets the uid before asking): never recognized
	}
	spec, _ := json.Marshal(run.Spec) // a decoded spec always marshals
	sum := sha256.Sum256(append([]byte(string(run.UID)+"\n"), spec...))
	return hex.EncodeToString(sum[:16])
}

func invalid(run *rsv1.Run, errs field.ErrorList) admission.Response {
	st := apierrors.NewInvalid(rsv1.GroupVersion.WithKind("Run").GroupKind(), run.Name, errs).ErrStatus
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &st}}
}

func ledgerError(err error) admission.Response {
	var conflict *ledger.ConflictError
	if errors.As(err, &conflict) {
		return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
			Code: http.StatusConflict, Reason: metav1.StatusReasonConflict, Message: err.Error(),
			Details: &metav1.StatusDetails{Group: rsv1.GroupVersion.Group, Kind: "changegroups", Name: conflict.Group},
		}}}
	}
	return admission.Errored(http.StatusInternalServerError, err)
}
