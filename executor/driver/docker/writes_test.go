package docker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
)

// The executor's status writes per task (issue 10): a task that ends within --running-status-delay
// costs one, its final status carrying its start time; a longer one shows Running after the delay.

// executorTaskOf returns the name of the ExecutorTask of a run's task once it has one.
func executorTaskOf(t *testing.T, ns, run, task string) string {
	t.Helper()
	var name string
	h.Eventually(t, "task "+task+" of "+run+" scheduled", func() bool {
		name = e2e.TaskStatus(h.Run(t, ns, run), task).ExecutorTask
		return name != ""
	})
	return name
}

// checkOneFinalWrite checks that the ExecutorTask's status was written exactly once, final, with its
// start and end times and its step.
func checkOneFinalWrite(t *testing.T, sw *e2e.StatusWrites, et string, want rsv1.TaskPhase) {
	t.Helper()
	writes := sw.UntilFinal(t, et)
	if len(writes) != 1 {
		t.Fatalf("the executor wrote the status of a task shorter than the delay %d times (phases %v), want once: its final status", len(writes), sw.Phases(et))
	}
	st := writes[0].Status
	if st.Phase != want || st.StartTime == nil || st.EndTime == nil || st.EndTime.Before(st.StartTime) {
		t.Fatalf("the one status write: phase %s, start %v, end %v; want %s with a start time no later than the end", st.Phase, st.StartTime, st.EndTime, want)
	}
	if len(st.Steps) != 1 || st.Steps[0].Phase != rsv1.StepPhaseSuccess || st.Steps[0].StartTime == nil {
		t.Fatalf("the one status write's steps: %+v, want the step Success with its times", st.Steps)
	}
}

// TestAShortTaskCostsOneStatusWrite: a task that ends before --running-status-delay gets one status
// write from its executor, its final one; it is never recorded Running.
func TestAShortTaskCostsOneStatusWrite(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	sw := e2e.WatchStatusWrites(t, env.Config, ns)
	// A delay well above the task's life on a loaded machine: what is counted is the mechanism, not
	// the default's margin (TestALongTaskShowsRunningWithinTheDelay checks the default).
	startExecutor(t, ns, "docker-1", "--running-status-delay", "10s")
	h.Create(t, ns, "short", e2e.ShellTask("short", "true"))
	if run := h.WaitRun(t, ns, "short", rsv1.RunPhaseFinished); run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s: %+v", run.Status.Result, run.Status.Tasks)
	}
	checkOneFinalWrite(t, sw, executorTaskOf(t, ns, "short", "short"), rsv1.TaskPhaseSuccess)
	waitNoContainers(t, "docker-1")
}

// TestALongTaskShowsRunningWithinTheDelay: with the default delay (1s), a task that runs longer is
// recorded Running, with its start time and steps, about a second after its container started, and
// long before it ends.
func TestALongTaskShowsRunningWithinTheDelay(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	sw := e2e.WatchStatusWrites(t, env.Config, ns)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	starts := countStarts(ctx, "docker-1")
	startExecutor(t, ns, "docker-1")
	h.Create(t, ns, "long", e2e.ShellTask("long", "sleep 8"))
	et := executorTaskOf(t, ns, "long", "long")
	var started time.Time
	e2e.Eventually(t, time.Minute, "the task's container started", func() bool {
		started = time.Now()
		return len(starts()) == 1
	})
	e2e.Eventually(t, 5*time.Second, "the task recorded Running", func() bool { return len(sw.Of(et)) > 0 })
	first := sw.Of(et)[0]
	if first.Status.Phase != rsv1.TaskPhaseRunning || first.Status.StartTime == nil || len(first.Status.Steps) != 1 {
		t.Fatalf("first status write %+v, want Running with its start time and steps", first.Status)
	}
	// The container start was seen within 100ms (the poll); the default delay is 1s, the rest is slack
	// for a loaded machine. The task runs 8s.
	if after := first.Seen.Sub(started); after > 3*time.Second {
		t.Fatalf("Running recorded %v after the container started, want about the delay (1s)", after.Round(time.Millisecond))
	}
	if run := h.WaitRun(t, ns, "long", rsv1.RunPhaseFinished); run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s: %+v", run.Status.Result, run.Status.Tasks)
	}
	last := sw.Of(et)
	if st := last[len(last)-1].Status; st.Phase != rsv1.TaskPhaseSuccess || !st.StartTime.Equal(first.Status.StartTime) {
		t.Fatalf("final status %s starting %v, want Success with the start time recorded Running (%v)", st.Phase, st.StartTime, first.Status.StartTime)
	}
	waitNoContainers(t, "docker-1")
}

// TestExecutorKilledBeforeAnyStatusWriteAdopts: an executor killed after creating and starting a
// task's containers and before writing anything of it (the task still NotStarted in the apiserver)
// is restarted: it finds the containers by the task's labels, adopts them and follows the task to
// its end. The container started once, the step ran once.
func TestExecutorKilledBeforeAnyStatusWriteAdopts(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	starts := countStarts(ctx, "phoenix")
	sw := e2e.WatchStatusWrites(t, env.Config, ns)
	// A delay longer than the task: nothing is written before the kill.
	p := startExecutor(t, ns, "phoenix", "--running-status-delay", "1m")
	h.Create(t, ns, "t", e2e.ShellTask("t", "echo begin; sleep 5; echo ran-once"))
	et := executorTaskOf(t, ns, "t", "t")
	e2e.Eventually(t, time.Minute, "the task's container started", func() bool { return len(starts()) == 1 })
	p.Kill()
	got := &rsv1.ExecutorTask{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: et}, got); err != nil {
		t.Fatal(err)
	}
	if got.Status.Phase != "" || len(sw.Of(et)) != 0 {
		t.Fatalf("killed with its container running, the task's status was written (%v): the scenario is not what it claims", sw.Phases(et))
	}
	p.Start()
	finishedOnce(t, ns, "t", "ran-once")
	time.Sleep(time.Second) // let the event stream catch up
	for uid, n := range starts() {
		if n != 1 {
			t.Fatalf("task %s started %d times", uid, n)
		}
	}
	if w := sw.Of(et); len(w) != 1 || w[0].Status.Phase != rsv1.TaskPhaseSuccess {
		t.Fatalf("status writes %v, want one: the final Success", sw.Phases(et))
	}
	waitNoContainers(t, "phoenix")
	p.Kill()
	if out := p.Output(); !strings.Contains(out, "adopting a task started before a restart") {
		t.Fatalf("the restarted executor did not adopt the task it had prepared (log:\n%s)", out)
	}
}
