package controllers_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/runops"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

// clientset is the typed clientset runctl and its web view talk through (runops takes it).
func clientset(t *testing.T) versioned.Interface {
	t.Helper()
	c, err := versioned.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// chain is a → b → c, with d on its own: a restart from failed tasks of a run where b failed
// keeps a and d, and runs b and c again.
func chain(ns, name string) *rsv1.Run {
	return newRun(ns, name, task("a"), task("b", dependsOn("a")), task("c", dependsOn("b")), task("d"))
}

// failB runs ns/name (a chain) to its end with b failed: a and d succeed, c is skipped.
func failB(t *testing.T, ns, name string) *rsv1.Run {
	t.Helper()
	complete(t, ns, name, "a", rsv1.TaskPhaseSuccess)
	complete(t, ns, name, "d", rsv1.TaskPhaseSuccess)
	complete(t, ns, name, "b", rsv1.TaskPhaseFailed)
	run := waitRunPhase(t, ns, name, rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultFailed || taskStatus(run, "c").Phase != rsv1.TaskPhaseSkipped {
		t.Fatalf("original run: result %s, c %s; want Failed, c Skipped", run.Status.Result, taskStatus(run, "c").Phase)
	}
	return run
}

// checkKept checks that task name of restart is the original's, untouched: Success with its times,
// executor and ExecutorTask, fromRun naming it, and no ExecutorTask of the restart.
func checkKept(t *testing.T, restart, orig *rsv1.Run, name string) {
	t.Helper()
	got, want := taskStatus(restart, name), taskStatus(orig, name)
	if got.Phase != rsv1.TaskPhaseSuccess || got.FromRun != orig.Name || got.FromRunUID != orig.UID {
		t.Errorf("kept task %s: phase %s fromRun %q/%s, want Success from %s/%s", name, got.Phase, got.FromRun, got.FromRunUID, orig.Name, orig.UID)
	}
	if got.Executor != want.Executor || got.ExecutorTask != want.ExecutorTask || !got.StartTime.Equal(want.StartTime) || !got.EndTime.Equal(want.EndTime) {
		t.Errorf("kept task %s is not the original's: executor %s/%s times %v–%v, want %s/%s %v–%v", name,
			got.Executor, got.ExecutorTask, got.StartTime, got.EndTime, want.Executor, want.ExecutorTask, want.StartTime, want.EndTime)
	}
	noTask(t, restart.Namespace, restart.Name, name)
}

// TestRestartFromFailedTasksKeepsWhatSucceeded: a restart from failed tasks of a run where b
// failed has a and d Success from the original from its first status on (never scheduled: no
// ExecutorTask), b runs again with a's ExecutorTask of the original as its workspace source, and
// c after it; the restart points back to the original by status and label.
func TestRestartFromFailedTasksKeepsWhatSucceeded(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	orig := failB(t, ns, createRun(t, chain(ns, "release")).Name)

	restart, err := runops.Restart(context.Background(), clientset(t), ns, orig.Name, runops.RestartOptions{FailedTasksOnly: true})
	if err != nil {
		t.Fatalf("restarting: %v", err)
	}
	if restart.Spec.RestartFrom.UID != orig.UID || restart.Labels[rsv1.LabelRestartedFrom] != orig.Name {
		t.Errorf("restart: spec.restartFrom %+v, labels %v; want the original's uid and label %s=%s", restart.Spec.RestartFrom, restart.Labels, rsv1.LabelRestartedFrom, orig.Name)
	}
	b := waitTask(t, ns, restart.Name, "b")
	// The first status write holds the kept tasks. It follows the creation of b's ExecutorTask
	// in the same advance, so it is waited for: b cannot end before the test reports it.
	first := waitRunPhase(t, ns, restart.Name, rsv1.RunPhaseRunning)
	if rf := first.Status.RestartedFrom; rf == nil || rf.Name != orig.Name || rf.UID != orig.UID {
		t.Errorf("status.restartedFrom = %+v, want %s/%s", rf, orig.Name, orig.UID)
	}
	checkKept(t, first, orig, "a")
	checkKept(t, first, orig, "d")
	origA := taskStatus(orig, "a").ExecutorTask
	if !slices.Equal(b.Spec.WorkspaceSources, []string{origA}) || len(b.Spec.KeptSources) != 1 ||
		b.Spec.KeptSources[0].ExecutorTask != origA || b.Spec.KeptSources[0].Run != (rsv1.RunReference{Name: orig.Name, UID: orig.UID}) {
		t.Errorf("b's workspace: sources %v kept %+v; want the original's %s, kept from %s", b.Spec.WorkspaceSources, b.Spec.KeptSources, origA, orig.Name)
	}

	report(t, ns, b.Name, rsv1.TaskPhaseRunning, "")
	report(t, ns, b.Name, rsv1.TaskPhaseSuccess, "")
	complete(t, ns, restart.Name, "c", rsv1.TaskPhaseSuccess)
	done := waitRunPhase(t, ns, restart.Name, rsv1.RunPhaseFinished)
	if done.Status.Result != rsv1.RunResultSuccess || done.Status.Progress != "4/4" {
		t.Errorf("restart ended %s %s, want Success 4/4", done.Status.Result, done.Status.Progress)
	}
	checkKept(t, done, orig, "a")
	checkKept(t, done, orig, "d")
	for _, name := range []string{"b", "c"} {
		if ts := taskStatus(done, name); ts.FromRun != "" || ts.Phase != rsv1.TaskPhaseSuccess {
			t.Errorf("task %s: %s fromRun %q, want run again to Success", name, ts.Phase, ts.FromRun)
		}
	}

	// A restart of the restart keeps a and d from the run they first ran in, and b and c from it.
	again, err := runops.Restart(context.Background(), clientset(t), ns, done.Name, runops.RestartOptions{FailedTasksOnly: true})
	if err != nil {
		t.Fatalf("restarting the restart: %v", err)
	}
	again = waitRunPhase(t, ns, again.Name, rsv1.RunPhaseFinished)
	checkKept(t, again, orig, "a")
	checkKept(t, again, done, "c")
	if again.Status.Result != rsv1.RunResultSuccess {
		t.Errorf("restart of a successful restart ended %s, want Success with every task kept", again.Status.Result)
	}
}

// TestRestartFromScratchRunsEverything: a restart that is not from failed tasks runs every task
// again, keeps none, and still points back to the original.
func TestRestartFromScratchRunsEverything(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	orig := failB(t, ns, createRun(t, chain(ns, "release")).Name)

	restart, err := runops.Restart(context.Background(), clientset(t), ns, orig.Name, runops.RestartOptions{})
	if err != nil {
		t.Fatalf("restarting: %v", err)
	}
	for _, name := range []string{"a", "d", "b", "c"} {
		complete(t, ns, restart.Name, name, rsv1.TaskPhaseSuccess)
	}
	done := waitRunPhase(t, ns, restart.Name, rsv1.RunPhaseFinished)
	if rf := done.Status.RestartedFrom; rf == nil || rf.UID != orig.UID || done.Labels[rsv1.LabelRestartedFrom] != orig.Name {
		t.Errorf("restart points back to %+v, label %q; want %s", rf, done.Labels[rsv1.LabelRestartedFrom], orig.Name)
	}
	for _, ts := range done.Status.Tasks {
		if ts.FromRun != "" || ts.Phase != rsv1.TaskPhaseSuccess || ts.ExecutorTask == taskStatus(orig, ts.Name).ExecutorTask {
			t.Errorf("task %s: %s fromRun %q ExecutorTask %s; want run again", ts.Name, ts.Phase, ts.FromRun, ts.ExecutorTask)
		}
	}
}

// TestRestartOfAnArchivedRun: a run archived and gone from etcd is restarted by name alone:
// admission finds its uid in the archive, and the restart keeps what succeeded from the archived
// document.
func TestRestartOfAnArchivedRun(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	// Archived only once the test has seen it end: at archive-after 0s from its create, it could
	// leave etcd between two looks for its end.
	orig := failB(t, ns, createRun(t, chain(ns, "nightly")).Name)
	base := orig.DeepCopy()
	archivedSoon(orig, "0s")
	if err := k8s.Patch(context.Background(), orig, client.MergeFrom(base)); err != nil {
		t.Fatalf("archiving run %s now: %v", orig.Name, err)
	}
	waitArchived(t, orig)

	restart := chain(ns, "nightly-again")
	restart.Spec.RestartFrom = &rsv1.RunRestart{Run: orig.Name, FailedTasksOnly: true}
	createRun(t, restart)
	if restart.Spec.RestartFrom.UID != orig.UID || restart.Labels[rsv1.LabelRestartedFrom] != orig.Name {
		t.Errorf("admission set restartFrom.uid %q and label %q, want the archived run's %s and %s", restart.Spec.RestartFrom.UID, restart.Labels[rsv1.LabelRestartedFrom], orig.UID, orig.Name)
	}
	complete(t, ns, restart.Name, "b", rsv1.TaskPhaseSuccess)
	complete(t, ns, restart.Name, "c", rsv1.TaskPhaseSuccess)
	done := waitRunPhase(t, ns, restart.Name, rsv1.RunPhaseFinished)
	checkKept(t, done, orig, "a")
	checkKept(t, done, orig, "d")
	if done.Status.Result != rsv1.RunResultSuccess {
		t.Errorf("restart ended %s, want Success", done.Status.Result)
	}
}

// TestRestartAdmission: admission refuses, naming the field, a restart of a run that has not
// ended, of a run that is nowhere, with a uid that is not the run's, and a restarted-from label a
// run may not claim.
func TestRestartAdmission(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	ctx := context.Background()
	running := createRun(t, newRun(ns, "running", task("a")))
	report(t, ns, waitTask(t, ns, running.Name, "a").Name, rsv1.TaskPhaseRunning, "")
	done := createRun(t, newRun(ns, "done", task("a")))
	complete(t, ns, done.Name, "a", rsv1.TaskPhaseSuccess)
	waitRunPhase(t, ns, done.Name, rsv1.RunPhaseFinished)

	restartOf := func(name string, uid types.UID) *rsv1.Run {
		r := newRun(ns, "", task("a"))
		r.GenerateName = "r-"
		r.Spec.RestartFrom = &rsv1.RunRestart{Run: name, UID: uid, FailedTasksOnly: true}
		return r
	}
	tests := []struct {
		name        string
		run         *rsv1.Run
		path, reads string
	}{
		{"a running run", restartOf("running", ""), "spec.restartFrom.run", "run running is still Running: stop it"},
		{"a run that is nowhere", restartOf("nowhere", ""), "spec.restartFrom.run", "there is no run nowhere"},
		{"another run's uid", restartOf("done", running.UID), "spec.restartFrom.uid", "is neither the live run done's"},
		{"a uid no run of the name ever had", restartOf("nowhere", running.UID), "spec.restartFrom.run", "there is no run nowhere"},
		// Names that are no object names are refused as such, before any lookup: a path in the object
		// store must not be built of them.
		{"a run name that is a path", restartOf("../other-namespace/done", ""), "spec.restartFrom.run", "a lowercase RFC 1123 subdomain"},
		{"a uid that is a path", restartOf("done", "../../x/done/u"), "spec.restartFrom.uid", "may not contain '/'"},
		{"a forged restarted-from label", func() *rsv1.Run {
			r := newRun(ns, "forged", task("a"))
			r.Labels = map[string]string{rsv1.LabelRestartedFrom: "done"}
			return r
		}(), "metadata.labels[" + rsv1.LabelRestartedFrom + "]", "only a restart has it"},
		{"a restarted-from label naming another run", func() *rsv1.Run {
			r := restartOf("done", "")
			r.Labels = map[string]string{rsv1.LabelRestartedFrom: "running"}
			return r
		}(), "metadata.labels[" + rsv1.LabelRestartedFrom + "]", "set at admission"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := k8s.Create(ctx, tt.run)
			if !apierrors.IsInvalid(err) && !apierrors.IsForbidden(err) {
				t.Fatalf("create: %v, want refused", err)
			}
			expectFieldError(t, err.Error(), tt.path, tt.reads)
		})
	}
	// runops refuses it too, before asking, saying what to do.
	if _, err := runops.Restart(ctx, clientset(t), ns, "running", runops.RestartOptions{}); err == nil {
		t.Errorf("runops.Restart of a running run succeeded")
	}
	// The label cannot be forged later either.
	ok := createRun(t, newRun(ns, "plain", task("a")))
	ok.Labels = map[string]string{rsv1.LabelRestartedFrom: "done"}
	if err := k8s.Update(ctx, ok); err == nil {
		t.Errorf("adding a restarted-from label to a run that restarts nothing was accepted")
	}
}

// TestRestartIntoChangeGroupsWithAStaleToken: a restart joins the original's change groups, and
// the update token applies to its create as to any run's: a stale token is refused with 409 and
// nothing is created; a fresh one admits it.
func TestRestartIntoChangeGroupsWithAStaleToken(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	ctx := context.Background()
	orig := chain(ns, "deploy")
	orig.Spec.ChangeGroups = []string{"prod"}
	orig = failB(t, ns, createRun(t, orig).Name)

	cg := &rsv1.ChangeGroup{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "prod"}, cg); err != nil {
		t.Fatal(err)
	}
	stale := rsv1.UpdateToken(cg)
	other := newRun(ns, "other", task("a"))
	other.Spec.ChangeGroups = []string{"prod"}
	createRun(t, other) // the group moves on: the token read before is spent
	_, err := runops.Restart(ctx, clientset(t), ns, orig.Name, runops.RestartOptions{FailedTasksOnly: true, UpdateToken: stale})
	if !apierrors.IsConflict(err) {
		t.Fatalf("restart with a stale token: %v, want 409 Conflict", err)
	}
	var runs rsv1.RunList
	if err := k8s.List(ctx, &runs, client.InNamespace(ns), client.MatchingLabels{rsv1.LabelRestartedFrom: orig.Name}); err != nil || len(runs.Items) != 0 {
		t.Fatalf("a refused restart left %d runs (err %v)", len(runs.Items), err)
	}

	var restart *rsv1.Run
	eventually(t, 30*time.Second, "a fresh token admits the restart", func() (bool, error) {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(cg), cg); err != nil {
			return false, err
		}
		restart, err = runops.Restart(ctx, clientset(t), ns, orig.Name, runops.RestartOptions{FailedTasksOnly: true, UpdateToken: rsv1.UpdateToken(cg)})
		if apierrors.IsConflict(err) {
			return false, nil // the ledger moved meanwhile (the other run started)
		}
		return err == nil, err
	})
	if !slices.Equal(restart.Spec.ChangeGroups, []string{"prod"}) {
		t.Errorf("restart's change groups %v, want the original's", restart.Spec.ChangeGroups)
	}
	waitTask(t, ns, restart.Name, "b") // admitted into the group and running
}

// onRestartReading calls f each time the manager is about to read the run that a restart in
// namespace ns restarts, with the count of such reads so far (from 1), until the test ends; an
// error of f fails the read. It returns the count.
func onRestartReading(t *testing.T, ns string, f func(run types.NamespacedName, n int64) error) *atomic.Int64 {
	var reads atomic.Int64
	hook := func(run types.NamespacedName) error {
		if run.Namespace != ns {
			return nil
		}
		return f(run, reads.Add(1))
	}
	restartReading.Store(&hook)
	t.Cleanup(func() { restartReading.Store(nil) })
	return &reads
}

// TestARestartWhoseOriginalIsGoneIsASetupError: while the restarted run cannot be read (the
// object store down), the restart waits, undecided, and the manager tries again; once it reads
// that the run is gone for good (deleted without being archived meanwhile), the restart ends
// SetupError with a condition saying so, and nothing of it runs.
func TestARestartWhoseOriginalIsGoneIsASetupError(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	ctx := context.Background()
	orig := failB(t, ns, createRun(t, chain(ns, "doomed")).Name)

	var down atomic.Bool
	down.Store(true)
	reads := onRestartReading(t, ns, func(types.NamespacedName, int64) error {
		if down.Load() {
			return errors.New("the object store is down")
		}
		return nil
	})

	restart, err := runops.Restart(ctx, clientset(t), ns, orig.Name, runops.RestartOptions{FailedTasksOnly: true})
	if err != nil {
		t.Fatalf("restarting: %v", err)
	}
	eventually(t, 30*time.Second, "the manager trying again to read the restarted run", func() (bool, error) {
		return reads.Load() >= 3, nil
	})
	if phase := getRun(t, ns, restart.Name).Status.Phase; phase != "" {
		t.Fatalf("the restart is %s before its original was read, want undecided", phase)
	}
	// Gone for good: deleted without its archive.
	updateRun(t, ns, orig.Name, func(r *rsv1.Run) { r.Finalizers = nil })
	if err := k8s.Delete(ctx, orig); client.IgnoreNotFound(err) != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the original gone", func() (bool, error) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(orig), &rsv1.Run{})
		return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
	})
	down.Store(false)

	done := waitRunPhase(t, ns, restart.Name, rsv1.RunPhaseSetupError)
	c := meta.FindStatusCondition(done.Status.Conditions, "Valid")
	if c == nil || c.Status != metav1.ConditionFalse || c.Reason != rsv1.ReasonRestartedRunGone || !strings.Contains(c.Message, "spec.restartFrom: no run doomed with uid "+string(orig.UID)) {
		t.Errorf("condition Valid = %+v, want False %s naming the run", c, rsv1.ReasonRestartedRunGone)
	}
	if done.Status.Result != rsv1.RunResultFailed || len(done.Status.Tasks) != 0 {
		t.Errorf("restart ended %s with tasks %+v, want Failed with none", done.Status.Result, done.Status.Tasks)
	}
	for _, name := range []string{"a", "b", "c", "d"} {
		noTask(t, ns, restart.Name, name)
	}
}

// TestAKeptTaskNeverHasAnExecutorTask: which tasks a restart keeps is decided on its first advance,
// and that advance creates the ExecutorTasks of the tasks it does not keep before its status write.
// When that write fails (a conflict here; a manager crash alike) the next advance decides again,
// and the original may have changed meanwhile: its build's workspace, not fetched at the first
// advance, is fetched at the second. build then has an ExecutorTask of the restart (created by the
// first advance, and executed) and must not be reported kept from the original as well: it runs
// again, on that ExecutorTask, and test restores its workspace, not the original's.
func TestAKeptTaskNeverHasAnExecutorTask(t *testing.T) {
	ns := newNamespace(t)
	// An endpoint that answers 503 for archives: the original's fetch stays pending until the
	// test marks it done.
	srv := serveExecutor(t, ns, http.StatusServiceUnavailable)
	startExecutor(t, ns, "ex1", withEndpoint(srv.URL))
	ctx := context.Background()
	orig := createRun(t, buildAndTest(ns))
	reportSaved(t, ns, waitTask(t, ns, orig.Name, "build").Name)
	// test waits for build's workspace to be fetched: stopped, it is cancelled, and the run ends
	// (Finished, Stopped).
	if _, err := runops.Stop(ctx, clientset(t), ns, orig.Name); err != nil {
		t.Fatal(err)
	}
	orig = waitRunPhase(t, ns, orig.Name, rsv1.RunPhaseFinished)
	origBuild := taskStatus(orig, "build").ExecutorTask

	var hookErr atomic.Pointer[error]
	fail := func(err error) {
		if err != nil {
			hookErr.CompareAndSwap(nil, &err)
		}
	}
	reads := onRestartReading(t, ns, func(run types.NamespacedName, n int64) error {
		switch n {
		case 1:
			// The run changes under the first advance: its status write conflicts.
			fail(k8s.Patch(ctx, &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: run.Name}},
				client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"touched":"yes"}}}`))))
		case 2:
			// Meanwhile the original's build is fetched.
			fail(k8s.Patch(ctx, &rsv1.ExecutorTask{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: origBuild}},
				client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"`+rsv1.AnnotationFetched+`":"2026-12-01T00:00:00Z"}}}`))))
		}
		return nil
	})

	restart, err := runops.Restart(ctx, clientset(t), ns, orig.Name, runops.RestartOptions{FailedTasksOnly: true})
	if err != nil {
		t.Fatalf("restarting: %v", err)
	}
	eventually(t, 30*time.Second, "the restart's first status", func() (bool, error) {
		return getRun(t, ns, restart.Name).Status.Phase != "", nil
	})
	if p := hookErr.Load(); p != nil {
		t.Fatalf("the fault hook: %v", *p)
	}
	if reads.Load() < 2 {
		t.Fatalf("the restarted run was read %d times, want a second advance after the conflict", reads.Load())
	}
	got := getRun(t, ns, restart.Name)
	build, err := runTask(ns, restart.Name, "build")
	if err != nil {
		t.Fatal(err)
	}
	if ts := taskStatus(got, "build"); build != nil && ts.FromRun != "" {
		t.Fatalf("build has ExecutorTask %s of the restart and is reported kept from %s (%s, ExecutorTask %s): "+
			"it ran in the restart, and its result and workspace would be ignored", build.Name, ts.FromRun, ts.Phase, ts.ExecutorTask)
	}
	if build == nil {
		t.Fatalf("build has no ExecutorTask of the restart: the first advance did not schedule it (test setup)")
	}
	// build runs again on that ExecutorTask; test restores its workspace, from this run.
	srv.archiveStatus.Store(http.StatusOK)
	reportSaved(t, ns, build.Name)
	test := waitTask(t, ns, restart.Name, "test")
	if len(test.Spec.KeptSources) != 0 || !slices.Equal(test.Spec.WorkspaceSources, []string{build.Name}) {
		t.Errorf("test restores %v (kept %+v), want the restart's build %s", test.Spec.WorkspaceSources, test.Spec.KeptSources, build.Name)
	}
}

// TestARestartOfARestartRunsAgainWhatIsNoLongerStored: a restart of a restart keeps a task from the
// run it first ran in, where its workspace archives are kept. Once they are gone from there (that
// run expired by the archive's retention while the restart that kept it did not), the task is not
// kept again: it runs again, instead of its child failing on an archive that is not there.
func TestARestartOfARestartRunsAgainWhatIsNoLongerStored(t *testing.T) {
	ns := newNamespace(t)
	srv := serveExecutor(t, ns, http.StatusOK)
	startExecutor(t, ns, "ex1", withEndpoint(srv.URL))
	ctx := context.Background()
	first := createRun(t, buildAndTest(ns))
	build := waitTask(t, ns, first.Name, "build")
	reportSaved(t, ns, build.Name)
	complete(t, ns, first.Name, "test", rsv1.TaskPhaseFailed) // scheduled once build's archive is fetched
	first = waitRunPhase(t, ns, first.Name, rsv1.RunPhaseFinished)

	second, err := runops.Restart(ctx, clientset(t), ns, first.Name, runops.RestartOptions{FailedTasksOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	complete(t, ns, second.Name, "test", rsv1.TaskPhaseFailed)
	second = waitRunPhase(t, ns, second.Name, rsv1.RunPhaseFinished)
	checkKept(t, second, first, "build")

	// The first run's data expires: build's archive is gone from the store.
	store := openStore(t)
	key := objectstore.Task{Namespace: ns, Run: first.Name, RunUID: string(first.UID), ExecutorTask: build.Name}.ArchiveKey(1)
	if ok, err := store.Exists(ctx, key); err != nil || !ok {
		t.Fatalf("build's archive %s: exists %v, %v; want stored (test setup)", key, ok, err)
	}
	if err := store.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}

	third, err := runops.Restart(ctx, clientset(t), ns, second.Name, runops.RestartOptions{FailedTasksOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the third run's first status", func() (bool, error) {
		return getRun(t, ns, third.Name).Status.Phase != "", nil
	})
	if ts := taskStatus(getRun(t, ns, third.Name), "build"); ts.FromRun != "" {
		t.Fatalf("build of the third run is kept from %s, whose archive %s is gone: test can only fail restoring it", ts.FromRun, key)
	}
	again := waitTask(t, ns, third.Name, "build")
	reportSaved(t, ns, again.Name)
	test := waitTask(t, ns, third.Name, "test")
	if len(test.Spec.KeptSources) != 0 || !slices.Equal(test.Spec.WorkspaceSources, []string{again.Name}) {
		t.Errorf("test of the third run restores %v (kept %+v), want its own build %s", test.Spec.WorkspaceSources, test.Spec.KeptSources, again.Name)
	}
}
