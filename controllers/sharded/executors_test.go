package sharded_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/testenv"
)

// TestRemovedExecutorFailsTasksOnEveryShard: an executor runs tasks of runs owned by two shards,
// neither of which caches the other's tasks. Deleted, it takes all of them with it: every task
// fails with ExecutorRemoved, each folded by its own run's shard, and the runs end Failed.
func TestRemovedExecutorFailsTasksOnEveryShard(t *testing.T) {
	ns := newNamespace(t)
	testenv.StartFakeExecutor(t, k8s, ns, "doomed")
	runs := append(namesOn(ns, "r", "shard-b", 2), namesOn(ns, "r", "shard-c", 2)...)
	for _, name := range runs {
		createRun(t, newRun(ns, name, "", false))
	}
	for _, name := range runs {
		testenv.ReportTask(t, k8s, ns, name, "only", rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseRunning, StartTime: ptrNow()})
	}
	eventually(t, 30*time.Second, "every task running", func() (bool, error) {
		for _, name := range runs {
			if st := taskOf(t, ns, name); st.Phase != rsv1.TaskPhaseRunning {
				return false, fmt.Errorf("run %s: task %s", name, st.Phase)
			}
		}
		return true, nil
	})
	if err := k8s.Delete(context.Background(), &rsv1.Executor{ObjectMeta: metav1.ObjectMeta{Name: "doomed", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "every task failed with ExecutorRemoved", func() (bool, error) {
		for _, name := range runs {
			run := &rsv1.Run{}
			if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, run); err != nil {
				return false, err
			}
			st := taskOf(t, ns, name)
			if st.Phase != rsv1.TaskPhaseFailed || st.Reason != rsv1.ReasonExecutorRemoved || run.Status.Phase != rsv1.RunPhaseFinished || run.Status.Result != rsv1.RunResultFailed {
				return false, fmt.Errorf("run %s (shard %s) %s/%s: task %s %s", name, run.Labels[rsv1.LabelShard], run.Status.Phase, run.Status.Result, st.Phase, st.Reason)
			}
		}
		return true, nil
	})
}

func taskOf(t *testing.T, ns, run string) rsv1.TaskStatus {
	t.Helper()
	r := &rsv1.Run{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: run}, r); err != nil {
		t.Fatal(err)
	}
	for _, ts := range r.Status.Tasks {
		if ts.Name == "only" {
			return ts
		}
	}
	return rsv1.TaskStatus{}
}

func ptrNow() *metav1.Time {
	now := metav1.Now()
	return &now
}

// TestActiveTasksAreTheExecutorsCount: a sharded manager's cache holds only its shard's tasks, so
// the Executor's status.activeTasks is what the executor counts and writes on its Lease.
func TestActiveTasksAreTheExecutorsCount(t *testing.T) {
	ns := newNamespace(t)
	testenv.StartFakeExecutor(t, k8s, ns, "busy")
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "busy", Namespace: ns}}
	patch := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"`+rsv1.AnnotationActiveTasks+`":"5"}}}`))
	if err := k8s.Patch(context.Background(), lease, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "activeTasks 5", func() (bool, error) {
		ex := &rsv1.Executor{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "busy"}, ex); err != nil {
			return false, err
		}
		return ex.Status.ActiveTasks == 5, fmt.Errorf("activeTasks %d", ex.Status.ActiveTasks)
	})
}
