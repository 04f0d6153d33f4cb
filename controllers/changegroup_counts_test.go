package controllers_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// TestFinishedRunsAreCountedByResult: runs of a group end with every result, one of them after it
// was deleted while running (counted Stopped) and one deleted after a task had failed (counted
// Failed); a run stopped while queued never started and is not counted; a run in two groups counts
// in both. The counts are exact once every run is archived and gone from etcd, and kubectl get
// changegroups shows them.
func TestFinishedRunsAreCountedByResult(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	create := func(name string, suspend bool, groups []string, tasks ...rsv1.Task) {
		run := archivedSoon(inGroup(ns, name, groups[0], suspend, tasks...), "0s")
		run.Spec.ChangeGroups = groups
		createRun(t, run)
	}
	both := []string{"tally", "other"}
	tally := []string{"tally"}

	create("ok-1", false, both)
	create("ok-2", false, tally)
	create("bad", false, tally)
	create("stopped", false, tally)
	create("deleted", false, both)
	create("failing", false, tally, task("a"), task("b"))
	create("never-started", true, tally)

	complete(t, ns, "ok-1", "only", rsv1.TaskPhaseSuccess)
	complete(t, ns, "ok-2", "only", rsv1.TaskPhaseSuccess)
	complete(t, ns, "bad", "only", rsv1.TaskPhaseFailed)

	et := waitTask(t, ns, "stopped", "only")
	report(t, ns, et.Name, rsv1.TaskPhaseRunning, "")
	updateRun(t, ns, "stopped", func(r *rsv1.Run) { r.Spec.Stop = ptr.To(true) })
	report(t, ns, et.Name, rsv1.TaskPhaseStopped, "")

	deleteRunning := func(name string, running ...string) {
		t.Helper()
		if err := k8s.Delete(context.Background(), getRun(t, ns, name)); err != nil {
			t.Fatal(err)
		}
		waitLedgerFinalizerGone(t, ns, name)
		for _, task := range running {
			report(t, ns, waitTask(t, ns, name, task).Name, rsv1.TaskPhaseStopped, "")
		}
	}
	et = waitTask(t, ns, "deleted", "only")
	report(t, ns, et.Name, rsv1.TaskPhaseRunning, "")
	waitRunPhase(t, ns, "deleted", rsv1.RunPhaseRunning)
	deleteRunning("deleted", "only")

	report(t, ns, waitTask(t, ns, "failing", "b").Name, rsv1.TaskPhaseRunning, "")
	complete(t, ns, "failing", "a", rsv1.TaskPhaseFailed)
	eventually(t, 30*time.Second, "run failing Running with result Failed", func() (bool, error) {
		run := getRun(t, ns, "failing")
		return run.Status.Phase == rsv1.RunPhaseRunning && run.Status.Result == rsv1.RunResultFailed, nil
	})
	deleteRunning("failing", "b")

	settledToken(t, ns, "tally", 1)
	updateRun(t, ns, "never-started", func(r *rsv1.Run) { r.Spec.Stop = ptr.To(true) })

	eventually(t, 90*time.Second, "every run archived and gone from etcd", func() (bool, error) {
		var list rsv1.RunList
		if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			return false, err
		}
		if len(list.Items) > 0 {
			return false, fmt.Errorf("%d runs left, e.g. %s in phase %q", len(list.Items), list.Items[0].Name, list.Items[0].Status.Phase)
		}
		return true, nil
	})
	expectFinished(t, ns, "tally", rsv1.FinishedRuns{Success: 2, Failed: 2, Stopped: 2})
	expectFinished(t, ns, "other", rsv1.FinishedRuns{Success: 1, Stopped: 1})
	for _, g := range both {
		if cg := getGroup(t, ns, g); len(cg.Status.ActiveRuns) != 0 || cg.Status.QueuedRuns != 0 {
			t.Errorf("group %s: active %v, queued %d once every run ended", g, cg.Status.ActiveRuns, cg.Status.QueuedRuns)
		}
	}

	// kubectl shows the counts: succeeded and failed by default, stopped with -o wide.
	k := newValidationKubectl(t)
	for _, tc := range []struct {
		args []string
		want map[string]string
	}{
		{args: nil, want: map[string]string{"NAME": "tally", "SUCCEEDED": "2", "FAILED": "2", "ACTIVE": "0"}},
		{args: []string{"-o", "wide"}, want: map[string]string{"NAME": "tally", "SUCCEEDED": "2", "FAILED": "2", "STOPPED": "2"}},
	} {
		out, err := k.run(t, append([]string{"--namespace", ns, "get", "changegroups", "tally"}, tc.args...)...)
		if err != nil {
			t.Fatalf("kubectl get changegroups %v: %v\n%s", tc.args, err, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			t.Fatalf("kubectl get changegroups %v printed %d lines, want a header and one row:\n%s", tc.args, len(lines), out)
		}
		columns := tableColumns(lines[0], lines[1])
		for col, want := range tc.want {
			if got, ok := columns[col]; !ok || got != want {
				t.Errorf("kubectl get changegroups %v: column %s is %q, want %s:\n%s", tc.args, col, got, want, out)
			}
		}
		if _, ok := columns["STOPPED"]; ok && len(tc.args) == 0 {
			t.Errorf("kubectl get changegroups shows STOPPED without -o wide:\n%s", out)
		}
	}
}

// TestACrashAfterTheLedgerWriteCountsOnce: the manager stops right after a run of two groups was
// counted in both and before its ledger finalizer is removed; the new manager releases the run
// again, which finds it no longer active and counts nothing: each group counts it once.
func TestACrashAfterTheLedgerWriteCountsOnce(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	t.Cleanup(func() { ledgerReleased.Store(nil) })
	crash := newManagerCrash()
	hook := crash.in(ns)
	ledgerReleased.Store(&hook)
	run := inGroup(ns, "crash", "g1", false)
	run.Spec.ChangeGroups = []string{"g1", "g2"}
	createRun(t, run)
	complete(t, ns, "crash", "only", rsv1.TaskPhaseSuccess)
	crash.wait(t, "the release of the run")
	if got := getRun(t, ns, "crash"); !slices.Contains(got.Finalizers, rsv1.FinalizerChangeGroupLedger) {
		t.Fatalf("finalizers %v after the crash, want %s still there", got.Finalizers, rsv1.FinalizerChangeGroupLedger)
	}
	for _, g := range run.Spec.ChangeGroups {
		expectFinished(t, ns, g, rsv1.FinishedRuns{Success: 1})
	}
	ledgerReleased.Store(nil)
	if err := startManager(); err != nil {
		t.Fatal(err)
	}
	waitLedgerFinalizerGone(t, ns, "crash")
	for _, g := range run.Spec.ChangeGroups {
		expectFinished(t, ns, g, rsv1.FinishedRuns{Success: 1})
	}
}

// TestCountingChangesTheTokenAsOftenAsBefore: over the life of a run the group's resourceVersion
// changes exactly as it did before runs were counted (measured on the code before: the group's
// creation, then two ledger writes), and a count changes only in the write that takes the run out
// of activeRuns. For a run that starts and finishes, one stopped while queued (never counted) and
// one deleted while running.
func TestCountingChangesTheTokenAsOftenAsBefore(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	w := watchGroups(t, ns)
	check := func(t *testing.T, group string, want rsv1.FinishedRuns) {
		t.Helper()
		versions := w.versions(group, 3*time.Second)
		var trail []string
		for _, cg := range versions {
			trail = append(trail, fmt.Sprintf("rv %s active %v queued %d finished %+v", cg.ResourceVersion, cg.Status.ActiveRuns, cg.Status.QueuedRuns, cg.Status.Finished))
		}
		// Before counting: created, then 2 ledger writes (admission or queuing, then release or dequeuing).
		if len(versions) != 3 {
			t.Fatalf("group %s went through %d versions, want 3 as before counting:\n%s", group, len(versions), strings.Join(trail, "\n"))
		}
		for i := 1; i < len(versions); i++ {
			prev, cur := versions[i-1].Status, versions[i].Status
			left := len(cur.ActiveRuns) < len(prev.ActiveRuns)
			if counted := cur.Finished != prev.Finished; counted != left {
				t.Errorf("group %s: a count changed (%v) apart from a run leaving activeRuns (%v):\n%s", group, counted, left, strings.Join(trail, "\n"))
			}
		}
		if got := versions[len(versions)-1].Status.Finished; got != want {
			t.Errorf("group %s finished %+v, want %+v", group, got, want)
		}
	}

	t.Run("finished", func(t *testing.T) {
		createRun(t, inGroup(ns, "started", "started", false))
		complete(t, ns, "started", "only", rsv1.TaskPhaseSuccess)
		waitRunPhase(t, ns, "started", rsv1.RunPhaseFinished)
		waitLedgerFinalizerGone(t, ns, "started")
		check(t, "started", rsv1.FinishedRuns{Success: 1})
	})
	t.Run("stopped while queued", func(t *testing.T) {
		createRun(t, inGroup(ns, "queued", "queued", true))
		settledToken(t, ns, "queued", 1)
		updateRun(t, ns, "queued", func(r *rsv1.Run) { r.Spec.Stop = ptr.To(true) })
		waitRunPhase(t, ns, "queued", rsv1.RunPhaseCancelled)
		waitLedgerFinalizerGone(t, ns, "queued")
		check(t, "queued", rsv1.FinishedRuns{})
	})
	t.Run("deleted while running", func(t *testing.T) {
		createRun(t, inGroup(ns, "deleted", "deleted", false))
		et := waitTask(t, ns, "deleted", "only")
		report(t, ns, et.Name, rsv1.TaskPhaseRunning, "")
		waitRunPhase(t, ns, "deleted", rsv1.RunPhaseRunning)
		if err := k8s.Delete(context.Background(), getRun(t, ns, "deleted")); err != nil {
			t.Fatal(err)
		}
		waitLedgerFinalizerGone(t, ns, "deleted")
		report(t, ns, et.Name, rsv1.TaskPhaseStopped, "")
		waitRunPhase(t, ns, "deleted", rsv1.RunPhaseFinished)
		check(t, "deleted", rsv1.FinishedRuns{Stopped: 1})
	})
}

// TestChangeGroupControllerKeepsTheCounts: in a group with maxActiveRuns the changegroup controller
// writes the ledger (starting runs, counting queued ones) while the run controller counts finished
// ones in it: no count is lost or rewritten.
func TestChangeGroupControllerKeepsTheCounts(t *testing.T) {
	const runs = 8
	ns := newNamespace(t)
	autoExecutor(t, ns, "ex1", 200*time.Millisecond)
	cg := &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: "limited", Namespace: ns}, Spec: rsv1.ChangeGroupSpec{MaxActiveRuns: ptr.To[int32](2)}}
	if err := k8s.Create(context.Background(), cg); err != nil {
		t.Fatal(err)
	}
	w := watchGroups(t, ns)
	for i := range runs {
		createRun(t, inGroup(ns, fmt.Sprintf("r%d", i), "limited", false))
	}
	eventually(t, 2*time.Minute, "every run counted", func() (bool, error) {
		g := getGroup(t, ns, "limited")
		return g.Status.Finished.Success == runs && len(g.Status.ActiveRuns) == 0 && g.Status.QueuedRuns == 0, nil
	})
	// Every version of the group, up to the controllers' last writes: a count never goes down.
	versions := w.versions("limited", 2*time.Second)
	for i := 1; i < len(versions); i++ {
		if prev, cur := versions[i-1].Status.Finished.Success, versions[i].Status.Finished.Success; cur < prev {
			t.Errorf("version %s of the group counts %d successes, the one before %d", versions[i].ResourceVersion, cur, prev)
		}
	}
	expectFinished(t, ns, "limited", rsv1.FinishedRuns{Success: runs})
}

// tableColumns reads a row of kubectl's table by the header's column offsets (an empty cell leaves
// no field to split on).
func tableColumns(header, row string) map[string]string {
	out := map[string]string{}
	names := strings.Fields(header)
	for i, name := range names {
		start := strings.Index(header, name)
		end := len(row)
		if i+1 < len(names) {
			end = min(end, strings.Index(header, names[i+1]))
		}
		if start < len(row) {
			out[name] = strings.TrimSpace(row[start:end])
		}
	}
	return out
}

func expectFinished(t *testing.T, ns, group string, want rsv1.FinishedRuns) {
	t.Helper()
	if got := getGroup(t, ns, group).Status.Finished; got != want {
		t.Errorf("group %s finished %+v, want %+v", group, got, want)
	}
}

func waitLedgerFinalizerGone(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, 30*time.Second, "run "+name+" released from its groups", func() (bool, error) {
		run := &rsv1.Run{}
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, run)
		return client.IgnoreNotFound(err) == nil && !slices.Contains(run.Finalizers, rsv1.FinalizerChangeGroupLedger), client.IgnoreNotFound(err)
	})
}

// groupWatch records every version of the change groups of a namespace from the moment it starts.
type groupWatch struct {
	events chan *rsv1.ChangeGroup
}

func watchGroups(t *testing.T, ns string) *groupWatch {
	t.Helper()
	wc, err := client.NewWithWatch(env.Config, client.Options{Scheme: k8s.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	w, err := wc.Watch(context.Background(), &rsv1.ChangeGroupList{}, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	g := &groupWatch{events: make(chan *rsv1.ChangeGroup, 1000)}
	go func() {
		defer close(g.events)
		for ev := range w.ResultChan() {
			if cg, ok := ev.Object.(*rsv1.ChangeGroup); ok && (ev.Type == watch.Added || ev.Type == watch.Modified) {
				g.events <- cg
			}
		}
	}()
	return g
}

// versions returns the versions of group seen since the last call, once none came for quiet.
func (g *groupWatch) versions(group string, quiet time.Duration) []*rsv1.ChangeGroup {
	var out []*rsv1.ChangeGroup
	for {
		select {
		case cg, ok := <-g.events:
			if !ok {
				return out
			}
			if cg.Name == group {
				out = append(out, cg)
			}
		case <-time.After(quiet):
			return out
		}
	}
}
