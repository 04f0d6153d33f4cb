package controllers

import (
	"maps"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/types"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// heldWrite is since when a run's status has changes waiting to be written, by kind of change.
type heldWrite struct {
	// reported: its tasks reported anything (StartDelay); ended: a task ended that makes nothing
	// ready and ends nothing (ProgressDelay); finishing: the run is final, with fetches of its
	// tasks under way (FinishWait).
	reported, ended, finishing time.Time
	// scheduled are the tasks scheduled since the run's last write (the first at scheduledAt), by
	// name, of the run with uid: until a write records them, a task whose ExecutorTask is gone
	// meanwhile is one that ran, not one to schedule.
	scheduled   map[string]scheduledTask
	scheduledAt time.Time
	uid         types.UID
}

// scheduledTask is where a task was scheduled: its ExecutorTask and executor.
type scheduledTask struct{ executorTask, executor string }

// deferWrite says how long the write of a run's new status may wait, 0 to write now. What the run
// decided that only its status says (its phase, its conditions, tasks stopped) is written at once;
// a task skipped waits like an end (every reconcile decides it again from its parents). What its
// tasks report waits, so that the next write carries it, or a burst of reports is written once:
//   - a task's start, its steps' progress and a fetch's outcome, until StartDelay after the first
//     of them was seen: a task that ends sooner is recorded Running in the run only by the
//     write of its end (the ExecutorTask says Running meanwhile), as the executors'
//     --running-status-delay does for the ExecutorTask;
//   - a task's end, until ProgressDelay after it, with the tasks it made ready scheduled: their
//     ExecutorTasks are the decision (created under names that make scheduling at most once, and
//     found again by a reconcile, a restarted manager or another shard before the run says
//     them), so a fan-out whose tasks end within ProgressDelay of their parent's end is written
//     with their ends; the tasks scheduled meanwhile are remembered (scheduledUnwritten) so
//     that one whose ExecutorTask is deleted before the write fails instead of running again;
//
// and the run's end waits, up to FinishWait, while fetchesAwaited: the outcomes of its tasks'
// fetches then ride on that last write instead of a write of their own after it.
func (r *RunReconciler) deferWrite(key types.NamespacedName, uid types.UID, old, status *rsv1.RunStatus, fetchesAwaited bool) time.Duration {
	if equality.Semantic.DeepEqual(old, status) {
		return 0
	}
	finishing := status.Phase.IsFinal() && !old.Phase.IsFinal()
	if !(finishing && fetchesAwaited) && !reportOnly(old, status) {
		return 0
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.held == nil {
		r.held = map[types.NamespacedName]*heldWrite{}
	}
	h := r.held[key]
	if h == nil || h.uid != uid {
		h = &heldWrite{uid: uid} // what a run of the same name held before is not this run's
		r.held[key] = h
	}
	since := func(t *time.Time) time.Time {
		if t.IsZero() {
			*t = now
		}
		return *t
	}
	for _, ts := range status.Tasks {
		if ts.ExecutorTask != "" && taskIn(old, ts.Name).ExecutorTask == "" {
			if h.scheduled == nil {
				h.scheduled = map[string]scheduledTask{}
			}
			h.scheduled[ts.Name] = scheduledTask{executorTask: ts.ExecutorTask, executor: ts.Executor}
			since(&h.scheduledAt)
		}
	}
	var until time.Time
	if finishing {
		until = since(&h.finishing).Add(r.Options.FinishWait)
	} else {
		until = since(&h.reported).Add(r.Options.StartDelay)
		if tasksEnded(old, status) {
			if ended := since(&h.ended).Add(r.Options.ProgressDelay); ended.Before(until) {
				until = ended
			}
		}
		// Tasks scheduled wait no longer than an end (an approval or a workspace's fetch can
		// schedule one with no task ending).
		if !h.scheduledAt.IsZero() {
			if scheduled := h.scheduledAt.Add(r.Options.ProgressDelay); scheduled.Before(until) {
				until = scheduled
			}
		}
	}
	return until.Sub(now)
}

// scheduledUnwritten returns the tasks of the run with uid scheduled by a write that waits
// (deferWrite).
func (r *RunReconciler) scheduledUnwritten(key types.NamespacedName, uid types.UID) map[string]scheduledTask {
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := r.held[key]; h != nil && h.uid == uid && len(h.scheduled) > 0 {
		return maps.Clone(h.scheduled)
	}
	return nil
}

// taskIn returns the status of task name in st, or a task never scheduled.
func taskIn(st *rsv1.RunStatus, name string) rsv1.TaskStatus {
	if j := slices.IndexFunc(st.Tasks, func(o rsv1.TaskStatus) bool { return o.Name == name }); j >= 0 {
		return st.Tasks[j]
	}
	return rsv1.TaskStatus{}
}

// written forgets what waited to be written of a run: it is written, or the run is gone.
func (r *RunReconciler) written(key types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.held, key)
}

// reportOnly reports whether status differs from old only in what the run's tasks report and the
// tasks scheduled: the run's phase, times and conditions are the same, and every task's
// ExecutorTask and executor are too, or newly set (scheduled: its ExecutorTask says it). Progress
// ("done/total") is counted from the tasks' phases: a report too.
func reportOnly(old, status *rsv1.RunStatus) bool {
	if old.Phase != status.Phase || status.Phase.IsFinal() || len(old.Tasks) != len(status.Tasks) {
		return false
	}
	a, b := *old, *status
	a.Tasks, b.Tasks = nil, nil
	a.Progress, b.Progress = "", ""
	if !equality.Semantic.DeepEqual(&a, &b) {
		return false
	}
	for _, ts := range status.Tasks {
		j := slices.IndexFunc(old.Tasks, func(o rsv1.TaskStatus) bool { return o.Name == ts.Name })
		if j < 0 {
			return false
		}
		o := old.Tasks[j]
		if scheduled := o.ExecutorTask == "" && ts.ExecutorTask != ""; !scheduled && (o.ExecutorTask != ts.ExecutorTask || o.Executor != ts.Executor) {
			return false
		}
	}
	return true
}

// tasksEnded reports whether a task not final in old is final in status.
func tasksEnded(old, status *rsv1.RunStatus) bool {
	return slices.ContainsFunc(status.Tasks, func(ts rsv1.TaskStatus) bool {
		return ts.Phase.IsFinal() && !taskIn(old, ts.Name).Phase.IsFinal()
	})
}

// fetchesAwaited reports whether a task of run ended on its executor and the outcome of its fetch
// is not known yet: the fetcher takes each task as it ends, so that outcome is on its way (a
// fetch that fails, or waits for its executor's backoff, is waited for FinishWait at most).
func (r *RunReconciler) fetchesAwaited(run *rsv1.Run, tasks map[string]*rsv1.ExecutorTask) bool {
	if r.Fetches == nil {
		return false
	}
	for i := range run.Status.Tasks {
		ts := &run.Status.Tasks[i]
		et := tasks[ts.Name]
		if et != nil && ts.ExecutorTask == et.Name && ts.FromRun == "" && ts.Fetched == "" && et.Status.Phase.IsFinal() {
			return true
		}
	}
	return false
}
