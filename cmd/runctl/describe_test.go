package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// TestDescribeRestartedRun: the tree of a run restarted from failed tasks, as the manager will
// write its status: kept tasks say the run they are from, a running task's duration runs to now,
// a task after several parents under conditions names them, a task lost with its executor gives
// the manager's message, and a run held back gives its condition.
func TestDescribeRestartedRun(t *testing.T) {
	at := func(s int) *metav1.Time { m := metav1.NewTime(epoch.Add(time.Duration(s) * time.Second)); return &m }
	run := &rsv1.Run{
		ObjectMeta: metav1.ObjectMeta{Name: "nightly-x7k2p", Namespace: "ci", CreationTimestamp: *at(0)},
		Spec: rsv1.RunSpec{
			ChangeGroups: []string{"main", "release"},
			RestartFrom:  &rsv1.RunRestart{Run: "nightly", UID: "u1", FailedTasksOnly: true},
			Stop:         ptr.To(true),
			Tasks: []rsv1.Task{
				task("fetch"), task("lint", after("fetch")), task("unit", after("fetch")),
				task("report", after("lint", rsv1.DependOnSuccess, rsv1.DependOnFailure), after("unit", rsv1.DependOnFailure)),
				task("e2e", after("unit")), task("lost"),
			},
		},
		Status: rsv1.RunStatus{
			Phase: rsv1.RunPhaseRunning, Result: rsv1.RunResultStopped, Progress: "3/6", StartTime: at(1),
			RestartedFrom: &rsv1.RunReference{Name: "nightly", UID: "u1"},
			Conditions: []metav1.Condition{
				{Type: "Admitted", Status: metav1.ConditionTrue, Reason: "Admitted", Message: "the run may start"},
				{Type: "Scheduled", Status: metav1.ConditionFalse, Reason: "NoExecutor", Message: "no executor matches task e2e"},
			},
			Tasks: []rsv1.TaskStatus{
				{Name: "fetch", Phase: rsv1.TaskPhaseSuccess, Executor: "docker-1", StartTime: at(-600), EndTime: at(-590), FromRun: "nightly"},
				{Name: "lint", Phase: rsv1.TaskPhaseSuccess, Executor: "docker-2", StartTime: at(-590), EndTime: at(-500), FromRun: "nightly"},
				{Name: "unit", Phase: rsv1.TaskPhaseRunning, Executor: "docker-1", StartTime: at(2)},
				{Name: "report", Phase: rsv1.TaskPhaseNotStarted},
				{Name: "e2e", Phase: rsv1.TaskPhaseNotStarted},
				{Name: "lost", Phase: rsv1.TaskPhaseFailed, Executor: "k8s-1", StartTime: at(2), EndTime: at(3), Reason: "ExecutorRemoved", Message: "executor k8s-1 was removed"},
			},
		},
	}
	var out bytes.Buffer
	if err := describe(&out, run, false, epoch.Add(2*time.Minute+2*time.Second)); err != nil {
		t.Fatal(err)
	}
	golden(t, "describe-restarted", out.String())
}

// TestTreeShowsEveryTask: tasks in a dependency cycle (which admission refuses) are still listed.
func TestTreeShowsEveryTask(t *testing.T) {
	run := &rsv1.Run{Spec: rsv1.RunSpec{Tasks: []rsv1.Task{task("a"), task("b", after("c")), task("c", after("b"))}}}
	var names []string
	for _, l := range tree(run) {
		names = append(names, l.prefix+l.task.Name)
	}
	if strings.Join(names, ",") != "a,b,c" {
		t.Errorf("tree: %q", names)
	}
}
