package controllers

import (
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"
)

// TestFetchSlotsForgetAnIdleExecutor: the slots of an executor whose fetches have all ended are
// forgotten, though tasks that once waited for them no longer need one (their ExecutorTask deleted,
// recorded lost, their run moved to another shard): a departed executor leaves nothing behind, and
// a free slot wakes the tasks still waiting (each woken task asks again, and a stale one does not).
func TestFetchSlotsForgetAnIdleExecutor(t *testing.T) {
	s := &fetchSlots{perExecutor: 2, base: time.Second, max: time.Minute, wake: make(chan event.GenericEvent, 16)}
	ex := types.UID("executor-1")
	task := func(i int) types.NamespacedName {
		return types.NamespacedName{Namespace: "ns", Name: string(rune('a' + i))}
	}
	var releases []func(bool) time.Duration
	for i := range 2 {
		release, _ := s.acquire(ex, task(i))
		if release == nil {
			t.Fatalf("task %d: no slot of two", i)
		}
		releases = append(releases, release)
	}
	for i := 2; i < 5; i++ {
		if release, _ := s.acquire(ex, task(i)); release != nil {
			t.Fatalf("task %d: a third slot", i)
		}
	}
	// Tasks 2 to 4 wait; then none of them needs a slot any more (their ExecutorTasks are gone).
	for _, release := range releases {
		release(false)
	}
	if n := len(s.wake); n != 2 {
		t.Errorf("two slots freed woke %d waiting tasks, want 2", n)
	}
	if _, ok := s.m[ex]; ok {
		t.Errorf("the executor's slots are kept with none busy (waiting: %v): a departed executor's stay for ever", s.m[ex].waiting)
	}
}
