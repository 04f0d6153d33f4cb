package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

// StatusWrite is one write of an ExecutorTask's status, as the apiserver's watch delivered it.
type StatusWrite struct {
	Status rsv1.ExecutorTaskStatus
	// Seen is when the watch delivered it.
	Seen time.Time
}

// StatusWrites records, for a whole test, every write that changed an ExecutorTask's status in a
// namespace. Only an executor writes that status (the manager creates the ExecutorTask, sets
// spec.stop and the fetched annotation), so these are the executors' status writes; a write that
// changes nothing is no write in etcd either.
type StatusWrites struct {
	mu     sync.Mutex
	last   map[string]rsv1.ExecutorTaskStatus
	writes map[string][]StatusWrite
}

// WatchStatusWrites starts recording the status writes of the ExecutorTasks of ns, from now on.
func WatchStatusWrites(t *testing.T, cfg *rest.Config, ns string) *StatusWrites {
	t.Helper()
	cs, err := versioned.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ets := cs.RunserviceV1alpha1().ExecutorTasks(ns)
	list, err := ets.List(ctx, metav1.ListOptions{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	// A retry watcher resumes where it was if the apiserver closes the watch: every version counts.
	w, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return ets.Watch(ctx, o)
		},
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	sw := &StatusWrites{last: map[string]rsv1.ExecutorTaskStatus{}, writes: map[string][]StatusWrite{}}
	for _, et := range list.Items {
		sw.last[et.Name] = et.Status
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			et, ok := ev.Object.(*rsv1.ExecutorTask)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			sw.mu.Lock()
			if prev, seen := sw.last[et.Name]; seen && !equality.Semantic.DeepEqual(prev, et.Status) ||
				!seen && !equality.Semantic.DeepEqual(et.Status, rsv1.ExecutorTaskStatus{}) {
				sw.writes[et.Name] = append(sw.writes[et.Name], StatusWrite{Status: *et.Status.DeepCopy(), Seen: time.Now()})
			}
			sw.last[et.Name] = et.Status
			sw.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); w.Stop(); <-done })
	return sw
}

// Of returns the status writes of the ExecutorTask name so far, in order.
func (sw *StatusWrites) Of(name string) []StatusWrite {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return append([]StatusWrite(nil), sw.writes[name]...)
}

// UntilFinal waits until the ExecutorTask name's status was written final, then a second more (a
// write after the final one would show by then), and returns its status writes.
func (sw *StatusWrites) UntilFinal(t *testing.T, name string) []StatusWrite {
	t.Helper()
	Eventually(t, 30*time.Second, "the final status of "+name+" seen", func() bool {
		w := sw.Of(name)
		return len(w) > 0 && w[len(w)-1].Status.Phase.IsFinal()
	})
	time.Sleep(time.Second)
	return sw.Of(name)
}

// Phases lists the phases the writes of the ExecutorTask name recorded, for failure messages.
func (sw *StatusWrites) Phases(name string) []rsv1.TaskPhase {
	var out []rsv1.TaskPhase
	for _, w := range sw.Of(name) {
		out = append(out, w.Status.Phase)
	}
	return out
}
