package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

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
	// Runs is where the group's runs are found: the manager's Run cache, or when the manager is
	// sharded the metadata of every shard's runs (shard_groups.go).
	Runs groupRuns

	mu       sync.Mutex
	phantoms map[string]time.Time // namespace/group/run -> first seen not running
}

var _ reconcile.Reconciler = (*ChangeGroupReconciler)(nil)

// +kubebuilder:rbac:groups=runservice.dev,resources=changegroups,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=runservice.dev,resources=changegroups/status,verbs=update
// +kubebuilder:rbac:groups=runservice.dev,resources=runs,verbs=get;list;watch

// Reconcile implements reconcile.Reconciler.
func (r *ChangeGroupReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	if !ownsGroup(r.Options.Shard, req.NamespacedName) {
		r.forgetPhantoms(req.NamespacedName)
		return ctrl.Result{}, nil // another replica's: the owner of its key on the ring
	}
	cg := &rsv1.ChangeGroup{}
	if err := r.Client.Get(ctx, req.NamespacedName, cg); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	runs, err := r.Runs.List(ctx, cg.Namespace, cg.Name)
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("listing runs of change group %s: %w", cg.Name, err)
	}
	// Runs that may be queued, oldest first.
	var waiting []*groupRun
	byName := map[string]*groupRun{}
	for i := range runs {
		run := &runs[i]
		byName[run.Name] = run
		if !run.Deleting && !slices.Contains(cg.Status.ActiveRuns, run.Name) && (run.State == nil || run.State.Queued && !run.State.Stopped) {
			waiting = append(waiting, run)
		}
	}
	slices.SortStableFunc(waiting, func(a, b *groupRun) int {
		if c := a.Created.Compare(b.Created.Time); c != 0 {
			return c
		}
		return compareStrings(a.Name, b.Name)
	})

	forget, requeue, err := r.phantomRuns(ctx, cg, byName)
	if err != nil {
		return ctrl.Result{}, err
	}
	start, queued, err := r.startable(ctx, cg, waiting, len(cg.Status.ActiveRuns)-len(forget))
	if err != nil {
		return ctrl.Result{}, err
	}
	err = r.Ledger.Mutate(ctx, cg, func(st *rsv1.ChangeGroupStatus) bool {
		changed := false
		if len(forget) > 0 {
			st.ActiveRuns = slices.DeleteFunc(st.ActiveRuns, func(n string) bool { return slices.Contains(forget, n) })
			changed = true
		}
		n := queued
		for _, name := range start {
			if ledger.AddRun(st, name) {
				n--
				changed = true
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

// startable walks the runs that may be queued, oldest first, and returns those to start (when the
// group has maxActiveRuns, as many as there is room for next to active runs) and how many are
// queued. A run whose state is not known is read only while there is room: one the controller
// does not start is counted as queued on the word of its metadata (it is not final, not deleted,
// not active), and read when its turn comes.
func (r *ChangeGroupReconciler) startable(ctx context.Context, cg *rsv1.ChangeGroup, waiting []*groupRun, active int) ([]string, int32, error) {
	var start []string
	queued := int32(0)
	for _, run := range waiting {
		room := cg.Spec.MaxActiveRuns != nil && active+len(start) < int(*cg.Spec.MaxActiveRuns)
		if run.State == nil && room {
			st, ok, err := r.Runs.Read(ctx, cg.Namespace, run.Name)
			if err != nil {
				return nil, 0, err
			}
			if !ok {
				continue
			}
			run.State = &st
		}
		if run.State != nil && (!run.State.Queued || run.State.Stopped) {
			continue
		}
		queued++
		if room && !run.State.Suspended {
			start = append(start, run.Name)
		}
	}
	return start, queued, nil
}

// phantomRuns returns the active runs to drop: runs that, read live, do not exist or never started,
// since longer than PhantomGrace. It also says when to look again. An active run the controller
// knows started is not read.
func (r *ChangeGroupReconciler) phantomRuns(ctx context.Context, cg *rsv1.ChangeGroup, known map[string]*groupRun) ([]string, time.Duration, error) {
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
		if run, ok := known[name]; ok && run.NoPhantom {
			delete(r.phantoms, key)
			continue
		}
		st, exists, err := r.Runs.Read(ctx, cg.Namespace, name)
		if err != nil {
			return nil, 0, err
		}
		if exists && !st.suspect() {
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

// forgetPhantoms drops what the controller noted of a group it no longer owns: its new owner
// counts the phantom grace from its own first sight.
func (r *ChangeGroupReconciler) forgetPhantoms(group types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	prefix := group.Namespace + "/" + group.Name + "/"
	for key := range r.phantoms {
		if strings.HasPrefix(key, prefix) {
			delete(r.phantoms, key)
		}
	}
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

// SetupWithManager registers the reconciler. Sharded, it runs on every replica (each reconciles the
// groups it owns), learns of every shard's runs from their metadata, and looks at every group again
// when the ring changes.
func (r *ChangeGroupReconciler) SetupWithManager(mgr ctrl.Manager, runsMeta *shardedGroupRuns) error {
	b := ctrl.NewControllerManagedBy(mgr).
		Named("changegroup").
		For(&rsv1.ChangeGroup{})
	if r.Options.Shard == nil {
		r.Runs = &cachedGroupRuns{cache: r.Client, live: r.APIReader}
		b = b.Watches(&rsv1.Run{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			run := o.(*rsv1.Run)
			reqs := make([]reconcile.Request, 0, len(run.Spec.ChangeGroups))
			for _, g := range run.Spec.ChangeGroups {
				reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: run.Namespace, Name: g}})
			}
			return reqs
		}))
		return b.Complete(r)
	}
	r.Runs = runsMeta
	return b.
		WatchesRawSource(source.Kind(runsMeta.cache, client.Object(newRunMeta()), handler.EnqueueRequestsFromMapFunc(groupsOfRunMeta))).
		WatchesRawSource(ringChanges(r.Options.Shard, mgr.GetCache())).
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false)}).
		Complete(r)
}
