package controllers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
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
	eventually(t, 30*time.Second, "the run showing task a Running", func() (bool, error) {
		return taskStatus(getRun(t, ns, "quiet"), "a").Phase == rsv1.TaskPhaseRunning, nil
	})
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

// withFinalizer registers the executor as real executors do, with the finalizer only it releases.
func withFinalizer() executorOpt {
	return func(e *rsv1.Executor) { e.Finalizers = []string{rsv1.FinalizerExecutorTasks} }
}

// TestDeletingAnExecutorWaitsForItsRelease: an Executor being deleted keeps its tasks unfinished
// until the finalizer is released (the executor confirmed its containers gone); with
// runservice.dev/force-remove the manager releases it itself and says so in a Warning Event.
func TestDeletingAnExecutorWaitsForItsRelease(t *testing.T) {
	ctx := context.Background()
	nss := map[string]string{} // one namespace each: each run goes to its executor
	for _, name := range []string{"confirms", "lost"} {
		ns := newNamespace(t)
		nss[name] = ns
		ex := startExecutor(t, ns, name, withFinalizer())
		createRun(t, newRun(ns, name, task("a")))
		report(t, ns, waitTask(t, ns, name, "a").Name, rsv1.TaskPhaseRunning, "")
		eventually(t, 30*time.Second, "the run showing task a Running", func() (bool, error) {
			return taskStatus(getRun(t, ns, name), "a").Phase == rsv1.TaskPhaseRunning, nil
		})
		ex.silence()
	}
	if err := k8s.Delete(ctx, &rsv1.Executor{ObjectMeta: metav1.ObjectMeta{Name: "confirms", Namespace: nss["confirms"]}}); err != nil {
		t.Fatal(err)
	}
	// An administrator gives up on the host of "lost": annotated, then deleted.
	lost := &rsv1.Executor{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: nss["lost"], Name: "lost"}, lost); err != nil {
		t.Fatal(err)
	}
	lost.Annotations = map[string]string{rsv1.AnnotationForceRemove: "true"}
	if err := k8s.Update(ctx, lost); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Delete(ctx, lost); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the force-removed executor's task Failed with ExecutorRemoved", func() (bool, error) {
		ts := taskStatus(getRun(t, nss["lost"], "lost"), "a")
		return ts.Phase == rsv1.TaskPhaseFailed && ts.Reason == rsv1.ReasonExecutorRemoved, nil
	})
	// The other one, deleted first, still waits for its executor's confirmation.
	if ts := taskStatus(getRun(t, nss["confirms"], "confirms"), "a"); ts.Phase != rsv1.TaskPhaseRunning {
		t.Fatalf("the task of an executor being deleted is %s (%s) before the executor confirmed its containers gone", ts.Phase, ts.Reason)
	}
	eventually(t, 30*time.Second, "a Warning Event saying who answers for the containers", func() (bool, error) {
		var events eventsv1.EventList
		if err := k8s.List(ctx, &events, client.InNamespace(nss["lost"])); err != nil {
			return false, err
		}
		for _, e := range events.Items {
			if e.Regarding.Name == "lost" && e.Reason == "ForceRemoved" && e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, "answers for those containers") {
				return true, nil
			}
		}
		return false, nil
	})
	ex := &rsv1.Executor{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: nss["confirms"], Name: "confirms"}, ex); err != nil {
		t.Fatal(err)
	}
	ex.Finalizers = nil // what the executor does once its containers are gone
	if err := k8s.Update(ctx, ex); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the released executor's task Failed with ExecutorRemoved", func() (bool, error) {
		ts := taskStatus(getRun(t, nss["confirms"], "confirms"), "a")
		return ts.Phase == rsv1.TaskPhaseFailed && ts.Reason == rsv1.ReasonExecutorRemoved, nil
	})
}
