package controllers_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// autoExecutor registers an executor that finishes every task it gets after a short while.
func autoExecutor(t *testing.T, ns, name string, after time.Duration) {
	t.Helper()
	ex := startExecutor(t, ns, name)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		seen := map[string]time.Time{}
		for ctx.Err() == nil {
			var list rsv1.ExecutorTaskList
			if err := k8s.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{rsv1.LabelExecutor: ex.name}); err == nil {
				for _, et := range list.Items {
					if et.Status.Phase.IsFinal() {
						continue
					}
					first, ok := seen[et.Name]
					if !ok {
						seen[et.Name] = time.Now()
						continue
					}
					if time.Since(first) >= after {
						et.Status.Phase = rsv1.TaskPhaseSuccess
						now := metav1.Now()
						et.Status.StartTime, et.Status.EndTime = &now, &now
						_ = k8s.Status().Update(ctx, &et)
					}
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
}

func getGroup(t *testing.T, ns, name string) *rsv1.ChangeGroup {
	t.Helper()
	cg := &rsv1.ChangeGroup{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, cg); err != nil {
		t.Fatalf("reading change group %s: %v", name, err)
	}
	return cg
}

func inGroup(ns, name string, group string, suspend bool, tasks ...rsv1.Task) *rsv1.Run {
	if len(tasks) == 0 {
		tasks = []rsv1.Task{task("only")}
	}
	run := newRun(ns, name, tasks...)
	run.Spec.ChangeGroups = []string{group}
	if suspend {
		run.Spec.Suspend = ptr.To(true)
	}
	return run
}

// TestRacingSchedulersNeverExceedTheLimit: 20 scheduler goroutines, each reading the group's token and
// starting queued runs while fewer than 2 are active. A watch over the whole test never sees more than
// 2 active runs, and every run finishes.
func TestRacingSchedulersNeverExceedTheLimit(t *testing.T) {
	const runs, schedulers, limit = 12, 20, 2
	ns := newNamespace(t)
	autoExecutor(t, ns, "ex1", 300*time.Millisecond)
	for i := range runs {
		createRun(t, inGroup(ns, fmt.Sprintf("r%02d", i), "project-a", true))
	}
	eventually(t, 30*time.Second, "the group to exist", func() (bool, error) {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "project-a"}, &rsv1.ChangeGroup{})
		return err == nil, client.IgnoreNotFound(err)
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Watch the ledger and the runs' phases for the whole test.
	var maxActive, maxRunning atomic.Int64
	watchDone := make(chan struct{})
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: k8s.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	cgWatch, err := wc.Watch(ctx, &rsv1.ChangeGroupList{}, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	runWatch, err := wc.Watch(ctx, &rsv1.RunList{}, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(watchDone)
		phases := map[string]rsv1.RunPhase{}
		for {
			select {
			case ev, ok := <-cgWatch.ResultChan():
				if !ok {
					return
				}
				if cg, ok := ev.Object.(*rsv1.ChangeGroup); ok {
					maxActive.Store(max(maxActive.Load(), int64(len(cg.Status.ActiveRuns))))
				}
			case ev, ok := <-runWatch.ResultChan():
				if !ok {
					return
				}
				run, ok := ev.Object.(*rsv1.Run)
				if !ok {
					continue
				}
				if ev.Type == watch.Deleted {
					delete(phases, run.Name)
				} else {
					phases[run.Name] = run.Status.Phase
				}
				n := 0
				for _, p := range phases {
					if p == rsv1.RunPhaseRunning {
						n++
					}
				}
				maxRunning.Store(max(maxRunning.Load(), int64(n)))
			}
		}
	}()

	var started, conflicts atomic.Int64
	var wg sync.WaitGroup
	for range schedulers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				cg := &rsv1.ChangeGroup{}
				if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "project-a"}, cg); err != nil {
					continue
				}
				var list rsv1.RunList
				if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
					continue
				}
				var queued []rsv1.Run
				finished := 0
				for _, r := range list.Items {
					if r.Status.Phase == rsv1.RunPhaseFinished {
						finished++
					}
					if r.IsSuspended() {
						queued = append(queued, r)
					}
				}
				if finished == runs {
					return
				}
				if len(cg.Status.ActiveRuns) >= limit || len(queued) == 0 {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				run := queued[rand.IntN(len(queued))]
				run.Spec.Suspend = ptr.To(false)
				run.Annotations = map[string]string{rsv1.AnnotationUpdateToken: rsv1.UpdateToken(cg)}
				switch err := k8s.Update(ctx, &run); {
				case err == nil:
					started.Add(1)
				case apierrors.IsConflict(err):
					conflicts.Add(1)
				default:
					t.Errorf("starting run %s: %v", run.Name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("not every run finished in time: started %d", started.Load())
	}
	cancel()
	<-watchDone
	t.Logf("started %d runs, %d conflicting attempts, max active %d, max running %d", started.Load(), conflicts.Load(), maxActive.Load(), maxRunning.Load())
	if maxActive.Load() > limit || maxRunning.Load() > limit {
		t.Fatalf("saw %d active and %d running runs, limit %d", maxActive.Load(), maxRunning.Load(), limit)
	}
	if started.Load() != runs {
		t.Fatalf("started %d runs, want %d", started.Load(), runs)
	}
	if conflicts.Load() == 0 {
		t.Fatalf("no conflicting attempt: the test did not race")
	}
	if cg := getGroup(t, ns, "project-a"); len(cg.Status.ActiveRuns) != 0 {
		t.Fatalf("active runs %v after every run finished", cg.Status.ActiveRuns)
	}
}

// TestSameTokenCreates: two clients create runs with the same token: exactly one wins, the other gets
// 409 Conflict naming the group, and its run does not exist.
func TestSameTokenCreates(t *testing.T) {
	ns := newNamespace(t)
	if err := k8s.Create(context.Background(), &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: "deploys", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		token := rsv1.UpdateToken(getGroup(t, ns, "deploys"))
		errs := make([]error, 2)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				run := inGroup(ns, fmt.Sprintf("round%d-client%d", round, i), "deploys", false)
				run.Annotations = map[string]string{rsv1.AnnotationUpdateToken: token}
				<-start
				errs[i] = k8s.Create(context.Background(), run)
			}()
		}
		close(start)
		wg.Wait()
		var won, lost int
		for i, err := range errs {
			name := fmt.Sprintf("round%d-client%d", round, i)
			getErr := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &rsv1.Run{})
			switch {
			case err == nil:
				won++
			case apierrors.IsConflict(err) && strings.Contains(err.Error(), `change group "deploys"`):
				lost++
				if !apierrors.IsNotFound(getErr) {
					t.Fatalf("the losing run %s exists (get: %v)", name, getErr)
				}
			default:
				t.Fatalf("create %s: unexpected error %v", name, err)
			}
		}
		if won != 1 || lost != 1 {
			t.Fatalf("round %d: %d won, %d lost; want exactly one each (%v)", round, won, lost, errs)
		}
	}
	// A stale token is refused too.
	run := inGroup(ns, "stale", "deploys", false)
	run.Annotations = map[string]string{rsv1.AnnotationUpdateToken: "1"}
	if err := k8s.Create(context.Background(), run); !apierrors.IsConflict(err) {
		t.Fatalf("stale token: got %v, want Conflict", err)
	}
}

func TestMaxActiveRunsStartsOldestFirst(t *testing.T) {
	ns := newNamespace(t)
	autoExecutor(t, ns, "ex1", 500*time.Millisecond)
	cg := &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: "limited", Namespace: ns}, Spec: rsv1.ChangeGroupSpec{MaxActiveRuns: ptr.To[int32](1)}}
	if err := k8s.Create(context.Background(), cg); err != nil {
		t.Fatal(err)
	}
	names := []string{"first", "second", "third"}
	for _, n := range names {
		createRun(t, inGroup(ns, n, "limited", false))
	}
	var order []string
	eventually(t, time.Minute, "all runs finished, one at a time", func() (bool, error) {
		var list rsv1.RunList
		if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			return false, err
		}
		running, finished := 0, 0
		for _, r := range list.Items {
			switch r.Status.Phase {
			case rsv1.RunPhaseRunning:
				running++
				if !slices.Contains(order, r.Name) {
					order = append(order, r.Name)
				}
			case rsv1.RunPhaseFinished:
				finished++
				if !slices.Contains(order, r.Name) {
					order = append(order, r.Name)
				}
			}
		}
		if running > 1 {
			return false, fmt.Errorf("%d runs running with maxActiveRuns 1", running)
		}
		return finished == len(names), nil
	})
	if !slices.Equal(order, names) {
		t.Fatalf("runs started in order %v, want %v", order, names)
	}
	// A finished run leaves the ledger right after its final status is written.
	eventually(t, 10*time.Second, "an empty ledger after all finished", func() (bool, error) {
		g := getGroup(t, ns, "limited")
		return g.Status.QueuedRuns == 0 && len(g.Status.ActiveRuns) == 0, nil
	})
}

func TestDeletingAnActiveRunReleasesItsSlot(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	createRun(t, inGroup(ns, "doomed", "grp", false))
	waitRunPhase(t, ns, "doomed", rsv1.RunPhaseRunning)
	if g := getGroup(t, ns, "grp"); !slices.Contains(g.Status.ActiveRuns, "doomed") {
		t.Fatalf("active runs %v, want doomed", g.Status.ActiveRuns)
	}
	if err := k8s.Delete(context.Background(), &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "doomed", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the run gone and its slot released", func() (bool, error) {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "doomed"}, &rsv1.Run{})
		return apierrors.IsNotFound(err) && len(getGroup(t, ns, "grp").Status.ActiveRuns) == 0, nil
	})
}

func TestQueuedRunsAreCounted(t *testing.T) {
	ns := newNamespace(t)
	for i := range 3 {
		createRun(t, inGroup(ns, fmt.Sprintf("q%d", i), "counted", true))
	}
	eventually(t, 30*time.Second, "queuedRuns 3", func() (bool, error) {
		cg := &rsv1.ChangeGroup{}
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "counted"}, cg)
		return err == nil && cg.Status.QueuedRuns == 3, client.IgnoreNotFound(err)
	})
}

// TestPhantomAdmissionIsDropped: a ledger entry of a run that never came to be (its create failed
// after the webhook admitted it) is dropped after the grace period, not before.
func TestPhantomAdmissionIsDropped(t *testing.T) {
	ns := newNamespace(t)
	cg := &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: "ghosts", Namespace: ns}}
	if err := k8s.Create(context.Background(), cg); err != nil {
		t.Fatal(err)
	}
	cg.Status.ActiveRuns = []string{"ghost"}
	if err := k8s.Status().Update(context.Background(), cg); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	eventually(t, 30*time.Second, "the phantom entry dropped", func() (bool, error) {
		return len(getGroup(t, ns, "ghosts").Status.ActiveRuns) == 0, nil
	})
	if waited := time.Since(written); waited < 4*time.Second {
		t.Fatalf("phantom dropped after %v, before the 5s grace", waited)
	}
}
