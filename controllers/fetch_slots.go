package controllers

import (
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// fetchSlots bounds the fetcher's work per executor, so that executors that hang cannot take every
// worker: at most perExecutor fetches from one executor at a time, one while its last fetch
// failed, and none while it backs off after failures (backoff doubling from base up to max).
// A reconcile that gets no slot is requeued, never blocked, so its worker serves other executors;
// and when a slot of its executor frees, one waiting task is woken at once (wake) rather than after
// its requeue: a fetch that waits for a slot delays its run's last status write (FinishWait).
type fetchSlots struct {
	perExecutor int
	base, max   time.Duration
	// wake, when set, is sent the ExecutorTasks to reconcile again when a slot they waited for
	// frees (without blocking: one not sent comes back on its requeue).
	wake chan event.GenericEvent

	mu sync.Mutex
	m  map[types.UID]*executorSlots // by executor UID: an executor registered anew starts afresh
}

type executorSlots struct {
	busy      int
	failures  int
	notBefore time.Time
	// waiting are the ExecutorTasks that found every slot taken, oldest first.
	waiting []types.NamespacedName
}

// busyRetry is when a reconcile that found its executor's slots taken looks again; jittered so the
// tasks of one executor do not come back in step.
const busyRetry = 500 * time.Millisecond

// acquire takes a slot for executor uid, for the ExecutorTask key. Without one it returns nil and
// how long to wait.
func (s *fetchSlots) acquire(uid types.UID, key types.NamespacedName) (release func(failed bool) time.Duration, wait time.Duration) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[types.UID]*executorSlots{}
	}
	e := s.m[uid]
	if e == nil {
		e = &executorSlots{}
		s.m[uid] = e
	}
	if now.Before(e.notBefore) {
		return nil, e.notBefore.Sub(now) + jitter(busyRetry)
	}
	limit := s.perExecutor
	if e.failures > 0 {
		limit = 1 // a probe: the others wait for its outcome instead of hanging beside it
	}
	if e.busy >= limit {
		if !slices.Contains(e.waiting, key) {
			e.waiting = append(e.waiting, key)
		}
		return nil, jitter(busyRetry)
	}
	e.waiting = slices.DeleteFunc(e.waiting, func(k types.NamespacedName) bool { return k == key })
	e.busy++
	return func(failed bool) time.Duration { return s.release(uid, e, failed) }, 0
}

// release frees a slot and records the outcome; after a failure it returns the backoff.
func (s *fetchSlots) release(uid types.UID, e *executorSlots, failed bool) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.busy--
	if !failed {
		e.failures, e.notBefore = 0, time.Time{}
		s.wakeOne(e)
		if e.busy == 0 {
			// Forgotten with its waiting list: a task that waits still comes back on its requeue,
			// and one that no longer needs a slot (its ExecutorTask gone, its run moved) is not
			// kept for an executor that may be gone too.
			delete(s.m, uid)
		}
		return 0
	}
	e.failures++
	backoff := s.max
	if shift := e.failures - 1; shift < 30 && s.base<<shift < s.max {
		backoff = s.base << shift
	}
	e.notBefore = time.Now().Add(backoff)
	s.forgetIdle()
	return backoff + jitter(busyRetry)
}

// wakeOne sends the oldest task waiting for a slot of e to be reconciled again. Called with mu held.
func (s *fetchSlots) wakeOne(e *executorSlots) {
	if s.wake == nil || len(e.waiting) == 0 {
		return
	}
	key := e.waiting[0]
	select {
	case s.wake <- event.GenericEvent{Object: &rsv1.ExecutorTask{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}}:
		e.waiting = e.waiting[1:]
	default: // full: it comes back on its requeue
	}
}

// reset forgets the failures of executor uid: it changed (cordoned to leave, registered anew), and
// is asked again at once rather than after its backoff.
func (s *fetchSlots) reset(uid types.UID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[uid]; e != nil {
		e.failures, e.notBefore = 0, time.Time{}
	}
}

// forgetIdle drops failing executors nobody asked about for long (deleted ones, mostly), so the
// map stays as large as the set of executors with recent trouble. Called with mu held.
func (s *fetchSlots) forgetIdle() {
	horizon := time.Now().Add(-2 * s.max)
	for uid, e := range s.m {
		if e.busy == 0 && e.notBefore.Before(horizon) {
			delete(s.m, uid)
		}
	}
}

func jitter(d time.Duration) time.Duration { return d + rand.N(d) }
