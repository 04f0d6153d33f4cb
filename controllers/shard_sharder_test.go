package controllers_test

import (
	"context"
	"testing"

	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/controllers"
	"runservice.dev/runservice/internal/testenv"
)

// TestTheSharderLabelsTasksOfMembersNotLive: the sharder's scans find the ExecutorTasks labelled
// with a member that is not live, which no replica caches (a member created them after it left
// the ring, or a deposed leader's relabel landed late), and label them with their run's shard; a
// task whose run is not labelled (being assigned: the sharder labels its tasks first) is left.
func TestTheSharderLabelsTasksOfMembersNotLive(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	startExecutor(t, ns, "ex")
	tasks := map[string]*rsv1.ExecutorTask{}
	for name, shard := range map[string]string{"owned": "shard-a", "unassigned": ""} {
		run := newRun(ns, name, task("only"))
		run.Spec.Suspend = ptr.To(true) // so that the suite's manager schedules nothing
		if shard != "" {
			run.Labels = map[string]string{rsv1.LabelShard: shard}
		}
		tasks[name] = testenv.CreateExecutorTask(t, k8s, createRun(t, run), "ex", "shard-gone")
	}
	s := &controllers.Sharder{Client: k8s}
	if err := s.ScanTasks(ctx, []string{"shard-a"}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"owned": "shard-a", "unassigned": "shard-gone"} {
		et := &rsv1.ExecutorTask{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(tasks[name]), et); err != nil {
			t.Fatal(err)
		}
		if got := et.Labels[rsv1.LabelShard]; got != want {
			t.Errorf("the task of run %s is labelled %q, want %q", name, got, want)
		}
	}
}
