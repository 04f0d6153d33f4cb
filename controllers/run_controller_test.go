package controllers_test

import (
	"testing"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
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
