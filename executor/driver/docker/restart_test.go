package docker_test

import (
	"context"
	"testing"
	"time"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
)

// TestRestartFromFailedTasksStartsNoKeptContainer: see e2e.RestartFromFailedTasks, on real
// containers; and Docker's event stream shows what ran: the restart from failed tasks started b's
// container alone, never a's; the restart from scratch started both.
func TestRestartFromFailedTasksStartsNoKeptContainer(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	starts := countStartsBy(ctx, "docker-1", func(labels map[string]string) string {
		return labels[rsv1.LabelRun] + "/" + labels[rsv1.LabelTask]
	})
	startExecutor(t, ns, "docker-1")
	runs := e2e.RestartFromFailedTasks(t, h, env.Config, ns)

	want := map[string]int{
		"flaky/a": 1, "flaky/b": 1,
		runs.FailedOnly.Name + "/b":  1,
		runs.FromScratch.Name + "/a": 1, runs.FromScratch.Name + "/b": 1,
	}
	e2e.Eventually(t, 30*time.Second, "the event stream to show every start", func() bool {
		return len(starts()) >= len(want)
	})
	time.Sleep(time.Second) // a start that should not be there has its time to show up too
	got := starts()
	for key, n := range want {
		if got[key] != n {
			t.Errorf("%s started %d times, want %d", key, got[key], n)
		}
	}
	if n := got[runs.FailedOnly.Name+"/a"]; n != 0 {
		t.Errorf("the kept task a started %d containers in the restart from failed tasks, want none", n)
	}
	if len(got) != len(want) {
		t.Errorf("container starts %v, want %v", got, want)
	}
	waitNoContainers(t, "docker-1")
}

// TestRestartRefusals: see e2e.RestartRefusals, on real containers.
func TestRestartRefusals(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	e2e.RestartRefusals(t, h, env.Config, ns)
	waitNoContainers(t, "docker-1")
}
