package controllers_test

import (
	"context"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

func TestExecutorRemovalFailsItsTasks(t *testing.T) {
	ns := newNamespace(t)
	ex := startExecutor(t, ns, "doomed")
	createRun(t, newRun(ns, "rm", task("a"), task("b", dependsOn("a", rsv1.DependOnFailure))))
	et := waitTask(t, ns, "rm", "a")
	report(t, ns, et.Name, rsv1.TaskPhaseRunning, "")
	ex.silence()
	if err := k8s.Delete(context.Background(), &rsv1.Executor{ObjectMeta: metav1.ObjectMeta{Name: "doomed", Namespace: ns}}); err != nil {
		t.Fatalf("deleting executor: %v", err)
	}
	eventually(t, 30*time.Second, "task a Failed with ExecutorRemoved", func() (bool, error) {
		ts := taskStatus(getRun(t, ns, "rm"), "a")
		return ts.Phase == rsv1.TaskPhaseFailed && ts.Reason == rsv1.ReasonExecutorRemoved, nil
	})
	// Nothing more is scheduled on the removed executor: b waits for another one.
	time.Sleep(time.Second)
	noTask(t, ns, "rm", "b")
	startExecutor(t, ns, "fresh")
	if et := waitTask(t, ns, "rm", "b"); et.Spec.Executor != "fresh" {
		t.Fatalf("b scheduled on %s, want fresh", et.Spec.Executor)
	}
	complete(t, ns, "rm", "b", rsv1.TaskPhaseSuccess)
	run := waitRunPhase(t, ns, "rm", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultFailed {
		t.Fatalf("result %s, want Failed", run.Status.Result)
	}
}

func TestSilentPermanentExecutorKeepsTasksRunning(t *testing.T) {
	ns := newNamespace(t)
	ex := startExecutor(t, ns, "quiet")
	createRun(t, newRun(ns, "quiet", task("a")))
	et := waitTask(t, ns, "quiet", "a")
	report(t, ns, et.Name, rsv1.TaskPhaseRunning, "")
	ex.silence()
	eventually(t, 30*time.Second, "executor not Ready", func() (bool, error) {
		e := &rsv1.Executor{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "quiet"}, e); err != nil {
			return false, err
		}
		c := meta.FindStatusCondition(e.Status.Conditions, rsv1.ConditionReady)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == "LeaseExpired", nil
	})
	time.Sleep(2 * time.Second)
	run := getRun(t, ns, "quiet")
	if run.Status.Phase != rsv1.RunPhaseRunning || taskStatus(run, "a").Phase != rsv1.TaskPhaseRunning {
		t.Fatalf("run %s task %s: a silent permanent executor's task must stay Running", run.Status.Phase, taskStatus(run, "a").Phase)
	}
	// It comes back and finishes the task.
	ex.heartbeat()
	report(t, ns, et.Name, rsv1.TaskPhaseSuccess, "")
	run = waitRunPhase(t, ns, "quiet", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s", run.Status.Result)
	}
}

func TestAtMostOnceAcrossManagerRestart(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	createRun(t, newRun(ns, "restart", task("a"), task("b", dependsOn("a")), task("c", dependsOn("a")), task("d", dependsOn("b"), dependsOn("c"))))
	complete(t, ns, "restart", "a", rsv1.TaskPhaseSuccess)
	b := waitTask(t, ns, "restart", "b")
	c := waitTask(t, ns, "restart", "c")
	report(t, ns, b.Name, rsv1.TaskPhaseRunning, "")

	stopManager()
	// While no manager runs, the executor goes on and finishes both.
	report(t, ns, b.Name, rsv1.TaskPhaseSuccess, "")
	report(t, ns, c.Name, rsv1.TaskPhaseSuccess, "")
	if err := startManager(); err != nil {
		t.Fatalf("restarting manager: %v", err)
	}
	complete(t, ns, "restart", "d", rsv1.TaskPhaseSuccess)
	waitRunPhase(t, ns, "restart", rsv1.RunPhaseFinished)

	var list rsv1.ExecutorTaskList
	if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, et := range list.Items {
		seen[et.Spec.TaskName]++
	}
	if len(list.Items) != 4 {
		t.Fatalf("%d executor tasks, want exactly 4: %v", len(list.Items), seen)
	}
	for _, et := range []*rsv1.ExecutorTask{b, c} {
		now := &rsv1.ExecutorTask{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(et), now); err != nil || now.UID != et.UID {
			t.Fatalf("executor task %s was replaced (err %v)", et.Name, err)
		}
	}
}
