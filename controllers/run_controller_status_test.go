package controllers

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// TestAnEndThatSchedulesWaitsLikeAnyEnd: a task's end that makes others ready, scheduled (their
// ExecutorTasks say it), may wait ProgressDelay for the run's next write, as an end that decides
// nothing does; the tasks scheduled are remembered until the write, for this run's uid only. A
// change of the run's phase, or of where a task was scheduled, is still written at once.
func TestAnEndThatSchedulesWaitsLikeAnyEnd(t *testing.T) {
	r := &RunReconciler{Options: Options{StartDelay: 5 * time.Second, ProgressDelay: time.Second, FinishWait: 300 * time.Millisecond}}
	key := types.NamespacedName{Namespace: "ns", Name: "run"}
	running := func(tasks ...rsv1.TaskStatus) *rsv1.RunStatus {
		return &rsv1.RunStatus{Phase: rsv1.RunPhaseRunning, Tasks: tasks}
	}
	a := rsv1.TaskStatus{Name: "a", Phase: rsv1.TaskPhaseRunning, ExecutorTask: "run-a", Executor: "ex"}
	aDone := a
	aDone.Phase = rsv1.TaskPhaseSuccess
	b := rsv1.TaskStatus{Name: "b", Phase: rsv1.TaskPhaseNotStarted}
	bScheduled := b
	bScheduled.ExecutorTask, bScheduled.Executor = "run-b", "ex"

	wait := r.deferWrite(key, "uid", running(a, b), running(aDone, bScheduled), false)
	if wait <= 0 || wait > time.Second {
		t.Fatalf("a's end with b scheduled waits %s, want up to ProgressDelay (1s)", wait)
	}
	if got := r.scheduledUnwritten(key, "uid")["b"]; got.executorTask != "run-b" || got.executor != "ex" {
		t.Fatalf("b scheduled is remembered as %+v until the write", got)
	}
	if got := r.scheduledUnwritten(key, "another-uid"); got != nil {
		t.Fatalf("a run created again under the name is told %v scheduled, its predecessor's", got)
	}
	r.written(key)
	if got := r.scheduledUnwritten(key, "uid"); got != nil {
		t.Fatalf("written, the run still remembers %v scheduled", got)
	}

	// A task scheduled with no task ending (an approval) waits no longer than an end.
	if wait := r.deferWrite(key, "uid", running(aDone, b), running(aDone, bScheduled), false); wait <= 0 || wait > time.Second {
		t.Fatalf("b scheduled alone waits %s, want up to ProgressDelay (1s)", wait)
	}
	r.written(key)

	bSkipped := b
	bSkipped.Phase = rsv1.TaskPhaseSkipped
	for name, c := range map[string]struct{ old, new *rsv1.RunStatus }{
		"the run starts": {&rsv1.RunStatus{Phase: rsv1.RunPhaseQueued, Tasks: []rsv1.TaskStatus{b}}, running(bScheduled)},
		"the run ends":   {running(aDone, b), &rsv1.RunStatus{Phase: rsv1.RunPhaseFinished, Tasks: []rsv1.TaskStatus{aDone, bSkipped}}},
		"a task moves to another executor": {running(bScheduled), func() *rsv1.RunStatus {
			moved := bScheduled
			moved.Executor = "other"
			return running(moved)
		}()},
	} {
		if wait := r.deferWrite(key, "uid", c.old, c.new, false); wait != 0 {
			t.Errorf("%s: waits %s, want written at once", name, wait)
		}
	}
}
