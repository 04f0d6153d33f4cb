// Package webhook owns the validating admission webhook of Runs: the graph checks that the CRD
// schema cannot express, and the change-group update token's compare-and-swap.
package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/ledger"
	"runservice.dev/runservice/pkg/dag"
)

// RunPath is where the Run webhook is served.
const RunPath = "/validate-runservice-dev-v1alpha1-run"

// +kubebuilder:webhook:path=/validate-runservice-dev-v1alpha1-run,mutating=false,failurePolicy=fail,sideEffects=NoneOnDryRun,groups=runservice.dev,resources=runs,verbs=create;update,versions=v1alpha1,name=vrun.runservice.dev,admissionReviewVersions=v1,timeoutSeconds=15

// +kubebuilder:rbac:groups=runservice.dev,resources=changegroups,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=runservice.dev,resources=changegroups/status,verbs=get;update;patch

// RunValidator validates Runs and performs the change-group admission of the requests that start a run.
type RunValidator struct {
	Ledger *ledger.Ledger
	// Reader reads live from the apiserver.
	Reader client.Reader
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
		return v.update(ctx, old, run, dryRun)
	}
	return admission.Allowed("")
}

func (v *RunValidator) create(ctx context.Context, run *rsv1.Run, dryRun bool) admission.Response {
	errs := dag.Validate(&run.Spec, field.NewPath("spec"))
	if len(run.Name)+1+63 > 253 {
		errs = append(errs, field.TooLong(field.NewPath("metadata", "name"), run.Name, 253-64))
	}
	if len(errs) > 0 {
		return invalid(run, errs)
	}
	if len(run.Spec.ChangeGroups) == 0 || run.IsSuspended() || run.IsStopped() {
		return admission.Allowed("")
	}
	// A create that will fail with AlreadyExists must not touch the ledger.
	if err := v.Reader.Get(ctx, types.NamespacedName{Namespace: run.Namespace, Name: run.Name}, &rsv1.Run{}); err == nil {
		return admission.Allowed("")
	} else if !apierrors.IsNotFound(err) {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return v.admit(ctx, run, dryRun)
}

func (v *RunValidator) update(ctx context.Context, old, run *rsv1.Run, dryRun bool) admission.Response {
	if errs := dag.ValidateApprovedTasks(&run.Spec, old.Spec.ApprovedTasks, field.NewPath("spec")); len(errs) > 0 {
		return invalid(run, errs)
	}
	if len(run.Spec.ChangeGroups) == 0 || run.DeletionTimestamp != nil {
		return admission.Allowed("")
	}
	starting := old.IsSuspended() && !run.IsSuspended() && !run.IsStopped() &&
		(old.Status.Phase == "" || old.Status.Phase == rsv1.RunPhaseQueued)
	stopping := !old.IsStopped() && run.IsStopped()
	switch {
	case starting:
		return v.admit(ctx, run, dryRun)
	case stopping:
		token, ok := run.Annotations[rsv1.AnnotationUpdateToken]
		if !ok {
			return admission.Allowed("")
		}
		tokens, err := rsv1.ParseUpdateToken(token, run.Spec.ChangeGroups)
		if err != nil {
			return badToken(err)
		}
		if dryRun {
			return admission.Allowed("")
		}
		if err := v.Ledger.Touch(ctx, run.Namespace, run.Spec.ChangeGroups, tokens); err != nil {
			return ledgerError(err)
		}
	}
	return admission.Allowed("")
}

// admit records a run that is about to start in its groups' ledgers. Groups with maxActiveRuns are
// left to the changegroup controller, which starts their runs oldest first.
func (v *RunValidator) admit(ctx context.Context, run *rsv1.Run, dryRun bool) admission.Response {
	for _, g := range run.Spec.ChangeGroups {
		cg := &rsv1.ChangeGroup{}
		err := v.Reader.Get(ctx, types.NamespacedName{Namespace: run.Namespace, Name: g}, cg)
		if err == nil && cg.Spec.MaxActiveRuns != nil {
			if _, ok := run.Annotations[rsv1.AnnotationUpdateToken]; ok {
				return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
					Code: http.StatusUnprocessableEntity, Reason: metav1.StatusReasonInvalid,
					Message: fmt.Sprintf("change group %q has maxActiveRuns: the manager starts its runs; drop the %s annotation", g, rsv1.AnnotationUpdateToken),
				}}}
			}
			return admission.Allowed("queued: change group " + g + " starts its runs itself")
		}
	}
	var tokens map[string]string
	if token, ok := run.Annotations[rsv1.AnnotationUpdateToken]; ok {
		var err error
		if tokens, err = rsv1.ParseUpdateToken(token, run.Spec.ChangeGroups); err != nil {
			return badToken(err)
		}
	}
	if dryRun {
		return admission.Allowed("")
	}
	if err := v.Ledger.Admit(ctx, run.Namespace, run.Name, run.Spec.ChangeGroups, tokens); err != nil {
		return ledgerError(err)
	}
	return admission.Allowed("")
}

func invalid(run *rsv1.Run, errs field.ErrorList) admission.Response {
	st := apierrors.NewInvalid(rsv1.GroupVersion.WithKind("Run").GroupKind(), run.Name, errs).ErrStatus
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &st}}
}

func badToken(err error) admission.Response {
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
		Code: http.StatusUnprocessableEntity, Reason: metav1.StatusReasonInvalid,
		Message: fmt.Sprintf("metadata.annotations[%s]: %v", rsv1.AnnotationUpdateToken, err),
	}}}
}

func ledgerError(err error) admission.Response {
	if ledger.IsConflict(err) {
		return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &metav1.Status{
			Code: http.StatusConflict, Reason: metav1.StatusReasonConflict, Message: err.Error(),
			Details: &metav1.StatusDetails{Group: rsv1.GroupVersion.Group, Kind: "changegroups"},
		}}}
	}
	return admission.Errored(http.StatusInternalServerError, err)
}
