package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/controllers"
)

func TestDiamondRunsInOrder(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	createRun(t, newRun(ns, "diamond",
		task("a"),
		task("b", dependsOn("a")),
		task("c", dependsOn("a")),
		task("d", dependsOn("b"), dependsOn("c")),
	))
	waitRunPhase(t, ns, "diamond", rsv1.RunPhaseRunning)
	complete(t, ns, "diamond", "a", rsv1.TaskPhaseSuccess)
	noTask(t, ns, "diamond", "d")
	complete(t, ns, "diamond", "b", rsv1.TaskPhaseSuccess)
	waitTask(t, ns, "diamond", "c")
	noTask(t, ns, "diamond", "d")
	complete(t, ns, "diamond", "c", rsv1.TaskPhaseSuccess)
	complete(t, ns, "diamond", "d", rsv1.TaskPhaseSuccess)
	run := waitRunPhase(t, ns, "diamond", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultSuccess || run.Status.Progress != "4/4" {
		t.Fatalf("run result %s progress %s, want Success 4/4", run.Status.Result, run.Status.Progress)
	}
}

func TestWideFanOutFanIn(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	startExecutor(t, ns, "ex2")
	tasks := []rsv1.Task{task("start")}
	end := task("end")
	for i := range 50 {
		name := fmt.Sprintf("mid-%02d", i)
		tasks = append(tasks, task(name, dependsOn("start")))
		end.Depends = append(end.Depends, rsv1.TaskDependency{Task: name})
	}
	tasks = append(tasks, end)
	createRun(t, newRun(ns, "fan", tasks...))
	complete(t, ns, "fan", "start", rsv1.TaskPhaseSuccess)
	for i := range 50 {
		noTask(t, ns, "fan", "end")
		complete(t, ns, "fan", fmt.Sprintf("mid-%02d", i), rsv1.TaskPhaseSuccess)
	}
	complete(t, ns, "fan", "end", rsv1.TaskPhaseSuccess)
	run := waitRunPhase(t, ns, "fan", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultSuccess || run.Status.Progress != "52/52" {
		t.Fatalf("result %s progress %s, want Success 52/52", run.Status.Result, run.Status.Progress)
	}
	// The 50 middle tasks were spread over both executors (least loaded first).
	perExecutor := map[string]int{}
	for _, ts := range run.Status.Tasks {
		perExecutor[ts.Executor]++
	}
	if perExecutor["ex1"] < 10 || perExecutor["ex2"] < 10 {
		t.Fatalf("tasks per executor %v, want both used", perExecutor)
	}
}

func TestDependConditions(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	// a fails: b runs (OnFailure), c is skipped (OnSuccess), d runs (OnSkipped of c),
	// e is skipped through c (OnSuccess of a skipped task), f runs (OnSuccess or OnFailure).
	createRun(t, newRun(ns, "conds",
		task("a"),
		task("b", dependsOn("a", rsv1.DependOnFailure)),
		task("c", dependsOn("a")),
		task("d", dependsOn("c", rsv1.DependOnSkipped)),
		task("e", dependsOn("c")),
		task("f", dependsOn("a", rsv1.DependOnSuccess, rsv1.DependOnFailure)),
	))
	complete(t, ns, "conds", "a", rsv1.TaskPhaseFailed)
	eventually(t, 30*time.Second, "result Failed while tasks still run", func() (bool, error) {
		run := getRun(t, ns, "conds")
		return run.Status.Result == rsv1.RunResultFailed && run.Status.Phase == rsv1.RunPhaseRunning, nil
	})
	complete(t, ns, "conds", "b", rsv1.TaskPhaseSuccess)
	complete(t, ns, "conds", "d", rsv1.TaskPhaseSuccess)
	complete(t, ns, "conds", "f", rsv1.TaskPhaseSuccess)
	run := waitRunPhase(t, ns, "conds", rsv1.RunPhaseFinished)
	want := map[string]rsv1.TaskPhase{"a": "Failed", "b": "Success", "c": "Skipped", "d": "Success", "e": "Skipped", "f": "Success"}
	for name, phase := range want {
		if got := taskStatus(run, name).Phase; got != phase {
			t.Errorf("task %s is %s, want %s", name, got, phase)
		}
	}
	noTask(t, ns, "conds", "c")
	noTask(t, ns, "conds", "e")
	if run.Status.Result != rsv1.RunResultFailed {
		t.Fatalf("result %s, want Failed", run.Status.Result)
	}
	if msg := taskStatus(run, "c").Message; !strings.Contains(msg, `"a" is Failed`) {
		t.Fatalf("skip message %q does not say why", msg)
	}
}

func TestIgnoreFailure(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	createRun(t, newRun(ns, "ign",
		task("lint", ignoreFailure()),
		task("build"),
		task("after-lint", dependsOn("lint")),
	))
	complete(t, ns, "ign", "lint", rsv1.TaskPhaseFailed)
	complete(t, ns, "ign", "build", rsv1.TaskPhaseSuccess)
	run := waitRunPhase(t, ns, "ign", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s, want Success: an ignored failure does not fail the run", run.Status.Result)
	}
	if got := taskStatus(run, "after-lint").Phase; got != rsv1.TaskPhaseSkipped {
		t.Fatalf("after-lint is %s, want Skipped", got)
	}
}

// TestOnlyARunThatDidNotSucceedHasAFinishEvent: a run's end is an event only when the run did not
// succeed (a Warning). A success is said by the run's phase, result and labels; its event was one
// more apiserver write per run (issue 10).
func TestOnlyARunThatDidNotSucceedHasAFinishEvent(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	createRun(t, newRun(ns, "ok", task("a")))
	createRun(t, newRun(ns, "bad", task("a")))
	complete(t, ns, "ok", "a", rsv1.TaskPhaseSuccess)
	waitRunPhase(t, ns, "ok", rsv1.RunPhaseFinished)
	complete(t, ns, "bad", "a", rsv1.TaskPhaseFailed)
	waitRunPhase(t, ns, "bad", rsv1.RunPhaseFinished)
	eventually(t, 30*time.Second, "the failed run's Warning event", func() (bool, error) {
		evs := events(t, ns, "bad", string(rsv1.RunPhaseFinished))
		return len(evs) == 1 && evs[0].Type == corev1.EventTypeWarning, nil
	})
	// The recorder sends in order: the successful run's event, had there been one, is there by now.
	if evs := events(t, ns, "ok", string(rsv1.RunPhaseFinished)); len(evs) != 0 {
		t.Fatalf("the successful run has %d Finished events (%s: %s), want none", len(evs), evs[0].Type, evs[0].Note)
	}
}

func TestApproval(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	createRun(t, newRun(ns, "appr", task("build"), task("deploy", dependsOn("build"), needsApproval())))
	complete(t, ns, "appr", "build", rsv1.TaskPhaseSuccess)
	eventually(t, 30*time.Second, "deploy waiting for approval", func() (bool, error) {
		return taskStatus(getRun(t, ns, "appr"), "deploy").WaitingApproval, nil
	})
	time.Sleep(time.Second)
	noTask(t, ns, "appr", "deploy")
	updateRun(t, ns, "appr", func(r *rsv1.Run) { r.Spec.ApprovedTasks = []string{"deploy"} })
	complete(t, ns, "appr", "deploy", rsv1.TaskPhaseSuccess)
	run := waitRunPhase(t, ns, "appr", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultSuccess || taskStatus(run, "deploy").WaitingApproval {
		t.Fatalf("result %s, deploy %+v", run.Status.Result, taskStatus(run, "deploy"))
	}
}

func TestStop(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	createRun(t, newRun(ns, "stop", task("a"), task("b", dependsOn("a")), task("c")))
	et := waitTask(t, ns, "stop", "a")
	report(t, ns, et.Name, rsv1.TaskPhaseRunning, "")
	complete(t, ns, "stop", "c", rsv1.TaskPhaseSuccess)
	updateRun(t, ns, "stop", func(r *rsv1.Run) { r.Spec.Stop = ptr.To(true) })
	eventually(t, 30*time.Second, "stop propagated to the running ExecutorTask", func() (bool, error) {
		err := k8s.Get(context.Background(), client.ObjectKeyFromObject(et), et)
		return err == nil && et.Spec.Stop, err
	})
	// The run has its result but is not Finished while the executor still runs the task. (The same
	// reconcile stops the task, then writes the run's status: wait for the write.)
	var run *rsv1.Run
	eventually(t, 30*time.Second, "the run's result Stopped", func() (bool, error) {
		run = getRun(t, ns, "stop")
		return run.Status.Result == rsv1.RunResultStopped, nil
	})
	if run.Status.Phase != rsv1.RunPhaseRunning {
		t.Fatalf("phase %s, want Running while task a still runs", run.Status.Phase)
	}
	report(t, ns, et.Name, rsv1.TaskPhaseStopped, "stopped")
	run = waitRunPhase(t, ns, "stop", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultStopped {
		t.Fatalf("result %s, want Stopped", run.Status.Result)
	}
	for name, phase := range map[string]rsv1.TaskPhase{"a": "Stopped", "b": "Cancelled", "c": "Success"} {
		if got := taskStatus(run, name).Phase; got != phase {
			t.Errorf("task %s is %s, want %s", name, got, phase)
		}
	}
	noTask(t, ns, "stop", "b")
}

func TestStopQueuedRunCancelsIt(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	run := newRun(ns, "held", task("a"))
	run.Spec.Suspend = ptr.To(true)
	createRun(t, run)
	waitRunPhase(t, ns, "held", rsv1.RunPhaseQueued)
	updateRun(t, ns, "held", func(r *rsv1.Run) { r.Spec.Stop = ptr.To(true) })
	run = waitRunPhase(t, ns, "held", rsv1.RunPhaseCancelled)
	if run.Status.Result != rsv1.RunResultStopped || taskStatus(run, "a").Phase != rsv1.TaskPhaseCancelled {
		t.Fatalf("result %s task %s", run.Status.Result, taskStatus(run, "a").Phase)
	}
	noTask(t, ns, "held", "a")
}

func TestSuspend(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	run := newRun(ns, "susp", task("a"))
	run.Spec.Suspend = ptr.To(true)
	createRun(t, run)
	run = waitRunPhase(t, ns, "susp", rsv1.RunPhaseQueued)
	if c := meta.FindStatusCondition(run.Status.Conditions, controllers.ConditionAdmitted); c == nil || c.Reason != "Suspended" {
		t.Fatalf("Admitted condition %+v, want reason Suspended", c)
	}
	time.Sleep(time.Second)
	noTask(t, ns, "susp", "a")
	updateRun(t, ns, "susp", func(r *rsv1.Run) { r.Spec.Suspend = ptr.To(false) })
	complete(t, ns, "susp", "a", rsv1.TaskPhaseSuccess)
	waitRunPhase(t, ns, "susp", rsv1.RunPhaseFinished)
}

func TestExecutorSelectionAndNoExecutor(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "plain")
	sel := task("fast", func(t *rsv1.Task) {
		t.ExecutorSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "fast"}}
	})
	createRun(t, newRun(ns, "sel", sel))
	eventually(t, 30*time.Second, "Scheduled=False with a reason", func() (bool, error) {
		c := meta.FindStatusCondition(getRun(t, ns, "sel").Status.Conditions, controllers.ConditionScheduled)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == rsv1.ReasonNoExecutor &&
			strings.Contains(c.Message, "executorSelector does not match"), nil
	})
	noTask(t, ns, "sel", "fast")
	startExecutor(t, ns, "fast-1", func(e *rsv1.Executor) { e.Labels = map[string]string{"pool": "fast"} })
	if et := waitTask(t, ns, "sel", "fast"); et.Spec.Executor != "fast-1" {
		t.Fatalf("fast task on %s, want fast-1", et.Spec.Executor)
	}
}

// TestUnschedulableExecutor: a cordoned (or draining) executor gets no new tasks; uncordoned, it does.
func TestUnschedulableExecutor(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "cordoned", func(e *rsv1.Executor) { e.Spec.Unschedulable = true })
	createRun(t, newRun(ns, "wait", task("a")))
	eventually(t, 30*time.Second, "Scheduled=False naming the cordon", func() (bool, error) {
		c := meta.FindStatusCondition(getRun(t, ns, "wait").Status.Conditions, controllers.ConditionScheduled)
		return c != nil && c.Status == metav1.ConditionFalse && strings.Contains(c.Message, "unschedulable"), nil
	})
	noTask(t, ns, "wait", "a")
	ex := &rsv1.Executor{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "cordoned"}, ex); err != nil {
		t.Fatal(err)
	}
	ex.Spec.Unschedulable = false
	if err := k8s.Update(context.Background(), ex); err != nil {
		t.Fatal(err)
	}
	if et := waitTask(t, ns, "wait", "a"); et.Spec.Executor != "cordoned" {
		t.Fatalf("task on %s, want the uncordoned executor", et.Spec.Executor)
	}
}

// TestPrivilegedTasks: a privileged task goes to an executor that allows privileged containers; when
// none does, it goes to one that refuses it, where it fails with a clear message, instead of waiting.
func TestPrivilegedTasks(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "plain")
	priv := func(name string) rsv1.Task {
		return task(name, func(t *rsv1.Task) { t.Containers[0].Privileged = ptr.To(true) })
	}
	createRun(t, newRun(ns, "refused", priv("priv")))
	if et := waitTask(t, ns, "refused", "priv"); et.Spec.Executor != "plain" {
		t.Fatalf("privileged task on %s, want the only executor, plain", et.Spec.Executor)
	}
	startExecutor(t, ns, "priv-1", func(e *rsv1.Executor) { e.Spec.AllowPrivilegedContainers = true })
	createRun(t, newRun(ns, "allowed", priv("priv")))
	if et := waitTask(t, ns, "allowed", "priv"); et.Spec.Executor != "priv-1" {
		t.Fatalf("privileged task on %s, want priv-1 which allows it", et.Spec.Executor)
	}
}

func TestActiveTasksLimit(t *testing.T) {
	ns := newNamespace(t)
	ex := startExecutor(t, ns, "small", withLimit(2))
	var tasks []rsv1.Task
	for i := range 6 {
		tasks = append(tasks, task(fmt.Sprintf("t%d", i)))
	}
	createRun(t, newRun(ns, "lim", tasks...))
	for done := 0; done < 6; {
		var active []rsv1.ExecutorTask
		eventually(t, 30*time.Second, "tasks scheduled up to the limit", func() (bool, error) {
			active = active[:0]
			for _, et := range ex.tasks() {
				if !et.Status.Phase.IsFinal() {
					active = append(active, et)
				}
			}
			if want := min(2, 6-done); len(active) != want {
				return false, fmt.Errorf("%d active tasks, want %d", len(active), want)
			}
			return true, nil
		})
		time.Sleep(300 * time.Millisecond) // a wrongly over-scheduled task would show up meanwhile
		if n := countActive(ex.tasks()); n > 2 {
			t.Fatalf("%d active tasks on an executor limited to 2", n)
		}
		for _, et := range active {
			report(t, ns, et.Name, rsv1.TaskPhaseSuccess, "")
			done++
		}
	}
	waitRunPhase(t, ns, "lim", rsv1.RunPhaseFinished)
}

func countActive(ets []rsv1.ExecutorTask) int {
	n := 0
	for _, et := range ets {
		if !et.Status.Phase.IsFinal() {
			n++
		}
	}
	return n
}
