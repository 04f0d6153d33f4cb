package controllers

import (
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
}

// deferWrite says how long the write of a run's new status may wait, 0 to write now. What the run
// decided (tasks scheduled or stopped, its phase, conditions) is written at once: an ExecutorTask
// created must be in the status before anything else happens. What its tasks report waits, so
// that the next write carries it, or a burst of reports is written once:
//   - a task's start, its steps' progress and a fetch's outcome, until StartDelay after the first
//     of them was seen: a task that ends sooner is recorded Running in the run only by the
//     write of its end (the ExecutorTask says Running meanwhile), as the executors'
//     --running-status-delay does for the ExecutorTask;
//   - a task's end that decides nothing (a sibling still runs), until ProgressDelay after it;
//
// and the run's end waits, up to FinishWait, while fetchesAwaited: the outcomes of its tasks'
// fetches then ride on that last write instead of a write of their own after it.
func (r *RunReconciler) deferWrite(key types.NamespacedName, old, status *rsv1.RunStatus, fetchesAwaited bool) time.Duration {
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
	if h == nil {
		h = &heldWrite{}
		r.held[key] = h
	}
	since := func(t *time.Time) time.Time {
		if t.IsZero() {
			*t = now
		}
		return *t
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
	}
	return until.Sub(now)
}

// written forgets what waited to be written of a run: it is written, or the run is gone.
func (r *RunReconciler) written(key types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.held, key)
}

// reportOnly reports whether status differs from old only in what the run's tasks report: the run's
// phase, times and conditions are the same, and so is every task's ExecutorTask and executor (what
// scheduling decided). Progress ("done/total") is counted from the tasks' phases: a report too.
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
		if j < 0 || old.Tasks[j].ExecutorTask != ts.ExecutorTask || old.Tasks[j].Executor != ts.Executor {
			return false
		}
	}
	return true
}

// tasksEnded reports whether a task not final in old is final in status.
func tasksEnded(old, status *rsv1.RunStatus) bool {
	for _, ts := range status.Tasks {
		j := slices.IndexFunc(old.Tasks, func(o rsv1.TaskStatus) bool { return o.Name == ts.Name })
		if ts.Phase.IsFinal() && (j < 0 || !old.Tasks[j].Phase.IsFinal()) {
			return true
		}
	}
	return false
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
