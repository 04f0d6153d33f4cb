package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"gomodules.xyz/jsonpatch/v2"

	admissionv1 "k8s.io/api/admission/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/restart"
	"runservice.dev/runservice/internal/shard"
)

// DefaultPath is where the Run defaulting webhook is served.
const DefaultPath = "/mutate-runservice-dev-v1alpha1-run"

// +kubebuilder:webhook:path=/mutate-runservice-dev-v1alpha1-run,mutating=true,failurePolicy=fail,sideEffects=None,groups=runservice.dev,resources=runs,verbs=create,versions=v1alpha1,name=mrun.runservice.dev,admissionReviewVersions=v1,timeoutSeconds=15,reinvocationPolicy=IfNeeded

// RunDefaulter gives every Run, as it is created, the finalizers and labels the manager keeps on it
// (Finalizers, archive.Labels), so that the manager need not add them in a write of its own; and a
// run in change groups is never without the finalizer that releases it from their ledgers, not even
// for the moment before a reconcile.
//
// A restart (spec.restartFrom) also gets the label LabelRestartedFrom and, when it names no uid, the
// uid of the run it restarts: the live run of that name, else the newest archived one.
type RunDefaulter struct {
	// Archiving says whether the manager archives finished runs.
	Archiving bool
	// Reader reads live from the apiserver; Store is the archive's object store (nil: none).
	Reader client.Reader
	Store  *objectstore.Store
	// Shard, in a sharded manager, is the replica's view of the shard ring: a run is labelled with
	// its owner as it is created (shardLabels).
	Shard shard.View
}

var _ admission.Handler = (*RunDefaulter)(nil)

// SetupWithManager registers the webhook on the manager's webhook server.
func (d *RunDefaulter) SetupWithManager(mgr ctrl.Manager) {
	mgr.GetWebhookServer().Register(DefaultPath, &webhook.Admission{Handler: d})
}

// Handle implements admission.Handler.
func (d *RunDefaulter) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create {
		return admission.Allowed("")
	}
	run := &rsv1.Run{}
	if err := json.Unmarshal(req.Object.Raw, run); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding run: %w", err))
	}
	labels := archive.Labels(run)
	ops := shardLabels(run, req.Namespace, d.Shard, labels)
	if rf := run.Spec.RestartFrom; rf != nil && len(restart.Validate(*rf, nil)) == 0 {
		// (One that names no run by an object name is the validating webhook's to refuse.)
		labels[rsv1.LabelRestartedFrom] = rsv1.LabelValue(rf.Run)
		if rf.UID == "" {
			doc, err := restart.Find(ctx, d.Reader, d.Store, run.Namespace, *rf, false)
			switch {
			case err == nil:
				ops = append(ops, jsonpatch.NewOperation("add", "/spec/restartFrom/uid", doc.UID))
			case errors.As(err, new(*restart.GoneError)), errors.As(err, new(*restart.TooManyError)):
				// A run that is nowhere, or a name with too many archived runs to pick one: the
				// validating webhook refuses it, naming the field.
			default:
				return admission.Errored(http.StatusInternalServerError, fmt.Errorf("finding the restarted run %s: %w", rf.Run, err))
			}
		}
	}
	return admission.Patched("", append(metaPatch(run, Finalizers(run, d.Archiving), labels), ops...)...)
}

// metaPatch adds to run the finalizers and labels it lacks. A label it has with another value is
// left for the validating webhook to refuse, naming it. Only metadata is patched: the rest of the
// run stays as its author wrote it.
func metaPatch(run *rsv1.Run, finalizers []string, labels map[string]string) []jsonpatch.JsonPatchOperation {
	var ops []jsonpatch.JsonPatchOperation
	for _, f := range finalizers {
		switch {
		case slices.Contains(run.Finalizers, f):
		case len(run.Finalizers) == 0 && len(ops) == 0:
			ops = append(ops, jsonpatch.NewOperation("add", "/metadata/finalizers", []string{f}))
		default:
			ops = append(ops, jsonpatch.NewOperation("add", "/metadata/finalizers/-", f))
		}
	}
	keys := slices.Sorted(maps.Keys(labels))
	if run.Labels == nil && len(keys) > 0 {
		ops = append(ops, jsonpatch.NewOperation("add", "/metadata/labels", labels))
		return ops
	}
	for _, k := range keys {
		if _, ok := run.Labels[k]; !ok {
			ops = append(ops, jsonpatch.NewOperation("add", "/metadata/labels/"+pointerEscape.Replace(k), labels[k]))
		}
	}
	return ops
}

// pointerEscape escapes a JSON pointer's reference token (RFC 6901).
var pointerEscape = strings.NewReplacer("~", "~0", "/", "~1")

// Finalizers are the finalizers a run needs: the change-group ledger's when it is in groups (it is
// released from their ledgers before it goes), the archive's when the manager archives (it stays
// until it is archived).
func Finalizers(run *rsv1.Run, archiving bool) []string {
	var out []string
	if len(run.Spec.ChangeGroups) > 0 {
		out = append(out, rsv1.FinalizerChangeGroupLedger)
	}
	if archiving {
		out = append(out, rsv1.FinalizerArchive)
	}
	return out
}
