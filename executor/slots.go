package executor

import (
	"context"
	"fmt"
	"slices"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// The executor keeps its ActiveTasksLimit itself. The manager's scheduler counts an executor's
// load from its own cache, and a sharded manager's replicas each cache only their own runs' tasks:
// n replicas could each book the whole limit. Their count stays a placement hint; here a task past
// the limit waits, its ExecutorTask not started (nothing is written of it), until a running one
// ends, and the waiting ones start in creation order.
//
// A task holds a slot from its start until its runner is gone (its containers removed), and also
// while it is not followed yet: Running in the apiserver, or prepared (its task directory exists),
// which is what a restarted executor adopts. So after a restart the tasks it adopts hold their
// slots before any waiting task is looked at, and no task is started twice: a slot only delays a
// start, which keeps its checks (the gate, the prepared directory) as before.

// mayStart says whether et, a task not started and not prepared, may start now. Call it with
// e.starting held until its runner is registered, so that two reconciles do not take one slot.
func (e *Executor) mayStart(ctx context.Context, et *rsv1.ExecutorTask) (bool, error) {
	limit := int(e.opts.ActiveTasksLimit)
	if limit <= 0 {
		return true, nil
	}
	held, waiting, err := e.slots(ctx)
	if err != nil {
		return false, err
	}
	i := slices.IndexFunc(waiting, func(w *rsv1.ExecutorTask) bool { return w.UID == et.UID })
	if i < 0 {
		i = len(waiting) // not cached yet: after every task that is
	}
	return held+i < limit, nil
}

// slots counts the tasks that hold a slot and returns the tasks waiting for one, oldest first.
func (e *Executor) slots(ctx context.Context) (int, []*rsv1.ExecutorTask, error) {
	var list rsv1.ExecutorTaskList
	if err := e.client.List(ctx, &list, client.InNamespace(e.opts.Namespace), client.UnsafeDisableDeepCopy); err != nil {
		return 0, nil, fmt.Errorf("listing executor tasks: %w", err)
	}
	e.mu.Lock()
	held := len(e.runners)
	followed := func(et *rsv1.ExecutorTask) bool { return e.runners[et.UID] != nil }
	var waiting []*rsv1.ExecutorTask
	for i := range list.Items {
		et := &list.Items[i]
		if et.Spec.Executor != e.opts.Name || et.Spec.ExecutorUID != string(e.uid) || followed(et) {
			continue
		}
		switch phase := et.Status.Phase; {
		case phase == rsv1.TaskPhaseRunning:
			held++ // to be adopted
		case phase == "" || phase == rsv1.TaskPhaseNotStarted:
			if prepared, _ := e.prepared(et.UID); prepared {
				held++ // started before a restart, to be adopted
			} else if !et.Spec.Stop {
				waiting = append(waiting, et)
			}
		}
	}
	e.mu.Unlock()
	slices.SortFunc(waiting, func(a, b *rsv1.ExecutorTask) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return held, waiting, nil
}

// wakeWaiting reconciles again the tasks waiting for a slot that are next in line, once a slot
// may have come free (a runner ended, a task became final or was deleted).
func (e *Executor) wakeWaiting(ctx context.Context) {
	limit := int(e.opts.ActiveTasksLimit)
	if limit <= 0 || e.wake == nil {
		return
	}
	held, waiting, err := e.slots(ctx)
	if err != nil {
		return // the safety requeue of the waiting tasks looks again
	}
	for _, et := range waiting[:min(len(waiting), max(limit-held, 0))] {
		select {
		case e.wake <- event.GenericEvent{Object: et.DeepCopy()}:
		default: // full: those queued already look at the slots again
		}
	}
}

// slotRecheck is when a task waiting for a slot looks again, should no wake reach it.
const slotRecheck = 5 * time.Second

// activeTasks counts the executor's active tasks in its cache, for its Lease (see
// rsv1.AnnotationActiveTasks); false when the cache cannot tell at once (not started or synced
// yet): a renewal never waits on it.
func (e *Executor) activeTasks(ctx context.Context) (int, bool) {
	ctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	var list rsv1.ExecutorTaskList
	if err := e.client.List(ctx, &list, client.InNamespace(e.opts.Namespace), client.UnsafeDisableDeepCopy); err != nil {
		return 0, false
	}
	n := 0
	for i := range list.Items {
		if et := &list.Items[i]; et.Spec.ExecutorUID == string(e.uid) && et.Status.IsActive() {
			n++
		}
	}
	return n, true
}
