package sharded_test

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/testenv"
)

// departed is a member that left the ring: no replica's cache selects its label.
const departed = "shard-gone"

// TestAnExecutorTaskOfADepartedMemberFollowsItsRun: ExecutorTasks of shard-b's runs labelled with
// a member that left the ring, so that no replica caches them. One was created before shard-b
// scheduled the task (a stalled member's create after its Lease expired: shard-b meets
// AlreadyExists and adopts it); the other is relabelled while its task runs (a deposed leader's
// relabel landing late). shard-b labels each with its run's shard, and both runs finish.
func TestAnExecutorTaskOfADepartedMemberFollowsItsRun(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	autoExecutor(t, ns, "fake", 2*time.Second)
	names := namesOn(ns, "departed", "shard-b", 2)
	stalled, late := newRun(ns, names[0], "", true), newRun(ns, names[1], "", false)
	createRun(t, stalled)
	createStalledTask(t, stalled, "fake")
	if err := k8s.Patch(ctx, stalled, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"suspend":false}}`))); err != nil {
		t.Fatal(err)
	}
	createRun(t, late)
	etName := testenv.ReportTask(t, k8s, ns, late.Name, "only", rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseRunning, StartTime: ptrNow()})
	relabel := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"labels":{"`+rsv1.LabelShard+`":"`+departed+`"}}}`))
	if err := k8s.Patch(ctx, &rsv1.ExecutorTask{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: etName}}, relabel); err != nil {
		t.Fatal(err)
	}
	for _, run := range []*rsv1.Run{stalled, late} {
		eventually(t, 30*time.Second, "run "+run.Name+" finished, its task labelled shard-b", func() (bool, error) {
			r := &rsv1.Run{}
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(run), r); err != nil {
				return false, err
			}
			var ets rsv1.ExecutorTaskList
			if err := k8s.List(ctx, &ets, client.InNamespace(ns), client.MatchingLabels{rsv1.LabelRunUID: string(r.UID)}); err != nil {
				return false, err
			}
			return r.Status.Phase == rsv1.RunPhaseFinished && len(ets.Items) == 1 && ets.Items[0].Labels[rsv1.LabelShard] == "shard-b", nil
		})
	}
}

// createStalledTask creates the ExecutorTask of queued run's task on executor as a member that
// left the ring would: with its own name as the shard label.
func createStalledTask(t *testing.T, run *rsv1.Run, executor string) {
	t.Helper()
	eventually(t, 30*time.Second, "run "+run.Name+" queued", func() (bool, error) {
		err := k8s.Get(context.Background(), client.ObjectKeyFromObject(run), run)
		return run.Status.Phase == rsv1.RunPhaseQueued, err
	})
	testenv.CreateExecutorTask(t, k8s, run, executor, departed)
}
