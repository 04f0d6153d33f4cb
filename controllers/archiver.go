package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
)

// ArchiverReconciler moves finished runs out of etcd into the object store. A run is archived once
// it is final (Finished, Cancelled, SetupError), every ExecutorTask of it is final and its status
// records each one's fetch (its logs and archives are in the store, or known lost), and it ended
// After ago (at once when it is being
// deleted). Each step can be repeated after a crash and loses nothing:
//
//  1. the document (the Run and its ExecutorTasks) is written at a key derived from the run's uid;
//     written again, it keeps the ExecutorTasks an earlier attempt archived and deleted since;
//  2. its index entry is written in a segment (batched with other runs'), so that a rebuilt index
//     finds it;
//  3. the ExecutorTasks are deleted, in one request selecting the run's uid (deleteExecutorTasks),
//     while the run is deleted with the uid and resourceVersion archived as preconditions: what
//     leaves etcd is what was archived (a run changed meanwhile is archived again);
//  4. FinalizerArchive, which kept the deleted run until its ExecutorTasks were gone, is removed.
type ArchiverReconciler struct {
	Client client.Client
	// APIReader reads the run to archive from the apiserver: the cache's copy is slim (SlimRun).
	APIReader client.Reader
	Store     *objectstore.Store
	// After is how long after its end a run is archived; Retention, when positive, how long an
	// archived run is kept (by the hour of its archiving) before it is deleted from the store.
	After, Retention time.Duration
	Workers          int
	Metrics          *Metrics
	// StepDone, when set, is called after each step of archiving a run ("document", "segment",
	// "executortasks", "finalizer"), and in the middle of writing the segment that holds its index
	// entry ("segment-write", half of the segment's entries sent to the store); an error ends the
	// archiving there: fault tests stop the manager at that point, as a crash would.
	StepDone func(run types.NamespacedName, step string) error
	// Guard, in a sharded manager, keeps the archiver off runs being handed over.
	Guard *handoverGuard

	segments *segmentBatcher
	// writes remembers the runs the archiver deleted: the cache shows a deleted run for a moment
	// after its delete (with the finalizer patch's events queued behind it), and archiving such a
	// copy again would rewrite its document and index entry for a delete answered 404.
	writes lastWrites
}

// +kubebuilder:rbac:groups=runservice.dev,resources=runs,verbs=get;list;watch;patch;delete
// +kubebuilder:rbac:groups=runservice.dev,resources=executortasks,verbs=get;list;watch;delete;deletecollection

// Reconcile implements reconcile.Reconciler.
func (r *ArchiverReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	run := &rsv1.Run{}
	if err := r.Client.Get(ctx, req.NamespacedName, run); err != nil {
		if apierrors.IsNotFound(err) {
			r.writes.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.writes.stale(run) || r.Guard.givenAway(run) {
		return ctrl.Result{}, nil // archived and deleted, or handed over: the cache has yet to drop it
	}
	if !run.Status.Phase.IsFinal() {
		return ctrl.Result{}, nil // the run controller ends it, also when it is being deleted
	}
	deleting := run.DeletionTimestamp != nil
	if deleting && !controllerutil.ContainsFinalizer(run, rsv1.FinalizerArchive) {
		return ctrl.Result{}, nil
	}
	after := archiveAfter(run, r.After)
	if !deleting && run.Status.EndTime != nil {
		if wait := time.Until(run.Status.EndTime.Add(after)); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
	}
	tasks, ready, err := r.executorTasks(ctx, run)
	if err != nil || !ready || !settled(run) {
		return ctrl.Result{}, err // the run controller's write to come brings the run back
	}
	end, ok := r.Guard.begin(run.UID)
	if !ok {
		return ctrl.Result{RequeueAfter: time.Second}, nil // being handed over
	}
	defer end()
	// The cached copy lacks what the manager no longer reads (SlimRun): the run is archived as
	// stored, read from the apiserver (its watch cache, at least as new as the cached copy), and
	// only when it is the copy checked above; a run changed since is checked again on the change.
	cached := run
	run = &rsv1.Run{}
	if err := r.APIReader.Get(ctx, req.NamespacedName, run, &client.GetOptions{Raw: &metav1.GetOptions{ResourceVersion: cached.ResourceVersion}}); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if run.UID != cached.UID || run.ResourceVersion != cached.ResourceVersion {
		// The cache's event of the change brings the run back (every event of a final run does);
		// the requeue only guards against waiting on a cache that lags for long, without polling.
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	// Due (for the metrics) unless deleted: archive leaves run deleted.
	var due time.Time
	if run.Status.EndTime != nil && !deleting {
		due = run.Status.EndTime.Add(after)
	}
	took := time.Now()
	if err := r.archive(ctx, run, tasks); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			// The run changed since it was read (archived again, with the change, once the cache has
			// it), or is gone (deleted by someone else after it was archived).
			return ctrl.Result{RequeueAfter: cacheLagRetry}, nil
		}
		return ctrl.Result{}, err
	}
	r.Metrics.observeArchived(due, took)
	ctrl.LoggerFrom(ctx).V(1).Info("archived", "uid", run.UID)
	return ctrl.Result{}, nil
}

// archiveAfter is how long after its end run is archived: its AnnotationArchiveAfter (checked by
// the webhook), else the manager's.
func archiveAfter(run *rsv1.Run, after time.Duration) time.Duration {
	if d, err := rsv1.ParseArchiveAfter(run.Annotations[rsv1.AnnotationArchiveAfter]); err == nil && d != nil {
		return *d
	}
	return after
}

// executorTasks are run's ExecutorTasks (by its uid: a run of the same name before it is another
// run), and whether each is final and run's status records its fetch (and the log keys it stored,
// written with it).
func (r *ArchiverReconciler) executorTasks(ctx context.Context, run *rsv1.Run) ([]rsv1.ExecutorTask, bool, error) {
	var list rsv1.ExecutorTaskList
	if err := r.Client.List(ctx, &list, client.InNamespace(run.Namespace), client.MatchingFields{indexRunName: run.Name}); err != nil {
		return nil, false, fmt.Errorf("listing executor tasks: %w", err)
	}
	tasks := list.Items[:0]
	for _, et := range list.Items {
		if ref := metav1.GetControllerOf(&et); ref == nil || ref.UID != run.UID {
			continue
		}
		if !et.Status.Phase.IsFinal() || run.Status.RecordedFetch(&et) == "" {
			return nil, false, nil
		}
		tasks = append(tasks, et)
	}
	slices.SortFunc(tasks, func(a, b rsv1.ExecutorTask) int { return strings.Compare(a.Name, b.Name) })
	return tasks, true, nil
}

// settled reports whether the run controller is done with run: its change groups released and the
// labels of its end added (the fetches it records are executorTasks' readiness). Archived before
// that, the run would be archived without what the run controller is about to write, and the
// archiver's write locked on the run would be refused for the run controller's.
func settled(run *rsv1.Run) bool {
	return !controllerutil.ContainsFinalizer(run, rsv1.FinalizerChangeGroupLedger) && len(missingLabels(run)) == 0
}

// archive takes run through the steps, each repeatable.
func (r *ArchiverReconciler) archive(ctx context.Context, run *rsv1.Run, tasks []rsv1.ExecutorTask) error {
	key := client.ObjectKeyFromObject(run)
	began := time.Now()
	done := func(step string, since time.Time) error {
		r.Metrics.observeArchiveStep(step, time.Since(since))
		if r.StepDone != nil {
			return r.StepDone(key, step)
		}
		return nil
	}
	doc := archive.Document(run, tasks, time.Now())
	if err := r.keepArchivedTasks(ctx, run, doc); err != nil {
		return err
	}
	if err := archive.PutDocument(ctx, r.Store, doc); err != nil {
		return fmt.Errorf("archiving run: %w", err)
	}
	if err := done("document", began); err != nil {
		return err
	}
	began = time.Now()
	if err := r.segments.add(ctx, archive.EntryOf(doc)); err != nil {
		return fmt.Errorf("archiving run: %w", err)
	}
	if err := done("segment", began); err != nil {
		return err
	}
	// The document and its index entry are durable. The ExecutorTasks are deleted while the run is,
	// with the uid and resourceVersion archived as preconditions (what leaves etcd is what was
	// archived): its finalizer keeps it until they are gone, and is removed last. A run without the
	// finalizer (archived by a manager started with archiving off at its creation) would be gone at
	// once, so its ExecutorTasks go first.
	began = time.Now()
	deleteTasks := func() error {
		if err := r.deleteExecutorTasks(ctx, run, tasks); err != nil {
			return err
		}
		return done("executortasks", began)
	}
	deleteRun := func() error {
		rv := run.ResourceVersion
		if err := r.Client.Delete(ctx, run.DeepCopy(), client.Preconditions{UID: &run.UID, ResourceVersion: &rv}); err != nil {
			return fmt.Errorf("deleting archived run: %w", err)
		}
		r.Metrics.observeArchiveStep("delete", time.Since(began))
		return nil
	}
	finalizer := controllerutil.ContainsFinalizer(run, rsv1.FinalizerArchive)
	if !finalizer {
		if err := deleteTasks(); err != nil {
			return err
		}
		if err := deleteRun(); err != nil {
			return err
		}
		r.writes.deleted(run)
		return nil
	}
	var g errgroup.Group
	g.Go(deleteTasks)
	if run.DeletionTimestamp == nil {
		g.Go(deleteRun)
	}
	if err := g.Wait(); err != nil {
		return err
	}
	began = time.Now()
	if err := r.removeFinalizer(ctx, run); err != nil {
		return err
	}
	if err := done("finalizer", began); err != nil {
		return err
	}
	if len(run.Finalizers) == 0 {
		r.writes.deleted(run)
	}
	return nil // gone, or once its other finalizers are
}

// removeFinalizer removes FinalizerArchive from run, deleted: a JSON patch that tests the list
// entry it removes, as the resourceVersion archived is not the deleted run's. A list changed since
// run was read fails the test: the apiserver refuses it as invalid, which is reported as a conflict.
func (r *ArchiverReconciler) removeFinalizer(ctx context.Context, run *rsv1.Run) error {
	i := slices.Index(run.Finalizers, rsv1.FinalizerArchive)
	path := fmt.Sprintf("/metadata/finalizers/%d", i)
	patch, err := json.Marshal([]map[string]any{
		{"op": "test", "path": path, "value": rsv1.FinalizerArchive},
		{"op": "remove", "path": path},
	})
	if err != nil {
		return err
	}
	err = r.Client.Patch(ctx, run, client.RawPatch(types.JSONPatchType, patch))
	if apierrors.IsInvalid(err) {
		return apierrors.NewConflict(rsv1.GroupVersion.WithResource("runs").GroupResource(), run.Name, err)
	}
	if err != nil {
		return fmt.Errorf("removing finalizer %s: %w", rsv1.FinalizerArchive, err)
	}
	return nil
}

// deleteExecutorTasks deletes the archived run's ExecutorTasks in one request (a deletecollection
// selected by the run's uid label) instead of one per task. The selection is exactly what was
// archived, so no per-object precondition is needed:
//   - the label holds the run's uid, not its name: a run deleted and created again under the same
//     name has other ExecutorTasks, and they are not selected (what the uid precondition of a delete
//     by name guarded against);
//   - every ExecutorTask of the run is in tasks, final and fetched: the run is final, and the run
//     controller creates ExecutorTasks only for runs that are not (a final status stays final, and
//     the fetched mark stays once set), so none can join the selection after the list;
//   - an ExecutorTask that lacks the label (created by a manager that did not set it) is deleted on
//     its own, with its uid as the precondition, as before.
func (r *ArchiverReconciler) deleteExecutorTasks(ctx context.Context, run *rsv1.Run, tasks []rsv1.ExecutorTask) error {
	labelled := 0
	for i := range tasks {
		et := &tasks[i]
		if et.Labels[rsv1.LabelRunUID] == string(run.UID) {
			labelled++
			continue
		}
		err := r.Client.Delete(ctx, et, client.Preconditions{UID: &et.UID})
		if client.IgnoreNotFound(err) != nil && !apierrors.IsConflict(err) {
			return fmt.Errorf("deleting archived executor task %s: %w", et.Name, err)
		}
	}
	if labelled == 0 {
		return nil
	}
	err := r.Client.DeleteAllOf(ctx, &rsv1.ExecutorTask{}, client.InNamespace(run.Namespace), client.MatchingLabels{rsv1.LabelRunUID: string(run.UID)})
	if client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("deleting the archived run's executor tasks: %w", err)
	}
	return nil
}

// keepArchivedTasks adds to doc the ExecutorTasks that an earlier attempt archived and deleted, and
// the log keys it folded from them: a run whose status names an ExecutorTask that is gone may have
// been archived before, and rewriting its document from what is left would lose them.
func (r *ArchiverReconciler) keepArchivedTasks(ctx context.Context, run *rsv1.Run, doc *arv1.ArchivedRun) error {
	have := map[string]bool{}
	for _, et := range doc.Status.ExecutorTasks {
		have[et.Name] = true
	}
	missing := false
	for _, t := range run.Status.Tasks {
		if t.ExecutorTask != "" && !have[t.ExecutorTask] {
			missing = true
		}
	}
	if !missing {
		return nil
	}
	old, err := archive.GetDocument(ctx, r.Store, run.Namespace, run.Name, string(run.UID))
	if errors.Is(err, objectstore.ErrNotFound) {
		return nil // deleted by someone else: archived as it is
	}
	if err != nil {
		return fmt.Errorf("reading the run's earlier archive: %w", err)
	}
	for _, et := range old.Status.ExecutorTasks {
		if !have[et.Name] {
			doc.Status.ExecutorTasks = append(doc.Status.ExecutorTasks, et)
		}
	}
	// The fetches and log keys the earlier document had, which the run's status may not show:
	// without them the archived run's logs are not found.
	for i := range doc.Status.Tasks {
		ts := &doc.Status.Tasks[i]
		j := slices.IndexFunc(old.Status.Tasks, func(o rsv1.TaskStatus) bool { return o.Name == ts.Name && o.ExecutorTask == ts.ExecutorTask })
		if j < 0 {
			continue
		}
		if ts.Fetched == "" {
			ts.Fetched = old.Status.Tasks[j].Fetched
		}
		for k := range min(len(ts.Steps), len(old.Status.Tasks[j].Steps)) {
			if ts.Steps[k].LogKey == "" {
				ts.Steps[k].LogKey = old.Status.Tasks[j].Steps[k].LogKey
			}
		}
	}
	slices.SortFunc(doc.Status.ExecutorTasks, func(a, b arv1.ArchivedExecutorTask) int { return strings.Compare(a.Name, b.Name) })
	return nil
}

// SetupWithManager registers the archiver: on the leader, or on every replica of a sharded manager
// (each archives its own runs); the archive's upkeep stays on the leader.
func (r *ArchiverReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.segments = &segmentBatcher{store: r.Store, max: 500, wait: 500 * time.Millisecond, kick: make(chan struct{}, 1), stepDone: r.StepDone, everyReplica: r.Guard != nil}
	if err := mgr.Add(r.segments); err != nil {
		return err
	}
	// Archives expire by the hour of their archiving, and hours are compacted once past: looking
	// more often than every few minutes finds nothing new.
	interval := 10 * time.Minute
	if r.Retention > 0 {
		interval = min(max(r.Retention/10, time.Minute), interval)
	}
	if err := mgr.Add(&archiveUpkeep{store: r.Store, keep: r.Retention, interval: interval, metrics: r.Metrics}); err != nil {
		return err
	}
	// Every change of a final run: its status records the fetches it waits for.
	final := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.(*rsv1.Run).Status.Phase.IsFinal()
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("archiver").
		For(&rsv1.Run{}, builder.WithPredicates(final)).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Workers, NeedLeaderElection: r.Guard.needLeaderElection()}).
		Complete(r)
}

// archiveUpkeep keeps the archive's segments few and its age bounded, on the leader: every
// interval it merges the segments of each past hour that writers are done with (archive.CompactHour:
// a cold index rebuild then reads a few objects per hour instead of one per batch of archives), and,
// with a positive keep, deletes what was archived more than keep ago (archive.Expire).
type archiveUpkeep struct {
	store    *objectstore.Store
	keep     time.Duration
	interval time.Duration
	metrics  *Metrics

	compacted map[time.Time]bool
}

// Start works until ctx ends (a manager.Runnable).
func (u *archiveUpkeep) Start(ctx context.Context) error {
	log := ctrl.LoggerFrom(ctx).WithName("archive-upkeep")
	u.compacted = map[time.Time]bool{}
	t := time.NewTicker(u.interval)
	defer t.Stop()
	for {
		if _, err := archive.CompactPast(ctx, u.store, time.Now(), u.compacted); err != nil {
			log.Error(err, "compacting index segments (retried)")
		}
		if u.keep > 0 {
			now := time.Now()
			n, err := archive.Expire(ctx, u.store, now.Add(-u.keep), now)
			u.metrics.observeExpired(n)
			if err != nil {
				log.Error(err, "expiring archived runs (retried)", "expired", n)
			} else if n > 0 {
				log.V(1).Info("expired archived runs", "expired", n)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// NeedLeaderElection: one replica keeps the archive.
func (u *archiveUpkeep) NeedLeaderElection() bool { return true }

// segmentBatcher writes the index entries of the runs archived meanwhile as one segment: a run
// leaves etcd only once its entry is in a segment, and a segment per run would be a million objects
// to read on a cold index rebuild.
type segmentBatcher struct {
	store *objectstore.Store
	// max entries in a segment; wait is the least time between two segments written (unless full).
	max  int
	wait time.Duration

	kick chan struct{} // a segment has its first entry, or is full
	// stepDone is the archiver's StepDone, called for each run of a segment midway through its
	// write.
	stepDone func(run types.NamespacedName, step string) error
	// everyReplica: each replica of a sharded manager archives its own runs, so writes their
	// segments (named uniquely, and compacted by the leader only once past).
	everyReplica bool

	mu      sync.Mutex
	pending []archive.Entry
	waiters []chan error
}

// add returns once e is in a segment written to the store.
func (b *segmentBatcher) add(ctx context.Context, e archive.Entry) error {
	done := make(chan error, 1)
	b.mu.Lock()
	b.pending = append(b.pending, e)
	b.waiters = append(b.waiters, done)
	kick := len(b.pending) == 1 || len(b.pending) >= b.max
	b.mu.Unlock()
	if kick {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Start writes segments until ctx ends (a manager.Runnable). The wait bounds how often segments
// are written, not how long an entry waits: an entry that finds no segment written for a wait is
// written at once; the ones that come sooner after a write are written together a wait after it,
// or as soon as max of them are pending.
func (b *segmentBatcher) Start(ctx context.Context) error {
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			b.flush(ctx)
			return nil
		case <-b.kick:
		}
		if wait := time.Until(last.Add(b.wait)); wait > 0 {
			t := time.NewTimer(wait)
			// Full already: the kick of the last entry was dropped while the first's was pending.
			for full := b.full(); !full; {
				select {
				case <-ctx.Done():
					full = true
				case <-t.C:
					full = true
				case <-b.kick:
					full = b.full()
				}
			}
			t.Stop()
		}
		if b.flush(ctx) {
			last = time.Now()
		}
	}
}

func (b *segmentBatcher) full() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.pending) >= b.max
}

// flush writes the pending entries as a segment, and reports whether there were any.
func (b *segmentBatcher) flush(ctx context.Context) bool {
	b.mu.Lock()
	entries, waiters := b.pending, b.waiters
	b.pending, b.waiters = nil, nil
	b.mu.Unlock()
	if len(entries) == 0 {
		return false
	}
	var midway func() error
	if b.stepDone != nil {
		midway = func() error {
			for _, e := range entries {
				if err := b.stepDone(types.NamespacedName{Namespace: e.Namespace, Name: e.Name}, "segment-write"); err != nil {
					return err
				}
			}
			return nil
		}
	}
	_, err := archive.WriteSegmentMidway(context.WithoutCancel(ctx), b.store, time.Now(), entries, midway)
	for _, w := range waiters {
		w <- err
	}
	return true
}

// NeedLeaderElection: segments are written by the archivers' replicas: the leader, unsharded.
func (b *segmentBatcher) NeedLeaderElection() bool { return !b.everyReplica }
