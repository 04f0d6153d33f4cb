package controllers

import (
	"context"
	"fmt"
	"net/http"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/executorhttp"
	"runservice.dev/runservice/internal/ledger"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/shard"
	"runservice.dev/runservice/internal/webhook"
)

// Options configure the manager's reconcilers.
type Options struct {
	// Webhook registers the Run webhooks (defaulting and validating) on the manager's webhook server.
	Webhook bool
	// PhantomGrace is how long a ledger entry whose run never started (its create or update failed
	// after the webhook admitted it) is kept before it is dropped.
	PhantomGrace time.Duration
	// NoExecutorRetry is how often a run whose ready tasks found no executor looks again.
	NoExecutorRetry time.Duration
	// MaxConcurrentRuns is how many runs are reconciled at once.
	MaxConcurrentRuns int
	// StatusBatch is how long a run waits after one of its ExecutorTasks changed before it is
	// reconciled: the changes meanwhile (a task's start and end, the ends of a fan-out) are folded
	// into its status in one write.
	StatusBatch time.Duration
	// StartDelay, ProgressDelay and FinishWait: zero takes the default, a negative value writes at
	// once (the manager's flags map their 0 to it).
	//
	// StartDelay is how long what a run's tasks report (a start, steps, a fetch's outcome) may wait
	// before it is written to the run's status when nothing else is: a task that ends sooner is
	// recorded Running by the write of its end, and a burst of reports costs one write.
	StartDelay time.Duration
	// ProgressDelay is how long a task's end, with the tasks it made ready scheduled (their
	// ExecutorTasks say it), may wait before it is written: siblings that end together cost one
	// write, and so does a fan-out whose tasks end within it of their parent.
	ProgressDelay time.Duration
	// FinishWait is how long, at most, a run's end waits for the fetches of its tasks under way,
	// so that their outcomes ride on its last status write instead of a write of their own.
	FinishWait time.Duration
	// Store is the object store step logs and workspace archives are fetched into; nil turns the
	// fetcher off.
	Store *objectstore.Store
	// EndpointAllow lists address ranges the fetcher may dial although they are denied by default
	// (loopback, link-local, unspecified, multicast: see executorhttp).
	EndpointAllow executorhttp.Allow
	// ExecutorInsecureHTTP lets the fetcher use executors' http:// endpoints (the token in clear);
	// otherwise it fetches over https only, trusting each namespace's executor CA.
	ExecutorInsecureHTTP bool
	// FetchTimeouts bound each request to an executor; FetchTimeout bounds fetching one task.
	FetchTimeouts executorhttp.Timeouts
	FetchTimeout  time.Duration
	// MaxConcurrentFetches is how many tasks are fetched at once, FetchesPerExecutor how many of
	// them from one executor; FetchBackoff is the first wait after an executor's fetch failed
	// (doubling up to five minutes).
	MaxConcurrentFetches int
	FetchesPerExecutor   int
	FetchBackoff         time.Duration
	// Archive turns the archiver on (it needs Store): finished runs move out of etcd into the
	// object store ArchiveAfter after their end, ArchiveWorkers at a time.
	Archive        bool
	ArchiveAfter   time.Duration
	ArchiveWorkers int
	// ArchiveRetention, when positive, deletes archived runs (their documents, logs and workspace
	// archives) that long after they were archived.
	ArchiveRetention time.Duration
	// ArchiveStepDone, when set, is called after each step of archiving a run (see
	// ArchiverReconciler.StepDone): for fault tests.
	ArchiveStepDone func(run types.NamespacedName, step string) error
	// LedgerReleased, when set, is called after a run has left its groups' ledgers (and been
	// counted there) and before its ledger finalizer is removed; an error stops the release there:
	// for fault tests.
	LedgerReleased func(run types.NamespacedName) error
	// Shard, when set, is this replica's view of the shard ring (internal/shard): it owns the runs
	// labelled with its name (rsv1.LabelShard), and the manager's cache holds only those and their
	// ExecutorTasks. Nil is a manager that owns every run, unsharded.
	Shard shard.View
	// ShardResync is how often the leader's sharder looks at every run again although the ring
	// did not change (default 10 minutes).
	ShardResync time.Duration
	// ShardLeaseDuration is the duration of the ring's membership Leases (default
	// shard.DefaultLeaseDuration): how long after a change of the ring every replica sees it.
	ShardLeaseDuration time.Duration
	// ShardRelabelling, when set, is called by the sharder between relabelling a run's
	// ExecutorTasks and relabelling the run: for tests of what the new owner sees meanwhile.
	ShardRelabelling func(run types.NamespacedName)
	// RestartReading, when set, is called before the run controller reads the run a restart
	// restarts; an error is taken for a failed read (the object store down): for fault tests.
	RestartReading func(run types.NamespacedName) error
	// FetchRecording, when set, is called before the run controller writes a status that records
	// the outcome of a fetch; an error stops the write there: for fault tests.
	FetchRecording func(run types.NamespacedName) error
	// FetchAcking, when set, is called before the fetcher tells an executor that a task's copy may
	// go; an error is taken for an ack lost on its way: for fault tests.
	FetchAcking func(executorTask types.NamespacedName) error
}

func (o *Options) defaults() {
	if o.PhantomGrace == 0 {
		o.PhantomGrace = time.Minute
	}
	if o.NoExecutorRetry == 0 {
		o.NoExecutorRetry = 2 * time.Second
	}
	if o.MaxConcurrentRuns == 0 {
		// Measured (make bench, 600 runs of 3 tasks at once, 0 conflicts throughout): ready task to
		// ExecutorTask p50/p99 2.4 s/3.5 s with 4 workers, 0.30 s/1.3 s with 8, 47 ms/190 ms with 16,
		// 42 ms/160 ms with 32 (noise), which also wrote more statuses (less to fold per reconcile).
		// A reconcile waits on the apiserver (a create, a patch), not on CPU, since it copies nothing.
		o.MaxConcurrentRuns = 16
	}
	if o.StatusBatch == 0 {
		o.StatusBatch = 30 * time.Millisecond
	}
	if o.StartDelay == 0 {
		o.StartDelay = 5 * time.Second
	}
	if o.ProgressDelay == 0 {
		o.ProgressDelay = time.Second
	}
	if o.FinishWait == 0 {
		// A fetch takes milliseconds to tens of them; one that waits for its executor's slot
		// (busyRetry) comes later than this, and is recorded by a write of its own.
		o.FinishWait = 300 * time.Millisecond
	}
	o.FetchTimeouts = o.FetchTimeouts.WithDefaults()
	if o.FetchTimeout == 0 {
		o.FetchTimeout = 15 * time.Minute // archives can be large; the stall timeout catches the stuck
	}
	if o.MaxConcurrentFetches == 0 {
		o.MaxConcurrentFetches = 8
	}
	if o.FetchesPerExecutor == 0 {
		o.FetchesPerExecutor = 2
	}
	if o.FetchBackoff == 0 {
		o.FetchBackoff = 2 * time.Second
	}
	o.Archive = o.Archive && o.Store != nil
	if o.ArchiveWorkers == 0 {
		// An archive waits on the object store and a few deletes, and its segment on the others'
		// (a segment is written for the archives of up to half a second).
		o.ArchiveWorkers = 32
	}
}

// Index names of the manager's cache.
const (
	indexChangeGroups = "spec.changeGroups"
	indexRunName      = "spec.runName"
	// indexActiveOnExecutor indexes the unfinished ExecutorTasks by executor: what scheduling and
	// executor liveness look at, without walking every finished task of an executor's history.
	indexActiveOnExecutor = "spec.executor.active"
)

// SetupWithManager registers the indexes, reconcilers and (optionally) the webhook with mgr.
func SetupWithManager(ctx context.Context, mgr ctrl.Manager, opts Options) error {
	opts.defaults()
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &rsv1.Run{}, indexChangeGroups, func(o client.Object) []string {
		return o.(*rsv1.Run).Spec.ChangeGroups
	}); err != nil {
		return fmt.Errorf("indexing runs by change group: %w", err)
	}
	if err := idx.IndexField(ctx, &rsv1.ExecutorTask{}, indexRunName, func(o client.Object) []string {
		return []string{o.(*rsv1.ExecutorTask).Spec.RunName}
	}); err != nil {
		return fmt.Errorf("indexing executor tasks by run: %w", err)
	}
	if err := idx.IndexField(ctx, &rsv1.ExecutorTask{}, indexActiveOnExecutor, func(o client.Object) []string {
		et := o.(*rsv1.ExecutorTask)
		if !et.Status.IsActive() {
			return nil
		}
		return []string{et.Spec.Executor}
	}); err != nil {
		return fmt.Errorf("indexing executor tasks by executor: %w", err)
	}

	l := &ledger.Ledger{Reader: mgr.GetAPIReader(), Writer: mgr.GetClient()}
	metrics := newMetrics(mgr.GetClient())
	scheduler, err := NewScheduler(ctx, mgr.GetCache())
	if err != nil {
		return err
	}
	guard, shardMetrics, err := setupSharding(mgr, opts)
	if err != nil {
		return err
	}
	var fetches *fetchOutcomes
	if opts.Store != nil {
		fetches = newFetchOutcomes()
	}
	runs := &RunReconciler{
		Fetches:   fetches,
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  mgr.GetEventRecorder("run-controller"),
		Ledger:    l,
		Scheduler: scheduler,
		Metrics:   metrics,
		Options:   opts,

		guard:        guard,
		shardMetrics: shardMetrics,
	}
	if err := runs.SetupWithManager(mgr); err != nil {
		return err
	}
	groups := &ChangeGroupReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Ledger:    l,
		Options:   opts,
	}
	var runsMeta *shardedGroupRuns
	if opts.Shard != nil {
		if runsMeta, err = newShardedGroupRuns(ctx, mgr); err != nil {
			return err
		}
	}
	if err := groups.SetupWithManager(mgr, runsMeta); err != nil {
		return err
	}
	if opts.Store != nil {
		fetcher := &ExecutorTaskReconciler{
			Client:    mgr.GetClient(),
			APIReader: mgr.GetAPIReader(),
			Recorder:  mgr.GetEventRecorder("fetcher"),
			Store:     opts.Store,
			NewHTTP: func(trust executorhttp.Trust) *http.Client {
				return executorhttp.NewClient(opts.FetchTimeouts, true, opts.EndpointAllow, trust)
			},
			AllowHTTP:    opts.ExecutorInsecureHTTP,
			Stall:        opts.FetchTimeouts.Stall,
			FetchTimeout: opts.FetchTimeout,
			Workers:      opts.MaxConcurrentFetches,
			Slots:        &fetchSlots{perExecutor: opts.FetchesPerExecutor, base: opts.FetchBackoff, max: 5 * time.Minute, wake: make(chan event.GenericEvent, 1024)},
			Guard:        guard,
			Outcomes:     fetches,
			Acking:       opts.FetchAcking,
		}
		if err := fetcher.SetupWithManager(mgr); err != nil {
			return err
		}
	}
	if opts.Archive {
		archiver := &ArchiverReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Store: opts.Store, After: opts.ArchiveAfter, Retention: opts.ArchiveRetention, Workers: opts.ArchiveWorkers, Metrics: metrics, StepDone: opts.ArchiveStepDone, Guard: guard}
		if err := archiver.SetupWithManager(mgr); err != nil {
			return err
		}
	}
	executors := &ExecutorReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("executor-controller"), Tasks: scheduler, Sharded: opts.Shard != nil}
	if err := executors.SetupWithManager(mgr); err != nil {
		return err
	}
	if opts.Webhook {
		(&webhook.RunDefaulter{Archiving: opts.Archive, Reader: mgr.GetAPIReader(), Store: opts.Store, Shard: opts.Shard}).SetupWithManager(mgr)
		self, err := webhook.Self(ctx, mgr.GetConfig())
		if err != nil {
			return err
		}
		(&webhook.RunValidator{Ledger: l, Reader: mgr.GetAPIReader(), Store: opts.Store, Manager: self}).SetupWithManager(mgr)
	}
	return nil
}

// cacheLagRetry is when a reconcile that met a copy older than the apiserver's (a write of its own
// not cached yet, or a conflict) looks again: the cache shows a write within milliseconds.
const cacheLagRetry = 20 * time.Millisecond

// requeueOnConflict turns a write conflict (a newer version of the object is on its way to the
// cache) into a quiet, quick requeue; other errors go to the controller's backoff.
func requeueOnConflict(err error, what string) (ctrl.Result, error) {
	switch {
	case err == nil:
		return ctrl.Result{}, nil
	case apierrors.IsConflict(err):
		return ctrl.Result{RequeueAfter: cacheLagRetry}, nil
	case what != "":
		return ctrl.Result{}, fmt.Errorf("%s: %w", what, err)
	}
	return ctrl.Result{}, err
}

// enqueueAfter maps an object's events to the request key returns, enqueued d later: the work queue
// keeps one request per key, so a burst of events within d costs one reconcile instead of one each.
func enqueueAfter(d time.Duration, key func(client.Object) (types.NamespacedName, bool)) handler.EventHandler {
	add := func(o client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		if k, ok := key(o); ok {
			q.AddAfter(reconcile.Request{NamespacedName: k}, d)
		}
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(e.Object, q)
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(e.ObjectNew, q)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(e.Object, q)
		},
		GenericFunc: func(_ context.Context, e event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			add(e.Object, q)
		},
	}
}
