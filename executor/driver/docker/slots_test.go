package docker_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
)

// TestActiveTasksLimitHoldsWhateverBooksIt: an executor with activeTasksLimit 2 gets six tasks at
// once, two from each of three manager shards (each shard's scheduler counts only its own tasks, so
// each booked the executor up to its limit). The Docker daemon's events never show more than two of
// its task containers running at once; the others wait not started and start in creation order as
// slots come free; every task runs once and succeeds.
func TestActiveTasksLimitHoldsWhateverBooksIt(t *testing.T) {
	const limit, tasks = 2, 6
	ns := e2e.NewNamespace(t, k8s, "d")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	running := followRunning(ctx, "capped")
	startExecutor(t, ns, "capped", "--active-tasks-limit", fmt.Sprint(limit))
	ex := &rsv1.Executor{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "capped"}, ex); err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := range tasks {
		name := fmt.Sprintf("t%d", i)
		names = append(names, name)
		et := &rsv1.ExecutorTask{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
				rsv1.LabelExecutor: "capped", rsv1.LabelShard: fmt.Sprintf("shard-%c", 'a'+i%3),
			}},
			Spec: rsv1.ExecutorTaskSpec{
				RunName: "capped", TaskName: name, Executor: "capped", ExecutorUID: string(ex.UID),
				Task: e2e.ShellTask(name, "sleep 2"),
			},
		}
		if err := k8s.Create(ctx, et); err != nil {
			t.Fatal(err)
		}
	}
	e2e.Eventually(t, 2*time.Minute, "every task succeeded", func() bool {
		var list rsv1.ExecutorTaskList
		if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return false
		}
		done := 0
		for _, et := range list.Items {
			if et.Status.Phase.IsFinal() && et.Status.Phase != rsv1.TaskPhaseSuccess {
				t.Fatalf("task %s is %s: %s", et.Name, et.Status.Phase, et.Status.Message)
			}
			if et.Status.Phase == rsv1.TaskPhaseSuccess {
				done++
			}
		}
		return done == tasks
	})
	time.Sleep(time.Second) // let the event stream catch up
	most, order := running()
	t.Logf("at most %d task containers running at once; started %v", most, order)
	if most > limit {
		t.Fatalf("%d task containers ran at once on an executor with activeTasksLimit %d", most, limit)
	}
	if len(order) != tasks {
		t.Fatalf("container starts %v, want each of the %d tasks started once", order, tasks)
	}
	// Tasks that get slots together start in either order; none overtakes an older one further.
	for i, name := range names {
		if pos := slices.Index(order, name); pos < i-1 || pos > i+1 {
			t.Fatalf("task %s started %d-th (%v): not in creation order", name, pos+1, order)
		}
	}
}

// followRunning follows the start and die events of an executor's main task containers; it
// returns the most that ran at once, and the tasks in the order they started.
func followRunning(ctx context.Context, executor string) func() (int, []string) {
	var mu sync.Mutex
	now, most := 0, 0
	var order []string
	msgs, _ := docker.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", "container"), filters.Arg("event", "start"), filters.Arg("event", "die"),
		filters.Arg("label", rsv1.LabelExecutor+"="+executor), filters.Arg("label", "runservice.dev/role=main"),
	)})
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-msgs:
				mu.Lock()
				switch m.Action {
				case events.ActionStart:
					now++
					most = max(most, now)
					order = append(order, m.Actor.Attributes[rsv1.LabelTask])
				case events.ActionDie:
					now--
				}
				mu.Unlock()
			}
		}
	}()
	return func() (int, []string) {
		mu.Lock()
		defer mu.Unlock()
		return most, slices.Clone(order)
	}
}
