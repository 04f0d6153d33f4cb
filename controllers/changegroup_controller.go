package controllers

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/ledger"
)

// ChangeGroupReconciler keeps a group's ledger whole: it counts queued runs, starts queued runs oldest
// first when the group has maxActiveRuns, and drops entries of runs that were admitted by the webhook
// but never came to be (their request failed after admission). It never removes an entry on the word
// of the cache alone: a live read must confirm it, twice, PhantomGrace apart. It leaves the finished
// counts as they are (a dropped entry's run never started, so is not counted) and writes at the
// version it read, so a count written meanwhile by the run controller is never rewritten.
type ChangeGroupReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Ledger    *ledger.Ledger
	Options   Options

	mu       sync.Mutex
	phantoms map[string]time.Time // namespace/group/run -> first seen not running
}

var _ reconcile.Reconciler = (*ChangeGroupReconciler)(nil)

// +kubebuilder:rbac:groups=runservice.dev,resources=changegroups,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=runservice.dev,resources=changegroups/status,verbs=update
// +kubebuilder:rbac:groups=runservice.dev,resources=runs,verbs=get;list;watch

// Reconcile implements reconcile.Reconciler.
func (r *ChangeGroupReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	cg := &rsv1.ChangeGroup{}
	if err := r.Client.Get(ctx, req.NamespacedName, cg); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	var runs rsv1.RunList
	if err := r.Client.List(ctx, &runs, client.InNamespace(cg.Namespace), client.MatchingFields{indexChangeGroups: cg.Name}); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing runs of change group %s: %w", cg.Name, err)
	}
	// Queued runs, oldest first.
	var queued []*rsv1.Run
	byName := map[string]*rsv1.Run{}
	for i := range runs.Items {
		run := &runs.Items[i]
		byName[run.Name] = run
		if run.DeletionTimestamp == nil && !run.IsStopped() && (run.Status.Phase == "" || run.Status.Phase == rsv1.RunPhaseQueued) &&
			!slices.Contains(cg.Status.ActiveRuns, run.Name) {
			queued = append(queued, run)
		}
	}
	slices.SortStableFunc(queued, func(a, b *rsv1.Run) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return compareStrings(a.Name, b.Name)
	})

	forget, requeue, err := r.phantomRuns(ctx, cg, byName)
	if err != nil {
		return ctrl.Result{}, err
	}
	err = r.Ledger.Mutate(ctx, cg, func(st *rsv1.ChangeGroupStatus) bool {
		changed := false
		if len(forget) > 0 {
			st.ActiveRuns = slices.DeleteFunc(st.ActiveRuns, func(n string) bool { return slices.Contains(forget, n) })
			changed = true
		}
		n := int32(len(queued))
		if cg.Spec.MaxActiveRuns != nil {
			for _, run := range queued {
				if len(st.ActiveRuns) >= int(*cg.Spec.MaxActiveRuns) {
					break
				}
				if !run.IsSuspended() && ledger.AddRun(st, run.Name) {
					n--
					changed = true
				}
			}
		}
		if st.QueuedRuns != n {
			st.QueuedRuns = n
			changed = true
		}
		return changed
	})
	if apierrors.IsConflict(err) {
		return ctrl.Result{RequeueAfter: 50 * time.Millisecond}, nil
	}
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("writing ledger of change group %s: %w", cg.Name, err)
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// phantomRuns returns the active runs to drop: runs that, read live, do not exist or never started,
// since longer than PhantomGrace. It also says when to look again.
func (r *ChangeGroupReconciler) phantomRuns(ctx context.Context, cg *rsv1.ChangeGroup, cached map[string]*rsv1.Run) ([]string, time.Duration, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.phantoms == nil {
		r.phantoms = map[string]time.Time{}
	}
	var forget []string
	var requeue time.Duration
	now := time.Now()
	for _, name := range cg.Status.ActiveRuns {
		key := cg.Namespace + "/" + cg.Name + "/" + name
		if run, ok := cached[name]; ok && !suspect(run) {
			delete(r.phantoms, key)
			continue
		}
		run := &rsv1.Run{}
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: cg.Namespace, Name: name}, run)
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return nil, 0, fmt.Errorf("reading run %s: %w", name, err)
		case !suspect(run):
			delete(r.phantoms, key)
			continue
		}
		first, seen := r.phantoms[key]
		if !seen {
			r.phantoms[key] = now
			first = now
		}
		if wait := r.Options.PhantomGrace - now.Sub(first); wait > 0 {
			if requeue == 0 || wait < requeue {
				requeue = wait
			}
			continue
		}
		delete(r.phantoms, key)
		forget = append(forget, name)
	}
	return forget, requeue, nil
}

// suspect says whether an active run does not look started: it is suspended and still queued.
// (A finished run is released by the run controller itself.)
func suspect(run *rsv1.Run) bool {
	return run.IsSuspended() && (run.Status.Phase == "" || run.Status.Phase == rsv1.RunPhaseQueued)
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// SetupWithManager registers the reconciler.
func (r *ChangeGroupReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("changegroup").
		For(&rsv1.ChangeGroup{}).
		Watches(&rsv1.Run{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			run := o.(*rsv1.Run)
			reqs := make([]reconcile.Request, 0, len(run.Spec.ChangeGroups))
			for _, g := range run.Spec.ChangeGroups {
				reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: run.Namespace, Name: g}})
			}
			return reqs
		})).
		Complete(r)
}
