package controllers

import (
	"context"
	"sync"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// fetchOutcomes hands the fetcher's outcomes to the run controller in memory. A fetch costs no
// write of its own: its outcome is recorded in the run's status (status.tasks[].fetched) by the
// status write the run controller makes anyway, and only once that write is read back does the
// fetcher tell the executor that its copy may go (ack). An outcome lost with the process (a crash
// before the status write) is found again: the fetcher fetches every final task whose run does not
// record its fetch, into the same keys.
type fetchOutcomes struct {
	// runs carries, for each outcome put, its ExecutorTask to the run controller, which reconciles
	// the task's run.
	runs chan event.GenericEvent

	mu sync.Mutex
	// pending holds the outcomes the run's status does not record yet, by ExecutorTask.
	pending map[types.NamespacedName]fetchOutcome
	// acked holds the ExecutorTasks whose executor took the ack (or has nothing to be told),
	// by uid: an ExecutorTask of the same name later is another task.
	acked map[types.NamespacedName]types.UID
}

type fetchOutcome struct {
	uid   types.UID
	value string // as status.tasks[].fetched says it
}

func newFetchOutcomes() *fetchOutcomes {
	return &fetchOutcomes{
		runs:    make(chan event.GenericEvent, 1024),
		pending: map[types.NamespacedName]fetchOutcome{},
		acked:   map[types.NamespacedName]types.UID{},
	}
}

// put keeps the outcome of et's fetch for its run's next status write, and asks for that write.
func (o *fetchOutcomes) put(ctx context.Context, et *rsv1.ExecutorTask, value string) {
	o.mu.Lock()
	o.pending[client.ObjectKeyFromObject(et)] = fetchOutcome{uid: et.UID, value: value}
	o.mu.Unlock()
	select {
	case o.runs <- event.GenericEvent{Object: et}:
	case <-ctx.Done():
	}
}

// outcome is the outcome of et's fetch that its run's status does not record yet, "" when none.
// It is safe on a nil fetchOutcomes (no fetcher: nothing is fetched).
func (o *fetchOutcomes) outcome(et *rsv1.ExecutorTask) string {
	if o == nil {
		return ""
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if p, ok := o.pending[client.ObjectKeyFromObject(et)]; ok && p.uid == et.UID {
		return p.value
	}
	return ""
}

// recorded drops the pending outcome of et: its run's status records it.
func (o *fetchOutcomes) recorded(et *rsv1.ExecutorTask) {
	o.mu.Lock()
	defer o.mu.Unlock()
	key := client.ObjectKeyFromObject(et)
	if p, ok := o.pending[key]; ok && p.uid == et.UID {
		delete(o.pending, key)
	}
}

// isAcked says whether et's executor was told (or needs no telling).
func (o *fetchOutcomes) isAcked(et *rsv1.ExecutorTask) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	uid, ok := o.acked[client.ObjectKeyFromObject(et)]
	return ok && uid == et.UID
}

func (o *fetchOutcomes) ack(et *rsv1.ExecutorTask) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.acked[client.ObjectKeyFromObject(et)] = et.UID
}

// forget drops all that is kept of the ExecutorTask key: it is deleted.
func (o *fetchOutcomes) forget(key types.NamespacedName) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.pending, key)
	delete(o.acked, key)
}
