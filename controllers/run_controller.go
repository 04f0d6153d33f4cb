package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/ledger"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/restart"
	"runservice.dev/runservice/internal/webhook"
	"runservice.dev/runservice/pkg/dag"
)

// Run condition types.
const (
	// ConditionValid is False when the run's graph is invalid (phase SetupError).
	ConditionValid = "Valid"
	// ConditionAdmitted is True once the run may start: not suspended and admitted by its change groups.
	ConditionAdmitted = "Admitted"
	// ConditionScheduled is False while a ready task finds no executor.
	ConditionScheduled = "Scheduled"
)

// RunReconciler drives runs: it validates them, starts them once admitted, schedules their ready
// tasks onto executors as ExecutorTasks, folds the executors' reports into the run's status and
// finishes them.
type RunReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	Ledger    *ledger.Ledger
	Scheduler *Scheduler
	Metrics   *Metrics
	Options   Options
	// Fetches are the fetcher's outcomes, recorded in the runs' status (nil: no fetcher).
	Fetches *fetchOutcomes

	writes lastWrites
	// guard and shardMetrics are the replica's part of the shard ring's handovers (nil unsharded).
	guard        *handoverGuard
	shardMetrics *shardMetrics

	mu sync.Mutex
	// held holds, by run, since when its status's changes wait to be written (deferWrite).
	held map[types.NamespacedName]*heldWrite
}

var _ reconcile.Reconciler = (*RunReconciler)(nil)

// +kubebuilder:rbac:groups=runservice.dev,resources=runs,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=runservice.dev,resources=runs/status,verbs=patch
// +kubebuilder:rbac:groups=runservice.dev,resources=runs/finalizers,verbs=update
// +kubebuilder:rbac:groups=runservice.dev,resources=executortasks,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=runservice.dev,resources=executors,verbs=get;list;watch
// +kubebuilder:rbac:groups=runservice.dev,resources=changegroups,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile implements reconcile.Reconciler.
func (r *RunReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	run := &rsv1.Run{}
	if err := r.Client.Get(ctx, req.NamespacedName, run); err != nil {
		if apierrors.IsNotFound(err) {
			r.writes.forget(req.NamespacedName)
			r.written(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.writes.stale(run) {
		// The cache has not shown this reconciler's last write of the run yet: what would be decided
		// from this older copy was decided already, and writing it would be refused (conflict).
		return ctrl.Result{RequeueAfter: cacheLagRetry}, nil
	}
	if done, result, err := r.handover(ctx, run); done {
		return result, err
	}
	if run.DeletionTimestamp != nil {
		// A deleted run leaves its change groups at once.
		if err := r.release(ctx, run); err != nil || !controllerutil.ContainsFinalizer(run, rsv1.FinalizerArchive) {
			return requeueOnConflict(err, "")
		}
		if !run.Status.Phase.IsFinal() {
			// Deleted before it ended and kept for its archive: stopped, so that it ends and is
			// archived instead of leaving with tasks running. Not written: the deletion says it.
			stop := true
			run.Spec.Stop = &stop
		}
	} else if !run.Status.Phase.IsFinal() {
		if err := r.ensureMeta(ctx, run); err != nil {
			return requeueOnConflict(err, "adding finalizers")
		}
	}
	if run.Status.Phase.IsFinal() {
		if err := r.writeFetches(ctx, run); err != nil {
			return requeueOnConflict(err, "")
		}
		return requeueOnConflict(r.release(ctx, run), "")
	}
	if err := r.ensureGroups(ctx, run); err != nil {
		return ctrl.Result{}, err
	}

	old := run.Status.DeepCopy()
	var result ctrl.Result
	var kept []rsv1.TaskStatus
	if run.Status.Phase == "" {
		setupErr := ""
		if errs := append(dag.Validate(&run.Spec, field.NewPath("spec")), dag.ValidateSize(run)...); len(errs) > 0 {
			r.setupError(run, rsv1.ReasonInvalidGraph, errs.ToAggregate().Error())
			setupErr = rsv1.ReasonInvalidGraph
		} else if run.Spec.RestartFrom != nil {
			var gone *restart.GoneError
			from, k, err := r.restartFrom(ctx, run)
			switch {
			case errors.As(err, &gone):
				r.setupError(run, rsv1.ReasonRestartedRunGone, "spec.restartFrom: "+gone.Error())
				setupErr = rsv1.ReasonRestartedRunGone
			case err != nil:
				// Not readable now (the object store or the apiserver): nothing is decided before it is.
				return ctrl.Result{}, fmt.Errorf("reading the restarted run %s: %w", run.Spec.RestartFrom.Run, err)
			}
			run.Status.RestartedFrom, kept = from, k
		}
		if setupErr != "" {
			if err := r.writeStatus(ctx, run, old); err != nil {
				return requeueOnConflict(err, "")
			}
			// Final: out of its groups now (its own status event does not bring it back).
			return requeueOnConflict(r.release(ctx, run), "")
		}
	}

	admitted, why, err := r.admitted(ctx, run)
	if err != nil {
		return ctrl.Result{}, err
	}
	tasks, states, err := r.executorTasks(ctx, run)
	if err != nil {
		return ctrl.Result{}, err
	}
	out := dag.Advance(dag.Input{Spec: &run.Spec, Status: &run.Status, Admitted: admitted, ExecutorTasks: states, Now: metav1.Now(), Kept: kept})
	run.Status = out.Status
	run.Status.ObservedGeneration = run.Generation
	setCondition(run, ConditionValid, metav1.ConditionTrue, "Valid", "the run's graph is valid")
	if admitted {
		setCondition(run, ConditionAdmitted, metav1.ConditionTrue, "Admitted", "the run may start")
	} else if run.Status.Phase == rsv1.RunPhaseQueued {
		setCondition(run, ConditionAdmitted, metav1.ConditionFalse, why, "the run waits to start: "+why)
	}

	recording := r.foldFetches(run, tasks)
	var noExecutor []string
	nameTaken := false
	for _, name := range out.Schedule {
		err := r.schedule(ctx, run, name, tasks)
		var ne *NoExecutorError
		var taken *nameTakenError
		switch {
		case errors.As(err, &ne):
			noExecutor = append(noExecutor, fmt.Sprintf("task %s: %s", name, ne.Reason))
		case errors.As(err, &taken):
			nameTaken = true
			r.nameTaken(ctx, run, name, taken)
			// The engine has not seen this task end: look again once the status is written (the
			// run's own status writes do not bring it back).
			result.RequeueAfter = cacheLagRetry
		case err != nil:
			return ctrl.Result{}, err
		}
	}
	if len(noExecutor) > 0 {
		setCondition(run, ConditionScheduled, metav1.ConditionFalse, rsv1.ReasonNoExecutor, noExecutor[0])
		result.RequeueAfter = r.Options.NoExecutorRetry
	} else if len(out.Schedule) > 0 {
		setCondition(run, ConditionScheduled, metav1.ConditionTrue, "Scheduled", "every ready task is scheduled")
	}
	for _, name := range out.Stop {
		if err := r.stopTask(ctx, run.Namespace, name); err != nil {
			return ctrl.Result{}, err
		}
	}
	// Tasks scheduled may wait to be written (deferWrite), with no other decision: none refused,
	// none stopped.
	if len(noExecutor) == 0 && !nameTaken && len(out.Stop) == 0 {
		if wait := r.deferWrite(client.ObjectKeyFromObject(run), run.UID, old, &run.Status, r.fetchesAwaited(run, tasks)); wait > 0 {
			return ctrl.Result{RequeueAfter: wait}, nil
		}
	}
	if err := r.recordingFetches(run, recording); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.writeStatus(ctx, run, old); err != nil {
		return requeueOnConflict(err, "")
	}
	if run.Status.Phase.IsFinal() {
		log.V(1).Info("run is final", "phase", run.Status.Phase, "result", run.Status.Result)
		return requeueOnConflict(r.release(ctx, run), "")
	}
	return result, nil
}

func setCondition(run *rsv1.Run, typ string, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&run.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: rsv1.TruncateMessage(msg), ObservedGeneration: run.Generation,
	})
}

// setupError ends a run that cannot start, with the reason and message on its Valid condition.
func (r *RunReconciler) setupError(run *rsv1.Run, reason, msg string) {
	now := metav1.Now()
	run.Status.Phase = rsv1.RunPhaseSetupError
	run.Status.Result = rsv1.RunResultFailed
	run.Status.QueueTime, run.Status.EndTime = &now, &now
	run.Status.ObservedGeneration = run.Generation
	setCondition(run, ConditionValid, metav1.ConditionFalse, reason, msg)
	r.Recorder.Eventf(run, nil, corev1.EventTypeWarning, reason, "Validate", "%s", rsv1.TruncateMessage(msg))
}

// restartFrom finds the run that run restarts (spec.restartFrom) and the statuses of the tasks it
// keeps of it: none from scratch, which needs nothing of the restarted run but its identity. It is
// read from the apiserver, not the cache: admission saw it ended, the cache may not have yet.
func (r *RunReconciler) restartFrom(ctx context.Context, run *rsv1.Run) (*rsv1.RunReference, []rsv1.TaskStatus, error) {
	from := *run.Spec.RestartFrom
	if !from.FailedTasksOnly && from.UID != "" {
		return &rsv1.RunReference{Name: from.Run, UID: from.UID}, nil, nil
	}
	if hook := r.Options.RestartReading; hook != nil {
		if err := hook(client.ObjectKeyFromObject(run)); err != nil {
			return nil, nil, err
		}
	}
	doc, err := restart.Find(ctx, r.APIReader, r.Options.Store, run.Namespace, from, from.FailedTasksOnly)
	if err != nil {
		return nil, nil, err
	}
	ref := &rsv1.RunReference{Name: doc.Name, UID: doc.UID}
	if !from.FailedTasksOnly {
		return ref, nil, nil
	}
	// An earlier advance may have decided otherwise and created ExecutorTasks before its status
	// write was lost (a conflict, a crash): a task that has one runs again, on it. Read live, as
	// the cache may not have them yet.
	var ets rsv1.ExecutorTaskList
	if err := r.APIReader.List(ctx, &ets, client.InNamespace(run.Namespace), client.MatchingLabels{rsv1.LabelRunUID: string(run.UID)}); err != nil {
		return nil, nil, fmt.Errorf("listing the run's executor tasks: %w", err)
	}
	var scheduled []string
	for i := range ets.Items {
		if metav1.IsControlledBy(&ets.Items[i], run) {
			scheduled = append(scheduled, ets.Items[i].Spec.TaskName)
		}
	}
	kept := restart.Kept(&run.Spec, doc, scheduled...)
	// A kept task's archives are where it ran, perhaps a run older than doc and expired since.
	gone, err := restart.Unstored(ctx, r.Options.Store, run.Namespace, &run.Spec, kept)
	if err != nil {
		return nil, nil, fmt.Errorf("looking for the kept tasks' workspace archives: %w", err)
	}
	if len(gone) > 0 {
		kept = restart.Kept(&run.Spec, doc, append(scheduled, gone...)...)
	}
	return ref, kept, nil
}

// ensureGroups creates the run's change groups that do not exist yet: groups are created on first use.
func (r *RunReconciler) ensureGroups(ctx context.Context, run *rsv1.Run) error {
	if run.Status.Phase != "" || run.DeletionTimestamp != nil {
		// A deleted run only ends (its namespace may be terminating, where nothing is created).
		return nil
	}
	for _, g := range run.Spec.ChangeGroups {
		key := types.NamespacedName{Namespace: run.Namespace, Name: g}
		err := r.Client.Get(ctx, key, &rsv1.ChangeGroup{})
		if apierrors.IsNotFound(err) {
			err = r.Client.Create(ctx, &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Namespace: run.Namespace, Name: g}})
			if apierrors.IsAlreadyExists(err) {
				err = nil
			}
		}
		if err != nil {
			return fmt.Errorf("ensuring change group %s: %w", g, err)
		}
	}
	return nil
}

// admitted reports whether the run may start, and why not.
func (r *RunReconciler) admitted(ctx context.Context, run *rsv1.Run) (bool, string, error) {
	if run.Status.Phase == rsv1.RunPhaseRunning {
		return true, "", nil
	}
	if run.IsSuspended() {
		return false, "Suspended", nil
	}
	for _, g := range run.Spec.ChangeGroups {
		cg := &rsv1.ChangeGroup{}
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: run.Namespace, Name: g}, cg); err != nil {
			if apierrors.IsNotFound(err) {
				return false, "WaitingForChangeGroup", nil
			}
			return false, "", fmt.Errorf("reading change group %s: %w", g, err)
		}
		if !slices.Contains(cg.Status.ActiveRuns, run.Name) {
			return false, "WaitingForChangeGroup", nil
		}
	}
	return true, "", nil
}

// executorTasks returns the run's ExecutorTasks by task name, and what the DAG engine needs of them.
// The ExecutorTasks are the cache's own objects, not copies: read them, never change them (the
// engine copies what it keeps of their status).
func (r *RunReconciler) executorTasks(ctx context.Context, run *rsv1.Run) (map[string]*rsv1.ExecutorTask, map[string]dag.ExecutorTaskState, error) {
	var list rsv1.ExecutorTaskList
	if err := r.Client.List(ctx, &list, client.InNamespace(run.Namespace), client.MatchingFields{indexRunName: run.Name}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, fmt.Errorf("listing executor tasks: %w", err)
	}
	tasks := map[string]*rsv1.ExecutorTask{}
	states := map[string]dag.ExecutorTaskState{}
	executors := map[string]*rsv1.Executor{}
	add := func(et *rsv1.ExecutorTask) error {
		ex, ok := executors[et.Spec.Executor]
		if !ok {
			ex = &rsv1.Executor{}
			if err := r.Client.Get(ctx, types.NamespacedName{Namespace: run.Namespace, Name: et.Spec.Executor}, ex, client.UnsafeDisableDeepCopy); err != nil {
				if !apierrors.IsNotFound(err) {
					return fmt.Errorf("reading executor %s: %w", et.Spec.Executor, err)
				}
				ex = nil
			}
			executors[et.Spec.Executor] = ex
		}
		tasks[et.Spec.TaskName] = et
		removed := executorRemoved(ex, et)
		fetched, missing := workspaceState(et, r.fetchOf(run, et), removed)
		states[et.Spec.TaskName] = dag.ExecutorTaskState{
			Name:            et.Name,
			Executor:        et.Spec.Executor,
			Status:          et.Status,
			StopRequested:   et.Spec.Stop,
			ExecutorRemoved: removed,
			Fetched:         fetched,
			MissingArchives: missing,
		}
		return nil
	}
	for i := range list.Items {
		et := &list.Items[i]
		if !metav1.IsControlledBy(et, run) {
			continue // a task of an earlier run of the same name
		}
		if err := add(et); err != nil {
			return nil, nil, err
		}
	}
	// A task the status says was scheduled (or a write that waits does: scheduledUnwritten), whose
	// ExecutorTask is not in the cache: either the cache lags behind its creation, or someone
	// deleted it (which makes its executor stop it).
	unwritten := r.scheduledUnwritten(client.ObjectKeyFromObject(run), run.UID)
	for _, ts := range run.Status.Tasks {
		where := scheduledTask{executorTask: ts.ExecutorTask, executor: ts.Executor}
		if where.executorTask == "" {
			where = unwritten[ts.Name]
		}
		if _, ok := states[ts.Name]; ok || where.executorTask == "" || ts.Phase.IsFinal() {
			continue
		}
		et := &rsv1.ExecutorTask{}
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: run.Namespace, Name: where.executorTask}, et)
		switch {
		case apierrors.IsNotFound(err):
			states[ts.Name] = dag.ExecutorTaskState{
				Name: where.executorTask, Executor: where.executor,
				Status: rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseFailed, Message: "its ExecutorTask " + where.executorTask + " was deleted"},
			}
		case err != nil:
			return nil, nil, fmt.Errorf("reading executor task %s: %w", where.executorTask, err)
		default:
			// Not in the cache: the cache lags behind its creation, or it is labelled with
			// another shard. What it says is what the run acts on meanwhile: a run stopped now
			// stops it, and it is not scheduled again.
			if err := r.followRun(ctx, et); err != nil {
				return nil, nil, err
			}
			if metav1.IsControlledBy(et, run) && et.Spec.TaskName == ts.Name {
				if err := add(et); err != nil {
					return nil, nil, err
				}
			}
		}
	}
	return tasks, states, nil
}

// executorRemoved says whether an ExecutorTask's executor is gone for good: its Executor object is
// gone, or registered anew under the name. An Executor being deleted is not: FinalizerExecutorTasks
// keeps it until its tasks' containers are known gone, and its tasks unfinished until then.
func executorRemoved(ex *rsv1.Executor, et *rsv1.ExecutorTask) bool {
	return ex == nil || string(ex.UID) != et.Spec.ExecutorUID
}

// writeFetches records in run's status, alone, the fetches whose outcome it does not record yet:
// those of a final run that ended after it did, and those of a run handed over.
func (r *RunReconciler) writeFetches(ctx context.Context, run *rsv1.Run) error {
	tasks, _, err := r.executorTasks(ctx, run)
	if err != nil {
		return err
	}
	old := run.Status.DeepCopy()
	if err := r.recordingFetches(run, r.foldFetches(run, tasks)); err != nil {
		return err
	}
	return r.writeStatus(ctx, run, old)
}

// fetchOf is what is known of the fetch of et's logs and archives: what run's status records
// (or the annotation of a manager before status.tasks[].fetched), else the fetcher's outcome that
// this reconcile's status write is to record; "" while it is not fetched.
func (r *RunReconciler) fetchOf(run *rsv1.Run, et *rsv1.ExecutorTask) string {
	if v := run.Status.Fetched(et); v != "" {
		return v
	}
	return r.Fetches.outcome(et)
}

// foldFetches records in run's status the outcome of each task's fetch that it does not record
// yet, and points the steps of fetched tasks at their logs in the object store. It reports whether
// it recorded an outcome: the status write to come is what makes it durable, and what lets the
// fetcher tell the executor that its copy may go.
func (r *RunReconciler) foldFetches(run *rsv1.Run, tasks map[string]*rsv1.ExecutorTask) (recording bool) {
	for i := range run.Status.Tasks {
		ts := &run.Status.Tasks[i]
		et := tasks[ts.Name]
		if et == nil || ts.ExecutorTask != et.Name || ts.FromRun != "" {
			continue
		}
		if ts.Fetched == "" {
			ts.Fetched = r.fetchOf(run, et)
			recording = recording || ts.Fetched != ""
		}
		if ts.Fetched == "" || ts.Fetched == rsv1.FetchedLost {
			continue
		}
		for j := range ts.Steps {
			if ts.Steps[j].Phase != rsv1.StepPhaseNotStarted {
				ts.Steps[j].LogKey = objectstore.TaskOf(et).LogKey(j)
			}
		}
	}
	return recording
}

// recordingFetches calls the FetchRecording fault hook before a status write that records fetches.
func (r *RunReconciler) recordingFetches(run *rsv1.Run, recording bool) error {
	if hook := r.Options.FetchRecording; recording && hook != nil {
		return hook(client.ObjectKeyFromObject(run))
	}
	return nil
}

// schedule creates the ExecutorTask of a ready task on a picked executor. One that exists already
// under its name is adopted only when it is this run's and this task's; otherwise it returns a
// *nameTakenError, and the task fails.
func (r *RunReconciler) schedule(ctx context.Context, run *rsv1.Run, name string, existing map[string]*rsv1.ExecutorTask) error {
	log := ctrl.LoggerFrom(ctx)
	i := slices.IndexFunc(run.Spec.Tasks, func(t rsv1.Task) bool { return t.Name == name })
	if i < 0 {
		return nil
	}
	task := &run.Spec.Tasks[i]
	etName := rsv1.ExecutorTaskName(run.Name, run.UID, name)
	if ex, ok := r.Scheduler.Assumed(types.NamespacedName{Namespace: run.Namespace, Name: etName}); ok {
		// Created a moment ago, by a reconcile whose status write this one's copy of the run shows
		// but whose ExecutorTask the cache does not yet: it is there.
		r.recordScheduled(run, name, etName, ex)
		return nil
	}
	var landedOn string
	err := r.Scheduler.Schedule(ctx, run.Namespace, task, etName, func(ex *rsv1.Executor) (bool, error) {
		et := &rsv1.ExecutorTask{
			ObjectMeta: metav1.ObjectMeta{
				Name:      etName,
				Namespace: run.Namespace,
				Labels: map[string]string{
					rsv1.LabelRun: rsv1.LabelValue(run.Name), rsv1.LabelRunUID: string(run.UID), rsv1.LabelTask: name, rsv1.LabelExecutor: ex.Name,
				},
			},
			Spec: rsv1.ExecutorTaskSpec{
				RunName:     run.Name,
				RunUID:      string(run.UID),
				TaskName:    name,
				Executor:    ex.Name,
				ExecutorUID: string(ex.UID),
				Task:        *task.DeepCopy(),
				Environment: run.Spec.Environment,
			},
		}
		for _, a := range dag.Ancestors(&run.Spec, name) {
			if ks, ok := keptSource(run, a); ok {
				et.Spec.WorkspaceSources = append(et.Spec.WorkspaceSources, ks.ExecutorTask)
				et.Spec.KeptSources = append(et.Spec.KeptSources, ks)
				continue
			}
			// The name an ancestor ran under: a run scheduled by an earlier manager has ExecutorTasks
			// named otherwise. One that never ran (skipped) has none, and saved nothing.
			src := rsv1.ExecutorTaskName(run.Name, run.UID, a)
			if p := existing[a]; p != nil {
				src = p.Name
			}
			et.Spec.WorkspaceSources = append(et.Spec.WorkspaceSources, src)
		}
		if owner, ok := run.Labels[rsv1.LabelShard]; ok {
			et.Labels[rsv1.LabelShard] = owner // the owner's cache selects its run's tasks with it
		}
		if err := controllerutil.SetControllerReference(run, et, r.Client.Scheme()); err != nil {
			return false, fmt.Errorf("owning executor task %s: %w", etName, err)
		}
		err := r.Client.Create(ctx, et)
		if apierrors.IsAlreadyExists(err) {
			// Scheduled before (by an earlier manager, or before a lost status write): adopt it, if it
			// is this task's.
			if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(et), et); err != nil {
				return false, fmt.Errorf("reading executor task %s: %w", etName, err)
			}
			if err := adoptable(et, run, name); err != nil {
				return false, err
			}
			if err := r.followRun(ctx, et); err != nil {
				return false, err
			}
			landedOn = et.Spec.Executor
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("creating executor task %s: %w", etName, err)
		}
		landedOn = ex.Name
		r.Metrics.observeScheduled(run, task)
		log.V(1).Info("scheduled task", "task", name, "executor", ex.Name, "executorTask", klog.KObj(et))
		return true, nil
	})
	if err != nil {
		return err
	}
	r.recordScheduled(run, name, etName, landedOn)
	return nil
}

// keptSource is the workspace source of task name when a restart kept it: the ExecutorTask it
// ran as in the run it keeps it from, and the archives it stored there.
func keptSource(run *rsv1.Run, name string) (rsv1.KeptWorkspaceSource, bool) {
	i := slices.IndexFunc(run.Status.Tasks, func(ts rsv1.TaskStatus) bool { return ts.Name == name })
	j := slices.IndexFunc(run.Spec.Tasks, func(t rsv1.Task) bool { return t.Name == name })
	if i < 0 || j < 0 || run.Status.Tasks[i].FromRun == "" || run.Status.Tasks[i].ExecutorTask == "" {
		return rsv1.KeptWorkspaceSource{}, false
	}
	ts := &run.Status.Tasks[i]
	ks := rsv1.KeptWorkspaceSource{ExecutorTask: ts.ExecutorTask, Run: rsv1.RunReference{Name: ts.FromRun, UID: ts.FromRunUID}}
	for _, step := range restart.SavedArchives(&run.Spec.Tasks[j], ts) {
		ks.Archives = append(ks.Archives, int32(step))
	}
	return ks, true
}

// recordScheduled records in the run's status where task name was scheduled.
func (r *RunReconciler) recordScheduled(run *rsv1.Run, name, etName, executor string) {
	for j := range run.Status.Tasks {
		if run.Status.Tasks[j].Name == name {
			run.Status.Tasks[j].ExecutorTask = etName
			run.Status.Tasks[j].Executor = executor
		}
	}
}

// nameTakenError says that a task's ExecutorTask name is held by an ExecutorTask that is not the
// task's.
type nameTakenError struct{ msg string }

func (e *nameTakenError) Error() string { return e.msg }

// adoptable checks that an existing ExecutorTask is run's (by owner uid: a run deleted and created
// again under the same name is another run) and task's. Adopting another's would make the task
// wait for ever on a task its run never sees, or take another run's result as its own.
func adoptable(et *rsv1.ExecutorTask, run *rsv1.Run, task string) error {
	if !metav1.IsControlledBy(et, run) {
		owner := "no run"
		if ref := metav1.GetControllerOf(et); ref != nil {
			owner = fmt.Sprintf("%s %q (uid %s)", strings.ToLower(ref.Kind), ref.Name, ref.UID)
		}
		return &nameTakenError{fmt.Sprintf("ExecutorTask %s already exists and belongs to %s, not to this run (uid %s): it is not adopted and the task does not run", et.Name, owner, run.UID)}
	}
	if et.Spec.TaskName != task {
		return &nameTakenError{fmt.Sprintf("ExecutorTask %s already exists and is task %q's, not task %q's: it is not adopted and the task does not run", et.Name, et.Spec.TaskName, task)}
	}
	return nil
}

// nameTaken fails a task whose ExecutorTask name is taken: the manager decided it, so it is final
// at once and is never scheduled again (the name would be taken again).
func (r *RunReconciler) nameTaken(ctx context.Context, run *rsv1.Run, name string, taken *nameTakenError) {
	ctrl.LoggerFrom(ctx).Error(taken, "executor task name taken", "task", name)
	r.Recorder.Eventf(run, nil, corev1.EventTypeWarning, rsv1.ReasonExecutorTaskNameTaken, "Schedule", "task %s: %s", name, rsv1.TruncateMessage(taken.msg))
	now := metav1.Now()
	for j := range run.Status.Tasks {
		if ts := &run.Status.Tasks[j]; ts.Name == name {
			ts.Phase, ts.Reason, ts.Message = rsv1.TaskPhaseFailed, rsv1.ReasonExecutorTaskNameTaken, rsv1.TruncateMessage(taken.msg)
			ts.WaitingApproval = false
			ts.EndTime = &now
		}
	}
}

func (r *RunReconciler) stopTask(ctx context.Context, namespace, name string) error {
	et := &rsv1.ExecutorTask{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	patch := client.RawPatch(types.MergePatchType, []byte(`{"spec":{"stop":true}}`))
	if err := r.Client.Patch(ctx, et, patch); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("stopping executor task %s: %w", name, err)
	}
	return nil
}

// writeStatus writes the run's status when it changed, with an event when the run ended.
//
// The write is a JSON merge patch of the status (what changed since old, the status the run had when
// read) that carries the resourceVersion it was read at: the apiserver refuses it (409) when the run
// changed since, so a status decided from a stale copy never overwrites a newer one, as with an
// Update, but without sending the whole run. stale keeps the reconciler from even trying when the
// copy predates its own last write.
func (r *RunReconciler) writeStatus(ctx context.Context, run *rsv1.Run, old *rsv1.RunStatus) error {
	if equality.Semantic.DeepEqual(old, &run.Status) {
		return nil
	}
	base := *run // shallow: only marshalled, to compute the patch
	base.Status = *old
	if err := r.Client.Status().Patch(ctx, run, client.MergeFromWithOptions(&base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("writing run status: %w", err)
	}
	r.writes.wrote(run)
	r.written(client.ObjectKeyFromObject(run))
	if old.Phase != run.Status.Phase {
		r.Metrics.observePhase(run, old.Phase)
		// An event is one more apiserver write per run: none for the start (the phase, startTime and
		// the Admitted condition say it) or for a success (the phase, result and labels say it). A
		// run that did not succeed is worth a Warning, for `kubectl get events --field-selector
		// type=Warning`.
		switch run.Status.Phase {
		case rsv1.RunPhaseFinished, rsv1.RunPhaseCancelled:
			if run.Status.Result != rsv1.RunResultSuccess {
				r.Recorder.Eventf(run, nil, corev1.EventTypeWarning, string(run.Status.Phase), "Finish", "run %s with result %s", run.Status.Phase, run.Status.Result)
			}
		}
	}
	return nil
}

// ensureMeta gives a live run, in one write, what its life needs: FinalizerChangeGroupLedger when it
// is in change groups, FinalizerArchive when runs are archived, and a label per change group.
func (r *RunReconciler) ensureMeta(ctx context.Context, run *rsv1.Run) error {
	var finalizers []string
	for _, f := range webhook.Finalizers(run, r.Options.Archive) {
		if !controllerutil.ContainsFinalizer(run, f) {
			finalizers = append(finalizers, f)
		}
	}
	labels := missingLabels(run)
	if len(finalizers) == 0 && len(labels) == 0 {
		return nil // set at creation by the defaulting webhook
	}
	return r.patchMeta(ctx, run, func() {
		for _, f := range finalizers {
			controllerutil.AddFinalizer(run, f)
		}
		setLabels(run, labels)
	})
}

// missingLabels are the labels live and archived runs carry alike (archive.Labels: the change
// groups, and the phase and result of a final run) that run lacks or has with another value.
func missingLabels(run *rsv1.Run) map[string]string {
	out := map[string]string{}
	for k, v := range archive.Labels(run) {
		if have, ok := run.Labels[k]; !ok || have != v {
			out[k] = v
		}
	}
	return out
}

func setLabels(run *rsv1.Run, labels map[string]string) {
	if len(labels) == 0 {
		return
	}
	if run.Labels == nil {
		run.Labels = map[string]string{}
	}
	maps.Copy(run.Labels, labels)
}

// release takes a final or deleted run out of its groups' ledgers, counting it there by its result
// in the same write (a run deleted before its end, as Stopped unless it has Failed already), then
// drops the ledger finalizer and labels a final run with its phase and result, in one write. A
// retry after a crash between the two writes finds the run no longer active and counts nothing.
func (r *RunReconciler) release(ctx context.Context, run *rsv1.Run) error {
	ledgered := controllerutil.ContainsFinalizer(run, rsv1.FinalizerChangeGroupLedger)
	labels := missingLabels(run)
	if !ledgered && len(labels) == 0 {
		return nil
	}
	if ledgered {
		if err := r.Ledger.Finish(ctx, run.Namespace, run.Name, run.Spec.ChangeGroups, run.Status.Result); err != nil {
			return fmt.Errorf("releasing run from its change groups: %w", err)
		}
		if hook := r.Options.LedgerReleased; hook != nil {
			if err := hook(client.ObjectKeyFromObject(run)); err != nil {
				return err
			}
		}
	}
	err := r.patchMeta(ctx, run, func() {
		controllerutil.RemoveFinalizer(run, rsv1.FinalizerChangeGroupLedger)
		setLabels(run, labels)
	})
	if client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("removing finalizer: %w", err)
	}
	return nil
}

// patchMeta writes what change does to the run's metadata as a merge patch locked on the run's
// resourceVersion: a list such as the finalizers is replaced whole by a merge patch, so without the
// lock it could drop what another client added meanwhile.
func (r *RunReconciler) patchMeta(ctx context.Context, run *rsv1.Run, change func()) error {
	base := run.DeepCopy()
	change()
	if err := r.Client.Patch(ctx, run, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return err
	}
	r.writes.wrote(run)
	return nil
}

// SetupWithManager registers the reconciler.
func (r *RunReconciler) SetupWithManager(mgr ctrl.Manager) error {
	b := ctrl.NewControllerManagedBy(mgr).
		Named("run").
		For(&rsv1.Run{}, builder.WithPredicates(runChanged())).
		// An executor reports a task's start and end moments apart, and the tasks of a fan-out end
		// together: their runs are reconciled StatusBatch after the first report, once for all.
		Watches(&rsv1.ExecutorTask{}, enqueueAfter(r.Options.StatusBatch, ownerRun), builder.WithPredicates(reported())).
		Watches(&rsv1.Executor{}, handler.EnqueueRequestsFromMapFunc(r.runsOfExecutor),
			builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, executorRemovedPredicate()))).
		Watches(&rsv1.ChangeGroup{}, handler.EnqueueRequestsFromMapFunc(r.runsOfGroup))
	if r.Fetches != nil {
		// The fetcher's outcomes, to be recorded in the status: batched like the executors' reports.
		b = b.WatchesRawSource(source.Channel(r.Fetches.runs, enqueueAfter(r.Options.StatusBatch, ownerRun)))
	}
	return b.WithOptions(controller.Options{MaxConcurrentReconciles: r.Options.MaxConcurrentRuns, NeedLeaderElection: r.guard.needLeaderElection()}).Complete(r)
}

// runChanged passes the changes of a run the reconciler acts on: all but the updates of the status
// alone, which only this reconciler writes (the admission policy runservice-manager-status refuses
// anyone else), so that its own writes do not bring each run back for nothing.
func runChanged() predicate.Funcs {
	return predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld, e.ObjectNew
		return o.GetGeneration() != n.GetGeneration() ||
			!o.GetDeletionTimestamp().Equal(n.GetDeletionTimestamp()) ||
			!slices.Equal(o.GetFinalizers(), n.GetFinalizers()) ||
			drainChanged(o, n)
	}}
}

// reported passes the ExecutorTask events a run's status can follow: not the creation of a task
// its executor has not reported on yet (the run that created it knows it), but every one after a
// restart, when the cache's first list shows tasks as created.
func reported() predicate.Funcs {
	return predicate.Funcs{CreateFunc: func(e event.CreateEvent) bool {
		et, ok := e.Object.(*rsv1.ExecutorTask)
		return !ok || et.Status.Phase != ""
	}}
}

// ownerRun maps an ExecutorTask to the run that controls it.
func ownerRun(o client.Object) (types.NamespacedName, bool) {
	ref := metav1.GetControllerOf(o)
	if ref == nil || ref.Kind != "Run" || ref.APIVersion != rsv1.GroupVersion.String() {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: o.GetNamespace(), Name: ref.Name}, true
}

// executorRemovedPredicate passes deletions and the start of a deletion.
func executorRemovedPredicate() predicate.Funcs {
	return predicate.Funcs{
		CreateFunc:  func(event.CreateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return true },
		UpdateFunc:  func(e event.UpdateEvent) bool { return e.ObjectNew.GetDeletionTimestamp() != nil },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
}

// runsOfExecutor maps an executor to the runs with tasks on it.
func (r *RunReconciler) runsOfExecutor(ctx context.Context, o client.Object) []reconcile.Request {
	var list rsv1.ExecutorTaskList
	err := r.Client.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexActiveOnExecutor: o.GetName()}, client.UnsafeDisableDeepCopy)
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var reqs []reconcile.Request
	for _, et := range list.Items {
		if seen[et.Spec.RunName] {
			continue
		}
		seen[et.Spec.RunName] = true
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: et.Namespace, Name: et.Spec.RunName}})
	}
	return reqs
}

// runsOfGroup maps a change group to its queued runs, which may have been admitted.
func (r *RunReconciler) runsOfGroup(ctx context.Context, o client.Object) []reconcile.Request {
	cg := o.(*rsv1.ChangeGroup)
	var reqs []reconcile.Request
	for _, name := range cg.Status.ActiveRuns {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: cg.Namespace, Name: name}})
	}
	return reqs
}
