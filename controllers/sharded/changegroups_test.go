package sharded_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/ledger"
	"runservice.dev/runservice/internal/shard"
	"runservice.dev/runservice/internal/testenv"
)

// shardsOf counts the runs of a namespace by their shard label.
func shardsOf(t *testing.T, ns string) map[string]int {
	t.Helper()
	var list rsv1.RunList
	if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, r := range list.Items {
		out[r.Labels[rsv1.LabelShard]]++
	}
	return out
}

// waitSettled waits until every run of ns is Finished with Success and the group's ledger is empty
// with exactly want runs counted as succeeded.
func waitSettled(t *testing.T, ns, group string, want int64) {
	t.Helper()
	eventually(t, time.Minute, "every run finished and counted once", func() (bool, error) {
		var list rsv1.RunList
		if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			return false, err
		}
		for _, r := range list.Items {
			if r.Status.Phase != rsv1.RunPhaseFinished || r.Status.Result != rsv1.RunResultSuccess {
				return false, fmt.Errorf("run %s is %s/%s", r.Name, r.Status.Phase, r.Status.Result)
			}
		}
		cg := getGroup(t, ns, group)
		st := cg.Status
		if len(st.ActiveRuns) != 0 || st.QueuedRuns != 0 || st.Finished.Success != want || st.Finished.Failed != 0 || st.Finished.Stopped != 0 {
			return false, fmt.Errorf("ledger active %v queued %d finished %+v, want %d succeeded", st.ActiveRuns, st.QueuedRuns, st.Finished, want)
		}
		return true, nil
	})
}

// TestRacingSchedulersAcrossShards: 20 scheduler goroutines start suspended runs of one group,
// each a compare-and-swap with the group's token while fewer than 2 runs are active; the runs are
// on three shards, whose run controllers admit, run and release them, each with its own cache. A
// watch of the ledger and of the runs' phases never sees more than 2; every run ends and is counted
// exactly once.
func TestRacingSchedulersAcrossShards(t *testing.T) {
	const runs, schedulers, limit = 15, 20, 2
	ns := newNamespace(t)
	autoExecutor(t, ns, "ex1", 200*time.Millisecond)
	for i := range runs {
		createRun(t, newRun(ns, fmt.Sprintf("r%02d", i), "project-a", true))
	}
	if on := shardsOf(t, ns); len(on) != len(members) {
		t.Fatalf("the runs are on shards %v: want all %d", on, len(members))
	}
	eventually(t, 30*time.Second, "the group to exist", func() (bool, error) {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "project-a"}, &rsv1.ChangeGroup{})
		return err == nil, client.IgnoreNotFound(err)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := testenv.WatchLimit(t, ctx, env.Config, ns)

	started, conflicts := testenv.RaceSchedulers(ctx, t, k8s, ns, "project-a", runs, schedulers, limit)
	if ctx.Err() != nil {
		t.Fatalf("not every run finished in time: started %d", started)
	}
	waitSettled(t, ns, "project-a", runs)
	cancel()
	<-w.Done
	t.Logf("runs on shards %v: started %d, %d conflicting attempts, max active %d, max running %d", shardsOf(t, ns), started, conflicts, w.MaxActive.Load(), w.MaxRunning.Load())
	if w.MaxActive.Load() > limit || w.MaxRunning.Load() > limit {
		t.Fatalf("saw %d active and %d running runs, limit %d", w.MaxActive.Load(), w.MaxRunning.Load(), limit)
	}
	if started != runs {
		t.Fatalf("started %d runs, want %d", started, runs)
	}
	if conflicts == 0 {
		t.Fatalf("no conflicting attempt: the test did not race")
	}
}

// TestMaxActiveRunsAcrossShards: 20 goroutines create 40 runs at once in a group with
// maxActiveRuns 2; the runs are on three shards and the group's controller on one. The limit holds
// throughout, every run ends, and the counts are exact.
func TestMaxActiveRunsAcrossShards(t *testing.T) {
	const runs, creators, limit = 40, 20, 2
	ns := newNamespace(t)
	autoExecutor(t, ns, "ex1", 100*time.Millisecond)
	group := "limited"
	if err := k8s.Create(context.Background(), &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: group, Namespace: ns}, Spec: rsv1.ChangeGroupSpec{MaxActiveRuns: ptr.To[int32](limit)}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w := testenv.WatchLimit(t, ctx, env.Config, ns)
	var wg sync.WaitGroup
	for c := range creators {
		wg.Go(func() {
			for i := c; i < runs; i += creators {
				createRun(t, newRun(ns, fmt.Sprintf("r%02d", i), group, false))
			}
		})
	}
	wg.Wait()
	if on := shardsOf(t, ns); len(on) != len(members) {
		t.Fatalf("the runs are on shards %v: want all %d", on, len(members))
	}
	waitSettled(t, ns, group, runs)
	cancel()
	<-w.Done
	t.Logf("runs on shards %v (group owned by %s): max active %d, max running %d", shardsOf(t, ns), ring.Owner(shard.Key(ns, group)), w.MaxActive.Load(), w.MaxRunning.Load())
	if w.MaxActive.Load() > limit || w.MaxRunning.Load() > limit {
		t.Fatalf("saw %d active and %d running runs, limit %d", w.MaxActive.Load(), w.MaxRunning.Load(), limit)
	}
}

// TestQueuedRunsOnTwoShardsStartOldestFirst: a group owned by one shard with maxActiveRuns 1 holds
// queued runs of two other shards, created one by one; they start in creation order, one at a
// time, and the group counts them all while they wait.
func TestQueuedRunsOnTwoShardsStartOldestFirst(t *testing.T) {
	ns := newNamespace(t)
	group := groupOwnedBy(ns, "ordered", "shard-a")
	b, c := namesOn(ns, "q", "shard-b", 3), namesOn(ns, "q", "shard-c", 3)
	order := []string{b[0], c[0], b[1], c[1], b[2], c[2]} // alternating shards
	if err := k8s.Create(context.Background(), &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: group, Namespace: ns}, Spec: rsv1.ChangeGroupSpec{MaxActiveRuns: ptr.To[int32](1)}}); err != nil {
		t.Fatal(err)
	}
	// A blocker holds the only slot while the others queue.
	blocker := newRun(ns, "blocker", group, false)
	createRun(t, blocker)
	eventually(t, 30*time.Second, "the blocker admitted", func() (bool, error) {
		return slices.Contains(getGroup(t, ns, group).Status.ActiveRuns, "blocker"), nil
	})
	for _, name := range order {
		createRun(t, newRun(ns, name, group, false))
		time.Sleep(1100 * time.Millisecond) // creation timestamps are in seconds
	}
	eventually(t, 30*time.Second, "all 6 counted as queued", func() (bool, error) {
		st := getGroup(t, ns, group).Status
		return st.QueuedRuns == int32(len(order)), fmt.Errorf("queuedRuns %d", st.QueuedRuns)
	})
	autoExecutor(t, ns, "ex1", 300*time.Millisecond)
	var seen []string
	eventually(t, time.Minute, "all runs finished, one at a time", func() (bool, error) {
		var list rsv1.RunList
		if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			return false, err
		}
		running, finished := 0, 0
		for _, r := range list.Items {
			switch r.Status.Phase {
			case rsv1.RunPhaseRunning, rsv1.RunPhaseFinished:
				if r.Status.Phase == rsv1.RunPhaseRunning {
					running++
				} else {
					finished++
				}
				if r.Name != "blocker" && !slices.Contains(seen, r.Name) {
					seen = append(seen, r.Name)
				}
			}
		}
		if running > 1 {
			return false, fmt.Errorf("%d runs running with maxActiveRuns 1", running)
		}
		return finished == len(order)+1, nil
	})
	if !slices.Equal(seen, order) {
		t.Fatalf("runs started in order %v, want %v", seen, order)
	}
	waitSettled(t, ns, group, int64(len(order)+1))
}

// TestPhantomCleanupAcrossShards: the ledger of a group owned by shard-a lists running runs of
// shard-b and shard-c (which shard-a does not cache), a suspended run of shard-b that never
// started, and a run that does not exist. After the phantom grace only the last two are dropped.
func TestPhantomCleanupAcrossShards(t *testing.T) {
	ns := newNamespace(t)
	group := groupOwnedBy(ns, "ghosts", "shard-a")
	autoExecutor(t, ns, "ex1", time.Hour) // tasks stay running
	onB, onC := namesOn(ns, "real", "shard-b", 1)[0], namesOn(ns, "real", "shard-c", 1)[0]
	suspended := namesOn(ns, "suspended", "shard-b", 1)[0]
	for _, name := range []string{onB, onC} {
		createRun(t, newRun(ns, name, group, false))
	}
	createRun(t, newRun(ns, suspended, group, true))
	eventually(t, 30*time.Second, "the real runs running", func() (bool, error) {
		for _, name := range []string{onB, onC} {
			run := &rsv1.Run{}
			if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, run); err != nil || run.Status.Phase != rsv1.RunPhaseRunning {
				return false, err
			}
		}
		return true, nil
	})
	// Entries the webhook would have written for requests that failed after it admitted them.
	l := &ledger.Ledger{Reader: k8s, Writer: k8s}
	for _, name := range []string{suspended, "never-created"} {
		if err := l.Admit(context.Background(), ns, name, []string{group}, nil, ""); err != nil {
			t.Fatal(err)
		}
	}
	admitted := time.Now()
	want := []string{onB, onC}
	eventually(t, 30*time.Second, "only the phantoms dropped", func() (bool, error) {
		active := slices.Sorted(slices.Values(getGroup(t, ns, group).Status.ActiveRuns))
		if len(active) > len(want) && time.Since(admitted) < phantomGrace {
			return false, nil
		}
		if !slices.Equal(active, slices.Sorted(slices.Values(want))) {
			return false, fmt.Errorf("active runs %v, want %v", active, want)
		}
		return true, nil
	})
	if d := time.Since(admitted); d < phantomGrace {
		t.Fatalf("phantoms dropped after %s, before the grace of %s", d, phantomGrace)
	}
	// And the real ones stay, well past the grace.
	time.Sleep(2 * phantomGrace)
	if active := slices.Sorted(slices.Values(getGroup(t, ns, group).Status.ActiveRuns)); !slices.Equal(active, slices.Sorted(slices.Values(want))) {
		t.Fatalf("active runs %v after twice the grace, want %v", active, want)
	}
	if q := getGroup(t, ns, group).Status.QueuedRuns; q != 1 {
		t.Fatalf("queuedRuns %d, want 1 (the suspended run)", q)
	}
}
