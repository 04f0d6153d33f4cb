package controllers_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/ledger"
	"runservice.dev/runservice/internal/testenv"
)

// autoExecutor registers an executor that finishes every task it gets after a short while.
func autoExecutor(t *testing.T, ns, name string, after time.Duration) {
	t.Helper()
	ex := startExecutor(t, ns, name)
	testenv.FinishTasks(t, k8s, ns, ex.name, after)
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
	w := testenv.WatchLimit(t, ctx, env.Config, ns)
	started, conflicts := testenv.RaceSchedulers(ctx, t, k8s, ns, "project-a", runs, schedulers, limit)
	if ctx.Err() != nil {
		t.Fatalf("not every run finished in time: started %d", started)
	}
	cancel()
	<-w.Done
	t.Logf("started %d runs, %d conflicting attempts, max active %d, max running %d", started, conflicts, w.MaxActive.Load(), w.MaxRunning.Load())
	if w.MaxActive.Load() > limit || w.MaxRunning.Load() > limit {
		t.Fatalf("saw %d active and %d running runs, limit %d", w.MaxActive.Load(), w.MaxRunning.Load(), limit)
	}
	if started != runs {
		t.Fatalf("started %d runs, want %d", started, runs)
	}
	if conflicts == 0 {
		t.Fatalf("no conflicting attempt: the test did not race")
	}
	// The run controller releases a run from its groups right after it wrote the run's end, which
	// the schedulers may see first.
	eventually(t, 10*time.Second, "no active run once every run finished", func() (bool, error) {
		if cg := getGroup(t, ns, "project-a"); len(cg.Status.ActiveRuns) != 0 {
			return false, fmt.Errorf("active runs %v", cg.Status.ActiveRuns)
		}
		return true, nil
	})
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
	// The slot is free at once; the run itself stays until its task has stopped and it is archived.
	eventually(t, 30*time.Second, "the slot released", func() (bool, error) {
		return len(getGroup(t, ns, "grp").Status.ActiveRuns) == 0, nil
	})
	et := waitTask(t, ns, "doomed", "only")
	report(t, ns, et.Name, rsv1.TaskPhaseStopped, "")
	eventually(t, 30*time.Second, "the run gone", func() (bool, error) {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "doomed"}, &rsv1.Run{})
		return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
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

// withToken sets the update token annotation on run, keeping its other annotations.
func withToken(run *rsv1.Run, token string) *rsv1.Run {
	if run.Annotations == nil {
		run.Annotations = map[string]string{}
	}
	run.Annotations[rsv1.AnnotationUpdateToken] = token
	return run
}

// expectGroupConflict checks that err is a 409 Conflict whose message names the group.
func expectGroupConflict(t *testing.T, err error, group string) {
	t.Helper()
	if !apierrors.IsConflict(err) || !strings.Contains(err.Error(), fmt.Sprintf("change group %q", group)) {
		t.Fatalf("got %v, want 409 Conflict naming change group %q", err, group)
	}
}

// settledToken waits until the manager has counted the group's queued runs, so that its own ledger
// write does not change the token under the test, and returns the group's token.
func settledToken(t *testing.T, ns, group string, queued int32) string {
	t.Helper()
	cg := &rsv1.ChangeGroup{}
	eventually(t, 30*time.Second, fmt.Sprintf("group %s counting %d queued runs", group, queued), func() (bool, error) {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: group}, cg)
		return err == nil && cg.Status.QueuedRuns == queued, client.IgnoreNotFound(err)
	})
	return rsv1.UpdateToken(cg)
}

// stale makes the group's current token stale by creating a suspended run in it with that token (a
// compare-and-swap that bumps the group), and returns the now stale token.
func stale(t *testing.T, ns, group string) string {
	t.Helper()
	var token string
	for attempt := 0; ; attempt++ {
		// The manager may write the group (its counts) between the read and the create; the token
		// then went stale without this request, which spent nothing: read it again.
		token = rsv1.UpdateToken(getGroup(t, ns, group))
		err := k8s.Create(context.Background(), withToken(inGroup(ns, "spends-"+token, group, true), token))
		if err == nil {
			break
		}
		if !apierrors.IsConflict(err) || attempt == 10 {
			t.Fatalf("creating run spends-%s: %v", token, err)
		}
	}
	if now := rsv1.UpdateToken(getGroup(t, ns, group)); now == token {
		t.Fatalf("the group's token %s did not change after a request spent it", token)
	}
	return token
}

// TestSameTokenSuspendedCreates: eight clients create suspended runs with the same token at once.
// Creating a suspended run admits nothing, but a request with a token is a compare-and-swap on the
// group whatever it changes: exactly one create succeeds, the others get 409 naming the group and
// their runs do not exist.
func TestSameTokenSuspendedCreates(t *testing.T) {
	const clients = 8
	ns := newNamespace(t)
	if err := k8s.Create(context.Background(), &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: "nightly", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	token := rsv1.UpdateToken(getGroup(t, ns, "nightly"))
	errs := make([]error, clients)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run := withToken(inGroup(ns, fmt.Sprintf("client%d", i), "nightly", true), token)
			<-start
			errs[i] = k8s.Create(context.Background(), run)
		}()
	}
	close(start)
	wg.Wait()
	won := 0
	for i, err := range errs {
		name := fmt.Sprintf("client%d", i)
		if err == nil {
			won++
			continue
		}
		expectGroupConflict(t, err, "nightly")
		if getErr := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &rsv1.Run{}); !apierrors.IsNotFound(getErr) {
			t.Errorf("the losing run %s exists (get: %v)", name, getErr)
		}
	}
	if won != 1 {
		t.Fatalf("%d of %d same-token creates succeeded, want exactly one (%v)", won, clients, errs)
	}
}

// TestStaleTokenIsRefused: a token that another request has spent is refused with 409 on every
// mutating request that carries it, and the request changes nothing.
func TestStaleTokenIsRefused(t *testing.T) {
	ns := newNamespace(t)
	createRun(t, inGroup(ns, "waiting", "prod", true, task("build"), task("deploy", dependsOn("build"), needsApproval())))
	eventually(t, 30*time.Second, "the group to exist", func() (bool, error) {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "prod"}, &rsv1.ChangeGroup{})
		return err == nil, client.IgnoreNotFound(err)
	})
	token := stale(t, ns, "prod")

	t.Run("suspended create", func(t *testing.T) {
		err := k8s.Create(context.Background(), withToken(inGroup(ns, "late", "prod", true), token))
		expectGroupConflict(t, err, "prod")
		if getErr := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "late"}, &rsv1.Run{}); !apierrors.IsNotFound(getErr) {
			t.Fatalf("the refused run exists (get: %v)", getErr)
		}
	})
	for _, tc := range []struct {
		name   string
		change func(*rsv1.Run)
	}{
		{name: "approve", change: func(r *rsv1.Run) { r.Spec.ApprovedTasks = []string{"deploy"} }},
		{name: "stop", change: func(r *rsv1.Run) { r.Spec.Stop = ptr.To(true) }},
		{name: "environment change", change: func(r *rsv1.Run) { r.Spec.Environment = []rsv1.EnvVar{{Name: "TARGET", Value: "eu"}} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A merge patch without the run's resourceVersion, so that the manager's status writes
			// cannot make it fail for another reason.
			before := getRun(t, ns, "waiting")
			run := before.DeepCopy()
			tc.change(withToken(run, token))
			expectGroupConflict(t, k8s.Patch(context.Background(), run, client.MergeFrom(before)), "prod")
			expectRunUnchanged(t, before)
		})
	}
}

// TestSameTokenApproves: two clients approve a task of two runs of one group with the same token:
// exactly one approval is stored, the other gets 409 naming the group.
func TestSameTokenApproves(t *testing.T) {
	ns := newNamespace(t)
	for _, name := range []string{"blue", "green"} {
		createRun(t, inGroup(ns, name, "rollout", true, task("deploy", needsApproval())))
	}
	token := settledToken(t, ns, "rollout", 2)
	runs := []*rsv1.Run{getRun(t, ns, "blue"), getRun(t, ns, "green")}
	errs := make([]error, len(runs))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, run := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A merge patch without the run's resourceVersion: only the group's token orders them.
			patch := client.MergeFrom(run.DeepCopy())
			withToken(run, token).Spec.ApprovedTasks = []string{"deploy"}
			<-start
			errs[i] = k8s.Patch(context.Background(), run, patch)
		}()
	}
	close(start)
	wg.Wait()
	approved := 0
	for i, err := range errs {
		name := runs[i].Name
		if err != nil {
			expectGroupConflict(t, err, "rollout")
		}
		if stored := getRun(t, ns, name); len(stored.Spec.ApprovedTasks) > 0 {
			approved++
			if err != nil {
				t.Errorf("run %s: the approval was refused (%v) but is stored", name, err)
			}
		}
	}
	if approved != 1 {
		t.Fatalf("%d runs approved with one token, want exactly one (%v)", approved, errs)
	}
}

// TestStoredTokenDoesNotBlockLaterWrites: the annotation stays on the run after the request that
// carried it. The manager's own writes (it adds its finalizer with an Update) and a plain patch that
// does not send a new token are not compare-and-swaps and are not refused; removing the annotation is
// allowed; a fresh token is a compare-and-swap again.
func TestStoredTokenDoesNotBlockLaterWrites(t *testing.T) {
	ns := newNamespace(t)
	if err := k8s.Create(context.Background(), &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: "train", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	token := rsv1.UpdateToken(getGroup(t, ns, "train"))
	createRun(t, withToken(inGroup(ns, "carriage", "train", true, task("build"), task("deploy", dependsOn("build"), needsApproval())), token))
	eventually(t, 30*time.Second, "the manager's finalizer on the run", func() (bool, error) {
		return slices.Contains(getRun(t, ns, "carriage").Finalizers, rsv1.FinalizerChangeGroupLedger), nil
	})

	plain := func(body string) error {
		return k8s.Patch(context.Background(), &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "carriage", Namespace: ns}},
			client.RawPatch(types.MergePatchType, []byte(body)))
	}
	out, err := newValidationKubectl(t).run(t, "--namespace", ns, "patch", "run", "carriage", "--type=merge", "-p", `{"spec":{"approvedTasks":["deploy"]}}`)
	if err != nil {
		t.Fatalf("kubectl patch of approvedTasks on a run that stores a spent token: %v\n%s", err, out)
	}
	// It is told that the token it kept made no compare-and-swap.
	if !strings.Contains(out, "Warning: metadata.annotations["+rsv1.AnnotationUpdateToken+"] is the token the run already stores") {
		t.Errorf("kubectl patch did not warn about the spent token:\n%s", out)
	}
	fresh := settledToken(t, ns, "train", 1)
	seq := getGroup(t, ns, "train").Status.Sequence
	if err := plain(fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}},"spec":{"environment":[{"name":"A","value":"1"}]}}`, rsv1.AnnotationUpdateToken, fresh)); err != nil {
		t.Fatalf("patch with a fresh token: %v", err)
	}
	// Nothing else changes the settled group: a new sequence is the compare-and-swap's write.
	if now := getGroup(t, ns, "train").Status.Sequence; now == seq {
		t.Fatalf("a fresh token was not a compare-and-swap: the group's sequence is still %d", seq)
	}
	if err := plain(fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, rsv1.AnnotationUpdateToken)); err != nil {
		t.Fatalf("removing the annotation: %v", err)
	}
	if _, ok := getRun(t, ns, "carriage").Annotations[rsv1.AnnotationUpdateToken]; ok {
		t.Fatalf("the annotation is still there after a patch removed it")
	}
}

// TestAFreshTokenSurvivesTheApiserversRetry: a patch carrying a fresh token is admitted even when the
// apiserver asks the webhook twice. The apiserver applies a patch to the run it holds, asks the
// webhook, and writes at that run's version; when the run changed meanwhile (here another client
// writes its annotations all along, as the manager writes runs under load) it applies the patch again
// to the newer run and asks the webhook again. The first ask spent the token in its compare-and-swap,
// so the second must recognize its own swap, not refuse the token as stale.
func TestAFreshTokenSurvivesTheApiserversRetry(t *testing.T) {
	ns := newNamespace(t)
	if err := k8s.Create(context.Background(), &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: "train", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	createRun(t, inGroup(ns, "carriage", "train", true))
	settledToken(t, ns, "train", 1)
	patchRun := func(name, body string) error {
		return k8s.Patch(context.Background(), &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}},
			client.RawPatch(types.MergePatchType, []byte(body)))
	}
	patch := func(body string) error { return patchRun("carriage", body) }

	ctx, cancel := context.WithCancel(context.Background())
	var writes sync.WaitGroup
	writes.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			_ = patch(fmt.Sprintf(`{"metadata":{"annotations":{"example.com/tick":"%d"}}}`, i))
		}
	})
	defer func() { cancel(); writes.Wait() }()

	const rounds = 40
	body := func(token string, round int) string {
		return fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}},"spec":{"environment":[{"name":"ROUND","value":"%d"}]}}`, rsv1.AnnotationUpdateToken, token, round)
	}
	var first, token string
	for i := range rounds {
		token = rsv1.UpdateToken(getGroup(t, ns, "train"))
		if i == 0 {
			first = token
		}
		if err := patch(body(token, i)); err != nil {
			t.Fatalf("round %d of %d: a patch with the fresh token %s: %v", i, rounds, token, err)
		}
	}
	cancel()
	writes.Wait()

	// A spent token buys nothing else: another change of the run with it is refused, the same change
	// is the same request (the annotation is removed first, so that the run does not store the token:
	// a stored token is not carried at all).
	if err := patch(fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, rsv1.AnnotationUpdateToken)); err != nil {
		t.Fatalf("removing the annotation: %v", err)
	}
	if err := patch(body(token, rounds)); !apierrors.IsConflict(err) || !strings.Contains(err.Error(), `change group "train"`) {
		t.Fatalf("another change with the spent token %s: got %v, want 409 naming the group", token, err)
	}
	if err := patch(body(first, 0)); !apierrors.IsConflict(err) {
		t.Fatalf("round 0's change with its token %s, spent long ago and the spec changed since: got %v, want 409", first, err)
	}
	if err := patch(body(token, rounds-1)); err != nil {
		t.Fatalf("the last round's change asked again with its token %s: %v", token, err)
	}
	// And a run's change is not another run's.
	createRun(t, inGroup(ns, "wagon", "train", true))
	if err := patchRun("wagon", body(token, rounds-1)); !apierrors.IsConflict(err) {
		t.Fatalf("the same change of another run with the spent token %s: got %v, want 409", token, err)
	}
}

// TestAStartAskedAgainAfterItWasUndoneIsRefused: the second ask of a start finds its swap done only
// while the run is still active in the group. When the ledger released it since (an admission rolled
// back because a later group refused, a phantom entry dropped), the start is refused: admitting it
// would start a run its group does not count, which would wait for the group for ever.
func TestAStartAskedAgainAfterItWasUndoneIsRefused(t *testing.T) {
	ns := newNamespace(t)
	if err := k8s.Create(context.Background(), &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: "g", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	l := &ledger.Ledger{Reader: k8s, Writer: k8s}
	token := map[string]string{"g": rsv1.UpdateToken(getGroup(t, ns, "g"))}
	if err := l.Admit(context.Background(), ns, "r", []string{"g"}, token, "c1"); err != nil {
		t.Fatalf("the first ask: %v", err)
	}
	if err := l.Admit(context.Background(), ns, "r", []string{"g"}, token, "c1"); err != nil {
		t.Fatalf("the second ask while the run is active: %v", err)
	}
	if err := l.Admit(context.Background(), ns, "r", []string{"g"}, token, "c2"); !isLedgerConflict(err) {
		t.Fatalf("another change with the spent token: got %v, want a conflict", err)
	}
	if err := l.Release(context.Background(), ns, "r", []string{"g"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Admit(context.Background(), ns, "r", []string{"g"}, token, "c1"); !isLedgerConflict(err) {
		t.Fatalf("the second ask after the run was released: got %v, want a conflict", err)
	}
	if active := getGroup(t, ns, "g").Status.ActiveRuns; len(active) != 0 {
		t.Fatalf("active runs %v, want none", active)
	}
}

func isLedgerConflict(err error) bool {
	var conflict *ledger.ConflictError
	return errors.As(err, &conflict)
}

// TestTokenWithoutChangeGroups: a token on a run without change groups has no group to compare and
// swap; it is refused with 422 naming the annotation, at create and on update.
func TestTokenWithoutChangeGroups(t *testing.T) {
	ns := newNamespace(t)
	check := func(t *testing.T, err error) {
		t.Helper()
		if !apierrors.IsInvalid(err) {
			t.Fatalf("got %v, want 422 Invalid", err)
		}
		expectFieldError(t, err.Error(), "metadata.annotations["+rsv1.AnnotationUpdateToken+"]", "spec.changeGroups")
	}
	t.Run("create", func(t *testing.T) {
		check(t, k8s.Create(context.Background(), withToken(newRun(ns, "loner", task("build")), "42")))
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "loner"}, &rsv1.Run{}); !apierrors.IsNotFound(err) {
			t.Fatalf("the refused run exists (get: %v)", err)
		}
	})
	t.Run("update", func(t *testing.T) {
		createRun(t, newRun(ns, "single", task("build")))
		before := getRun(t, ns, "single")
		check(t, k8s.Patch(context.Background(), withToken(before.DeepCopy(), "42"), client.MergeFrom(before)))
		expectRunUnchanged(t, before)
	})
}
