package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/shard"
)

// Sharder assigns runs to the members of the shard ring and moves them as members come and go. It
// runs on the elected leader only: assignment must be decided once, and every decision is a write
// locked on the run's resourceVersion, so a leader that lost its election mid-way (its last writes
// racing the next leader's) can at worst be refused, never move a run twice.
//
//   - A run without the shard label (created with generateName, so that the defaulting webhook did
//     not know its key; created while no webhook labelled it; or acknowledged by its former owner
//     after a drain) is assigned to the ring's owner of its key: its ExecutorTasks are labelled
//     first, then the run. It watches only such runs: a cache of its own, selected by the label's
//     absence, a handful of objects at any time.
//   - When the ring changes it looks at the runs whose label may now be wrong, listing them from the
//     apiserver page by page (no cache of every run): after a member left, the runs labelled with
//     a member that is not live; after one joined, every run (a newcomer takes about 1/n from each).
//     A run whose member is gone (its Lease expired: it has stopped, as a member that cannot renew
//     its Lease stops) is relabelled at once; a run whose live member is no longer its owner is
//     drained (LabelShardDrain, valued with its new owner) and moves once the member acknowledges.
type Sharder struct {
	// Client writes labels and lists runs, uncached, with a user agent of its own: the sharder's
	// writes are told apart from its replica's shard work in the apiserver's audit log.
	Client   client.Client
	View     shard.View
	Recorder recorder.EventRecorder
	Metrics  *shardMetrics
	// Resync is how often every run is looked at again although the ring did not change.
	Resync time.Duration
	// Relabelling, when set, is called between relabelling a run's ExecutorTasks and the run.
	Relabelling func(run types.NamespacedName)
	// Settle is how long after a change of the ring every replica sees it as the sharder does
	// (the ring's Lease duration): the sharder then looks once more at the runs and ExecutorTasks
	// labelled with members not live, which a replica with an older view labelled meanwhile.
	Settle time.Duration

	unlabelled cache.Cache

	mu       sync.Mutex
	draining map[types.UID]drainStart
}

type drainStart struct {
	from string
	at   time.Time
}

var _ reconcile.Reconciler = (*Sharder)(nil)

// sharderPage is how many runs a scan lists per request; sharderWorkers how many it places at
// once. Moving a run is a few requests (its ExecutorTasks listed and relabelled, then the run),
// each waiting on the apiserver: a member's runs move in seconds instead of one after the other.
const (
	sharderPage    = 500
	sharderWorkers = 16
)

// +kubebuilder:rbac:groups=runservice.dev,resources=runs,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=runservice.dev,resources=executortasks,verbs=list;patch

// Reconcile implements reconcile.Reconciler: it assigns an unlabelled run.
func (s *Sharder) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	run := &rsv1.Run{}
	if err := s.unlabelled.Get(ctx, req.NamespacedName, run); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if _, ok := run.Labels[rsv1.LabelShard]; ok {
		return ctrl.Result{}, nil
	}
	ring := s.View.Ring()
	owner := ring.Owner(shard.Key(run.Namespace, run.Name))
	if owner == "" {
		return ctrl.Result{RequeueAfter: time.Second}, nil // no member is live: a ring change brings it back too
	}
	from, since := s.drained(run.UID)
	return requeueOnConflict(s.assign(ctx, run, from, owner, since), "")
}

// drained returns, for a run the sharder drained, the shard it left and when the drain began.
func (s *Sharder) drained(uid types.UID) (string, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.draining[uid]
	if !ok {
		return "", time.Now()
	}
	return d.from, d.at
}

// assign labels run's ExecutorTasks, then run, with owner: the order in which owner's caches must
// see them, so that owner never reconciles the run without its tasks. The run's label is written
// locked on the resourceVersion read, and LabelShardDrain is dropped with it.
func (s *Sharder) assign(ctx context.Context, run *rsv1.Run, from, owner string, since time.Time) error {
	var ets rsv1.ExecutorTaskList
	if err := s.Client.List(ctx, &ets, client.InNamespace(run.Namespace), client.MatchingLabels{rsv1.LabelRunUID: string(run.UID)}); err != nil {
		return fmt.Errorf("listing the executor tasks of run %s: %w", run.Name, err)
	}
	for i := range ets.Items {
		et := &ets.Items[i]
		if et.Labels[rsv1.LabelShard] == owner {
			continue
		}
		patch := client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"metadata":{"labels":{%q:%q}}}`, rsv1.LabelShard, owner))
		if err := s.Client.Patch(ctx, et, patch); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("labelling executor task %s with shard %s: %w", et.Name, owner, err)
		}
	}
	if s.Relabelling != nil {
		s.Relabelling(client.ObjectKeyFromObject(run))
	}
	base := run.DeepCopy()
	if run.Labels == nil {
		run.Labels = map[string]string{}
	}
	run.Labels[rsv1.LabelShard] = owner
	delete(run.Labels, rsv1.LabelShardDrain)
	if err := s.Client.Patch(ctx, run, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return client.IgnoreNotFound(err)
	}
	s.mu.Lock()
	delete(s.draining, run.UID)
	s.mu.Unlock()
	if from == "" {
		ctrl.LoggerFrom(ctx).V(1).Info("assigned run", "run", client.ObjectKeyFromObject(run), "shard", owner)
		return nil
	}
	s.Metrics.observeMove(from, owner, since)
	ctrl.LoggerFrom(ctx).Info("moved run", "run", client.ObjectKeyFromObject(run), "from", from, "to", owner, "took", time.Since(since).String())
	s.Recorder.Eventf(run, nil, corev1.EventTypeNormal, "ShardMoved", "Shard", "moved from shard %s to shard %s", from, owner)
	return nil
}

// Start watches the ring until ctx ends (a manager.Runnable on the leader): a scan at once, after
// each change of the ring and again Settle after it, and every Resync.
//
// The scan Settle after a change finds what replicas that did not see the change yet labelled
// with a member that left: the webhook of a replica whose view still shows the member (it labels
// new runs), a member that stalled past its Lease's expiry (it may still create ExecutorTasks).
// Without it, such a run would wait for the next change or Resync, owned by no replica.
func (s *Sharder) Start(ctx context.Context) error {
	log := ctrl.LoggerFrom(ctx).WithName("sharder")
	var changes <-chan struct{}
	if sub, ok := s.View.(shard.Subscriber); ok {
		changes = sub.Subscribe()
	}
	resync := time.NewTicker(s.Resync)
	defer resync.Stop()
	var (
		scanned []string // the members at the last complete scan; nil: none yet
		seen    []string // the members at the last look at the ring
		settled <-chan time.Time
	)
	for {
		members := s.View.Ring().Members()
		if seen == nil || !slices.Equal(members, seen) {
			seen, settled = members, time.After(s.Settle)
		}
		full := scanned == nil || slices.ContainsFunc(members, func(m string) bool { return !slices.Contains(scanned, m) })
		if err := s.scan(ctx, members, full); err != nil {
			log.Error(err, "looking for runs to move (retried)")
			scanned = nil
		} else {
			scanned = members
		}
		retry := time.After(time.Hour)
		if scanned == nil {
			retry = time.After(time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
		case <-resync.C:
			scanned = nil
		case <-retry:
		case <-settled:
			settled = nil
		}
	}
}

// scan places the runs that may be misplaced in the ring of members: every labelled run when full,
// else those labelled with a member that is not live; then the ExecutorTasks labelled with a
// member that is not live follow their runs.
func (s *Sharder) scan(ctx context.Context, members []string, full bool) error {
	if len(members) == 0 {
		return nil // nothing can be placed; the first member's arrival brings a full scan
	}
	if err := s.scanRuns(ctx, members, full); err != nil {
		return err
	}
	return s.scanTasks(ctx, members)
}

// scanRuns places the runs that may be misplaced (see scan).
func (s *Sharder) scanRuns(ctx context.Context, members []string, full bool) error {
	sel := labels.NewSelector()
	op, values := selection.Exists, []string(nil)
	if !full {
		op, values = selection.NotIn, members
	}
	req, err := labels.NewRequirement(rsv1.LabelShard, op, values)
	if err != nil {
		return fmt.Errorf("selecting runs of shards other than %v: %w", members, err)
	}
	if !full {
		exists, _ := labels.NewRequirement(rsv1.LabelShard, selection.Exists, nil) // constant: valid
		sel = sel.Add(*exists)
	}
	sel = sel.Add(*req)
	ring := shard.NewRing(members...)
	var (
		mu   sync.Mutex
		errs []error
	)
	opts := []client.ListOption{client.MatchingLabelsSelector{Selector: sel}, client.Limit(sharderPage)}
	for cont := ""; ; {
		var page rsv1.RunList
		if err := s.Client.List(ctx, &page, append(opts, client.Continue(cont))...); err != nil {
			return fmt.Errorf("listing runs: %w", err)
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, sharderWorkers)
		for i := range page.Items {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := s.place(ctx, ring, &page.Items[i]); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if cont = page.Continue; cont == "" {
			break
		}
	}
	return errors.Join(errs...)
}

// scanTasks labels the ExecutorTasks labelled with a member that is not live with their run's
// shard (followRun), page by page: a member that stalled past its Lease's expiry may have created
// one after its runs moved, or a deposed leader's relabel landed late. No live replica caches
// such a task, so its run would wait for it for ever. (A task labelled with a live member other
// than its run's is found by that run's owner, which misses it: see RunReconciler.followRun.)
func (s *Sharder) scanTasks(ctx context.Context, members []string) error {
	exists, _ := labels.NewRequirement(rsv1.LabelShard, selection.Exists, nil) // constant: valid
	notLive, err := labels.NewRequirement(rsv1.LabelShard, selection.NotIn, members)
	if err != nil {
		return fmt.Errorf("selecting executor tasks of shards other than %v: %w", members, err)
	}
	sel := labels.NewSelector().Add(*exists, *notLive)
	var errs []error
	opts := []client.ListOption{client.MatchingLabelsSelector{Selector: sel}, client.Limit(sharderPage)}
	for cont := ""; ; {
		var page rsv1.ExecutorTaskList
		if err := s.Client.List(ctx, &page, append(opts, client.Continue(cont))...); err != nil {
			return fmt.Errorf("listing executor tasks: %w", err)
		}
		for i := range page.Items {
			et := &page.Items[i]
			if _, err := followRun(ctx, s.Client, s.Client, et); err != nil {
				errs = append(errs, fmt.Errorf("labelling executor task %s/%s with its run's shard: %w", et.Namespace, et.Name, err))
			}
		}
		if cont = page.Continue; cont == "" {
			break
		}
	}
	return errors.Join(errs...)
}

// followRun labels et with its run's shard as the apiserver has it now, and says whether it did.
// The patch is locked on et's resourceVersion, so that a relabel by the sharder's assign meanwhile
// (a move: the tasks first, then the run) is not undone. A run without the label is being assigned,
// and its tasks with it; a run gone takes its tasks with it.
func followRun(ctx context.Context, reader client.Reader, writer client.Writer, et *rsv1.ExecutorTask) (bool, error) {
	key, ok := ownerRun(et)
	if !ok {
		return false, nil
	}
	run := &rsv1.Run{}
	if err := reader.Get(ctx, key, run); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	owner := run.Labels[rsv1.LabelShard]
	if string(run.UID) != et.Spec.RunUID || owner == "" || owner == et.Labels[rsv1.LabelShard] {
		return false, nil
	}
	base := et.DeepCopy()
	if et.Labels == nil {
		et.Labels = map[string]string{}
	}
	et.Labels[rsv1.LabelShard] = owner
	if err := writer.Patch(ctx, et, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	ctrl.LoggerFrom(ctx).Info("labelled an executor task with its run's shard", "executorTask", client.ObjectKeyFromObject(et), "from", base.Labels[rsv1.LabelShard], "shard", owner)
	return true, nil
}

// placeRetries is how often place reads a run again whose write met a newer version (its owner
// wrote its status meanwhile).
const placeRetries = 10

// place moves a labelled run whose label is not its owner's in ring: at once when its member is
// gone, by a drain when it is live; and takes back a drain that the ring made pointless. A write
// that meets a newer version of the run (a conflict: its owner wrote it meanwhile) is decided
// again on the run read anew.
func (s *Sharder) place(ctx context.Context, ring *shard.Ring, run *rsv1.Run) error {
	for range placeRetries {
		err := s.placeOnce(ctx, ring, run)
		if !apierrors.IsConflict(err) {
			return err
		}
		if err := s.Client.Get(ctx, client.ObjectKeyFromObject(run), run); err != nil {
			return client.IgnoreNotFound(err)
		}
		if _, ok := run.Labels[rsv1.LabelShard]; !ok {
			return nil // acknowledged meanwhile: the sharder's reconciler assigns it
		}
	}
	return fmt.Errorf("placing run %s/%s: it kept changing", run.Namespace, run.Name)
}

func (s *Sharder) placeOnce(ctx context.Context, ring *shard.Ring, run *rsv1.Run) error {
	have := run.Labels[rsv1.LabelShard]
	owner := ring.Owner(shard.Key(run.Namespace, run.Name))
	_, draining := run.Labels[rsv1.LabelShardDrain]
	var err error
	switch {
	case owner == "":
	case !ring.Has(have):
		err = s.assign(ctx, run, have, owner, time.Now())
	case have != owner && !draining:
		err = s.patchDrain(ctx, run, owner)
		if err == nil {
			ctrl.LoggerFrom(ctx).V(1).Info("draining run", "run", client.ObjectKeyFromObject(run), "from", have, "to", owner)
			s.mu.Lock()
			s.draining[run.UID] = drainStart{from: have, at: time.Now()}
			s.mu.Unlock()
		}
	case have == owner && draining:
		err = s.patchDrain(ctx, run, "")
	}
	if err != nil && !apierrors.IsConflict(err) {
		return fmt.Errorf("placing run %s/%s: %w", run.Namespace, run.Name, err)
	}
	return err
}

// patchDrain sets LabelShardDrain to owner, or removes it when owner is "", locked on the run's
// resourceVersion: the acknowledgement of a drain taken back at the same moment is refused, or
// the taking back is.
func (s *Sharder) patchDrain(ctx context.Context, run *rsv1.Run, owner string) error {
	base := run.DeepCopy()
	if owner == "" {
		delete(run.Labels, rsv1.LabelShardDrain)
	} else {
		run.Labels[rsv1.LabelShardDrain] = owner
	}
	return client.IgnoreNotFound(s.Client.Patch(ctx, run, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})))
}

// NeedLeaderElection: the sharder decides for the whole ring.
func (s *Sharder) NeedLeaderElection() bool { return true }

// unlabelledRuns selects the runs without the shard label.
func unlabelledRuns() labels.Selector {
	req, _ := labels.NewRequirement(rsv1.LabelShard, selection.DoesNotExist, nil) // constant: valid
	return labels.NewSelector().Add(*req)
}

// leaderCache runs a cache on the leader only.
type leaderCache struct{ cache.Cache }

func (leaderCache) NeedLeaderElection() bool { return true }

// replicaCache runs a cache on every replica. Say it: a cache of cache.New with ByObject does not,
// and the manager starts such a runnable on its leader only.
type replicaCache struct{ cache.Cache }

func (replicaCache) NeedLeaderElection() bool { return false }

// SetupWithManager registers the sharder, its cache of unlabelled runs and its reconciler of them,
// all on the leader.
func (s *Sharder) SetupWithManager(mgr ctrl.Manager) error {
	cfg := rest.CopyConfig(mgr.GetConfig())
	cfg.UserAgent = sharderUserAgent(cfg.UserAgent)
	c, err := client.New(cfg, client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper()})
	if err != nil {
		return fmt.Errorf("creating the sharder's client: %w", err)
	}
	s.Client = c
	s.unlabelled, err = cache.New(cfg, cache.Options{
		Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper(),
		ByObject: map[client.Object]cache.ByObject{&rsv1.Run{}: {Label: unlabelledRuns()}},
	})
	if err != nil {
		return fmt.Errorf("creating the sharder's cache: %w", err)
	}
	s.draining = map[types.UID]drainStart{}
	if s.Resync == 0 {
		s.Resync = 10 * time.Minute
	}
	if s.Settle == 0 {
		s.Settle = shard.DefaultLeaseDuration
	}
	if err := mgr.Add(leaderCache{s.unlabelled}); err != nil {
		return err
	}
	if err := mgr.Add(s); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("sharder").
		WatchesRawSource(source.Kind(s.unlabelled, &rsv1.Run{}, &handler.TypedEnqueueRequestForObject[*rsv1.Run]{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: sharderWorkers}).
		Complete(s)
}

// sharderUserAgent is the user agent of the sharder's requests: its replica's, marked.
func sharderUserAgent(ua string) string {
	if ua == "" {
		ua = rest.DefaultKubernetesUserAgent()
	}
	return ua + " sharder"
}
