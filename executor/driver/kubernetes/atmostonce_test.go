package kubernetes_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/testenv"
)

// At most once when pods linger: a task of a removed executor becomes final only once its pod is
// known gone, reaping never stalls the reaper's own heartbeat, and an executor whose Lease lapsed
// starts nothing.

// runOnOneMember creates the partitioned run (its pods never end, their deletion is never confirmed)
// with one task, on the only member, and returns the task's pod once it runs.
func runOnOneMember(t *testing.T, ns, member string) *corev1.Pod {
	t.Helper()
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: testenv.PartitionedRun, Namespace: ns}}
	run.Spec.Tasks = []rsv1.Task{task("t")}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	var pod *corev1.Pod
	e2e.Eventually(t, time.Minute, "the task's pod running on "+member, func() bool {
		pods, err := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: rsv1.LabelExecutor + "=" + member})
		if err != nil || len(pods.Items) != 1 || pods.Items[0].Status.Phase != corev1.PodRunning {
			return false
		}
		pod = &pods.Items[0]
		return true
	})
	return pod
}

// taskUnfinished fails once the partitioned run's task is final or the run moved on.
func taskUnfinished(ns string) func() error {
	return func() error {
		run := &rsv1.Run{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: testenv.PartitionedRun}, run); err != nil {
			return err
		}
		if ts := run.Status.Tasks[0]; ts.Phase.IsFinal() || run.Status.Phase.IsFinal() {
			return fmt.Errorf("the task became %s (%s: %s), the run %s, while its pod may still run on its node", ts.Phase, ts.Reason, ts.Message, run.Status.Phase)
		}
		return nil
	}
}

// forceDelete removes a pod's object at once, as its kubelet does once it stopped the containers.
func forceDelete(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	err := kube.CoreV1().Pods(pod.Namespace).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if client.IgnoreNotFound(err) != nil {
		t.Fatal(err)
	}
}

// waitExecutorRemoved waits for the partitioned run to finish with its task Failed/ExecutorRemoved.
func waitExecutorRemoved(t *testing.T, ns string) {
	t.Helper()
	e2e.Eventually(t, time.Minute, "the run finished", func() bool {
		return getRun(t, ns, testenv.PartitionedRun).Status.Phase == rsv1.RunPhaseFinished
	})
	if ts := getRun(t, ns, testenv.PartitionedRun).Status.Tasks[0]; ts.Phase != rsv1.TaskPhaseFailed || ts.Reason != rsv1.ReasonExecutorRemoved {
		t.Fatalf("task: %s %s %s, want Failed ExecutorRemoved", ts.Phase, ts.Reason, ts.Message)
	}
}

// TestAPodItsNodeDoesNotConfirmGoneKeepsItsTaskUnfinished: a member is killed while its task's pod
// runs on a node that never confirms the pod's deletion (partitioned). The sibling deletes the pod
// gracefully, and the task stays unfinished, its run does not move on, and the Executor says why,
// for as long as the pod's object is there; once the node confirms (here: the object removed), the
// task fails with ExecutorRemoved.
func TestAPodItsNodeDoesNotConfirmGoneKeepsItsTaskUnfinished(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	ctx := context.Background()
	victim := startExecutor(t, ns, "pa")
	pod := runOnOneMember(t, ns, "pa")
	startExecutor(t, ns, "pb")
	victim.Kill()
	e2e.Eventually(t, time.Minute, "the sibling deleting the dead member's pod", func() bool {
		p, err := kube.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err) || err == nil && p.DeletionTimestamp != nil
	})
	e2e.Consistently(t, 8*time.Second, "while the node has not confirmed the pod gone", func() error {
		if err := taskUnfinished(ns)(); err != nil {
			return err
		}
		if _, err := kube.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{}); err != nil {
			return fmt.Errorf("the pod's object is gone although its node never confirmed: %w", err)
		}
		return nil
	})
	e2e.Eventually(t, 30*time.Second, "the dead member's Executor saying it is being removed", func() bool {
		ex := &rsv1.Executor{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "pa"}, ex); err != nil {
			return false
		}
		c := meta.FindStatusCondition(ex.Status.Conditions, rsv1.ConditionReady)
		return c != nil && c.Reason == "BeingRemoved"
	})
	forceDelete(t, pod)
	waitExecutorRemoved(t, ns)
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "pa"}, &rsv1.Executor{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the dead member's Executor should be gone: %v", err)
	}
}

// TestAHungRemovalDoesNotStopTheReapersHeartbeat: the sibling cleaning up after a dead member waits
// for a pod that does not go away (a finalizer the test holds), and meanwhile keeps renewing its own
// Lease, so that nobody takes it for dead too.
func TestAHungRemovalDoesNotStopTheReapersHeartbeat(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	ctx := context.Background()
	victim := startExecutor(t, ns, "ha")
	pod := runOnOneMember(t, ns, "ha")
	const hold = "test.runservice.dev/hold"
	patch := []byte(`{"metadata":{"finalizers":["` + hold + `"]}}`)
	if _, err := kube.CoreV1().Pods(ns).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	release := func() {
		_, err := kube.CoreV1().Pods(ns).Patch(ctx, pod.Name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
		if client.IgnoreNotFound(err) != nil {
			t.Error(err)
		}
	}
	t.Cleanup(release)
	startExecutor(t, ns, "hb")
	victim.Kill()
	e2e.Eventually(t, time.Minute, "the sibling deleting the dead member's pod", func() bool {
		p, err := kube.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		return err == nil && p.DeletionTimestamp != nil
	})
	// Three lease durations (4s each) with the removal hanging.
	e2e.Consistently(t, 12*time.Second, "the reaper renewing its own Lease while the removal hangs", func() error {
		lease := &coordinationv1.Lease{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "hb"}, lease); err != nil {
			return err
		}
		holder, _ := rsv1.ParseLeaseHolder(ptr.Deref(lease.Spec.HolderIdentity, ""))
		if age := time.Since(lease.Spec.RenewTime.Time); holder != "hb" || age > 3*time.Second {
			return fmt.Errorf("the reaper's Lease, held by %q, was last renewed %v ago", ptr.Deref(lease.Spec.HolderIdentity, ""), age.Round(time.Millisecond))
		}
		return taskUnfinished(ns)()
	})
	release()
	forceDelete(t, pod)
	waitExecutorRemoved(t, ns)
}

// TestAnExecutorWhoseLeaseLapsedStartsNoTask: an executor whose heartbeat does not renew its Lease in
// time (here it renews less often than the Lease lasts, as a heartbeat held up by a slow call would),
// and whose Lease a sibling claimed meanwhile, gets a task scheduled on it: it does not start it,
// neither marks it Running nor creates its pod.
func TestAnExecutorWhoseLeaseLapsedStartsNoTask(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	ctx := context.Background()
	startExecutor(t, ns, "la", "--renew-interval", "30s")
	ex := &rsv1.Executor{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "la"}, ex); err != nil {
		t.Fatal(err)
	}
	lease := &coordinationv1.Lease{}
	e2e.Eventually(t, 30*time.Second, "the executor's Lease expired", func() bool {
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "la"}, lease); err != nil {
			return false
		}
		return time.Now().After(lease.Spec.RenewTime.Add(time.Duration(*lease.Spec.LeaseDurationSeconds)*time.Second + 500*time.Millisecond))
	})
	// A sibling claims it, as reaping does.
	now := metav1.NowMicro()
	lease.Spec.HolderIdentity = ptr.To(rsv1.LeaseHolderCleanupPrefix + "sibling")
	lease.Spec.RenewTime, lease.Spec.LeaseDurationSeconds = &now, ptr.To[int32](60)
	if err := k8s.Update(ctx, lease); err != nil {
		t.Fatal(err)
	}
	// Scheduled on it just before its Lease lapsed (the manager's view lags), seen by it only now.
	et := &rsv1.ExecutorTask{
		ObjectMeta: metav1.ObjectMeta{Name: "lapsed-t", Namespace: ns, Labels: map[string]string{rsv1.LabelExecutor: "la"}},
		Spec:       rsv1.ExecutorTaskSpec{RunName: "lapsed", TaskName: "t", Executor: "la", ExecutorUID: string(ex.UID), Task: task("t")},
	}
	if err := k8s.Create(ctx, et); err != nil {
		t.Fatal(err)
	}
	e2e.Consistently(t, 4*time.Second, "the task not started", func() error {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(et), et); err != nil {
			return err
		}
		if et.Status.Phase != "" && et.Status.Phase != rsv1.TaskPhaseNotStarted {
			return fmt.Errorf("the executor marked the task %s (%s) while its Lease was claimed by a sibling", et.Status.Phase, et.Status.Message)
		}
		pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: rsv1.LabelExecutor + "=la"})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("the executor created pod %s while its Lease was claimed by a sibling", pods.Items[0].Name)
		}
		return nil
	})
}
