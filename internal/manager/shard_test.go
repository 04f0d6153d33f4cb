package manager_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/shard"
	"runservice.dev/runservice/internal/testenv"
)

var (
	env       *testenv.Env
	k8s       client.Client
	auditLog  string
	nsCounter atomic.Int64
)

func TestMain(m *testing.M) {
	level := zapcore.ErrorLevel
	if os.Getenv("TEST_LOG") != "" {
		level = zapcore.DebugLevel
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(level)))
	klog.SetLogger(logf.Log) // client-go's leader election logs each Lease it takes
	dir, err := os.MkdirTemp("", "runservice-manager-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	auditLog = dir + "/audit.log"
	env, err = testenv.Start(testenv.WithAuditLog(auditLog))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	k8s, err = client.New(env.Config, client.Options{Scheme: manager.Scheme()})
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	_ = env.Stop()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func newNamespace(t *testing.T, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d", prefix, nsCounter.Add(1))
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}

// dropRunsAtEnd deletes the runs of ns when the test ends, before the managers started until now
// stop (their webhook admits the finalizers' removal): every test has a ring of its own, but the
// sharder of the next one would take this one's runs, as gone members'.
func dropRunsAtEnd(t *testing.T, ns string) {
	t.Cleanup(func() {
		ctx := context.Background()
		var runs rsv1.RunList
		if err := k8s.List(ctx, &runs, client.InNamespace(ns)); err != nil {
			t.Error(err)
			return
		}
		for i := range runs.Items {
			r := &runs.Items[i]
			// Deleted first: the run controller then adds no finalizer back.
			if err := client.IgnoreNotFound(k8s.Delete(ctx, r)); err != nil {
				t.Error(err)
			}
			err := k8s.Patch(ctx, r, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`)))
			if err := client.IgnoreNotFound(err); err != nil {
				t.Error(err)
			}
		}
	})
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testLease is the in-process members' Lease duration: short, yet with a renew deadline (2/3 of
// it) that a loaded machine's apiserver still meets.
const testLease = 4 * time.Second

// sharded returns the options of an in-process ring member: the ring's Leases and the leader's
// election in ring (one namespace per test, so each test has a ring of its own); only the first
// member serves the webhook.
func sharded(ring, me string, webhook bool) func(*manager.Options) {
	return func(o *manager.Options) {
		o.Shards, o.ShardIdentity, o.ShardLeaseDuration = manager.ShardsAuto, me, testLease
		o.Namespace, o.LeaderElection, o.LeaderElectionNS = ring, true, ring
		if !webhook {
			o.WebhookPort = 0
		}
	}
}

func twoTaskRun(ns, name string) *rsv1.Run {
	task := func(name string, after ...string) rsv1.Task {
		t := rsv1.Task{
			Name:       name,
			Containers: []rsv1.Container{{Image: "busybox:1.36"}},
			Steps:      []rsv1.Step{{Run: &rsv1.RunStep{Command: "echo " + name}}},
		}
		for _, a := range after {
			t.Depends = append(t.Depends, rsv1.TaskDependency{Task: a})
		}
		return t
	}
	return &rsv1.Run{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       rsv1.RunSpec{Tasks: []rsv1.Task{task("build"), task("test", "build")}},
	}
}

// playExecutor ends, as their executor would, every ExecutorTask of ns that has not reported yet,
// until the test ends: a fake executor's work for many runs.
func playExecutor(t *testing.T, ns string) {
	playTasks(t, ns).Store("")
}

func succeed(ctx context.Context, et *rsv1.ExecutorTask) error {
	now := metav1.Now()
	exit := int32(0)
	et.Status = rsv1.ExecutorTaskStatus{
		Phase: rsv1.TaskPhaseSuccess, StartTime: &now, EndTime: &now,
		Steps: []rsv1.StepStatus{{Name: "step-0", Phase: rsv1.StepPhaseSuccess, ExitCode: &exit, StartTime: &now, EndTime: &now}},
	}
	return k8s.Status().Update(ctx, et)
}

// owners counts the runs of ns by shard label, and reports whether each is labelled with the
// ring's owner of its key (not drained) and its ExecutorTasks with the same.
func owners(ns string, ring *shard.Ring) (map[string]int, bool, error) {
	count, misplaced, err := placement(ns, ring)
	return count, misplaced == "", err
}

// placement counts the runs of ns by shard label and names the first run or ExecutorTask that is
// not where ring puts it ("" when all are).
func placement(ns string, ring *shard.Ring) (map[string]int, string, error) {
	ctx := context.Background()
	var runs rsv1.RunList
	if err := k8s.List(ctx, &runs, client.InNamespace(ns)); err != nil {
		return nil, "", err
	}
	var ets rsv1.ExecutorTaskList
	if err := k8s.List(ctx, &ets, client.InNamespace(ns)); err != nil {
		return nil, "", err
	}
	byRun := map[string]string{}
	count := map[string]int{}
	misplaced := ""
	for _, r := range runs.Items {
		have := r.Labels[rsv1.LabelShard]
		count[have]++
		byRun[string(r.UID)] = have
		drain, draining := r.Labels[rsv1.LabelShardDrain]
		if want := ring.Owner(shard.Key(r.Namespace, r.Name)); (draining || have != want) && misplaced == "" {
			misplaced = fmt.Sprintf("run %s on %q (drain %q), not on %s", r.Name, have, drain, want)
		}
	}
	for _, et := range ets.Items {
		if want, ok := byRun[et.Spec.RunUID]; ok && et.Labels[rsv1.LabelShard] != want && misplaced == "" {
			misplaced = fmt.Sprintf("executor task %s on %q, not on its run's %s", et.Name, et.Labels[rsv1.LabelShard], want)
		}
	}
	return count, misplaced, nil
}

// TestShardedReplicasShareTheRuns: with in-process managers on the real control plane, the
// defaulting webhook labels a run with the ring's owner of its key, the sharder labels a run
// created with generateName, a replica that joins takes the runs the ring gives it (drained from
// the other, acknowledged, its ExecutorTasks relabelled before the run), a replica that leaves
// cleanly gives its runs back at once, and every run finishes.
func TestShardedReplicasShareTheRuns(t *testing.T) {
	ring, ns := newNamespace(t, "ring"), newNamespace(t, "runs")
	testenv.StartFakeExecutor(t, k8s, ns, "fake")
	stopA, err := env.StartManager(sharded(ring, "replica-a", true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopA)
	dropRunsAtEnd(t, ns)

	ctx := context.Background()
	for i := range 20 {
		if err := k8s.Create(ctx, twoTaskRun(ns, fmt.Sprintf("run-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	// Created with generateName: no name at admission, so no label from the webhook.
	gen := twoTaskRun(ns, "")
	gen.GenerateName = "gen-"
	if err := k8s.Create(ctx, gen); err != nil {
		t.Fatal(err)
	}
	alone := shard.NewRing("replica-a")
	eventually(t, 10*time.Second, "every run labelled replica-a", func() (bool, error) {
		_, placed, err := owners(ns, alone)
		return placed, err
	})
	// Tasks exist (the first of each run) before replica-b joins: they move with their runs.
	eventually(t, 10*time.Second, "the first task of every run scheduled", func() (bool, error) {
		var ets rsv1.ExecutorTaskList
		err := k8s.List(ctx, &ets, client.InNamespace(ns))
		return len(ets.Items) == 21, err
	})

	stopB, err := env.StartManager(sharded(ring, "replica-b", false))
	if err != nil {
		t.Fatal(err)
	}
	both := shard.NewRing("replica-a", "replica-b")
	eventually(t, 30*time.Second, "runs moved to replica-b as the ring says", func() (bool, error) {
		_, placed, err := owners(ns, both)
		return placed, err
	})
	count, _, _ := owners(ns, both)
	if count["replica-b"] == 0 || count["replica-a"] == 0 {
		t.Fatalf("runs by shard %v: one replica owns none", count)
	}
	t.Logf("runs by shard with two replicas: %v", count)

	playExecutor(t, ns)
	eventually(t, 60*time.Second, "every run finished", func() (bool, error) {
		var runs rsv1.RunList
		if err := k8s.List(ctx, &runs, client.InNamespace(ns)); err != nil {
			return false, err
		}
		for _, r := range runs.Items {
			if r.Status.Phase != rsv1.RunPhaseFinished {
				return false, nil
			}
		}
		return true, nil
	})

	start := time.Now()
	stopB()
	eventually(t, 30*time.Second, "replica-b's runs back on replica-a after it left", func() (bool, error) {
		_, placed, err := owners(ns, alone)
		return placed, err
	})
	if took := time.Since(start); took > testLease {
		t.Errorf("runs moved %s after a clean leave, not at once (before the Lease's %s)", took, testLease)
	}
}

// TestReplicaThatLosesItsLeaseStops: a sharded manager whose membership Lease is taken from it
// (as a replica cut off from the apiserver would find it on its return) is told within the renew
// deadline, before the others may take its runs (cmd/manager exits then), and stops: Start
// returns shard.ErrLeaseLost.
func TestReplicaThatLosesItsLeaseStops(t *testing.T) {
	ring := newNamespace(t, "ring")
	opts := env.ManagerOptions()
	sharded(ring, "replica-lost", false)(&opts)
	// Longer than the others': the notice must come within it on a loaded machine too (the renew
	// deadline is 2/3 of it; a renewal round starts every 1/6).
	const duration = 6 * time.Second
	opts.ShardLeaseDuration = duration
	opts.LeaderElection = false
	lost := make(chan time.Time, 1)
	opts.OnShardLeaseLost = func() { lost <- time.Now() }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mgr, err := manager.New(ctx, env.Config, opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	lease := &coordinationv1.Lease{}
	key := client.ObjectKey{Namespace: ring, Name: shard.LeaseName("replica-lost")}
	eventually(t, 5*time.Second, "the membership Lease held", func() (bool, error) {
		err := k8s.Get(ctx, key, lease)
		return err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "", client.IgnoreNotFound(err)
	})
	steal := func() error {
		return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
			if err := k8s.Get(ctx, key, lease); err != nil {
				return err
			}
			lease.Spec.HolderIdentity, lease.Spec.RenewTime = ptr.To("intruder"), ptr.To(metav1.NowMicro())
			return k8s.Update(ctx, lease)
		})
	}
	taken := time.Now()
	for {
		if err := steal(); err != nil {
			t.Fatal(err)
		}
		select {
		case at := <-lost:
			if after := at.Sub(taken); after > duration {
				t.Fatalf("the manager was told %s after its Lease was taken, later than the Lease's %s", after, duration)
			}
			select {
			case err := <-done:
				if !errors.Is(err, shard.ErrLeaseLost) {
					t.Fatalf("the manager stopped with %v, want %v", err, shard.ErrLeaseLost)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the manager that lost its Lease did not stop")
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
		if time.Since(taken) > 3*duration {
			t.Fatal("the manager whose Lease was taken was never told")
		}
	}
}

// TestAHandoverWaitsForTheFetchInFlight: a run drained while its former owner fetches a task's log
// from the executor stays with it (not acknowledged) until the fetch has ended and the task is
// marked fetched; only then does it move, with its ExecutorTask, to the new owner.
func TestAHandoverWaitsForTheFetchInFlight(t *testing.T) {
	ring, ns := newNamespace(t, "ring"), newNamespace(t, "fetch")
	ctx := context.Background()
	fetching, release := make(chan struct{}, 1), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/log") {
			select {
			case fetching <- struct{}{}:
			default:
			}
			<-release
			_, _ = w.Write([]byte("the step's log\n"))
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	withStore := fetchable(t, ns, srv.URL)
	stopA, err := env.StartManager(withStore(sharded(ring, "replica-a", true)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopA)
	dropRunsAtEnd(t, ns)

	run, etName := endedRunOfB(t, ns, "fetched")
	select {
	case <-fetching:
	case <-time.After(30 * time.Second):
		t.Fatal("replica-a never fetched the task's log")
	}

	stopB, err := env.StartManager(withStore(sharded(ring, "replica-b", false)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopB)
	eventually(t, 30*time.Second, "the run drained (or moved)", func() (bool, error) {
		r := &rsv1.Run{}
		err := k8s.Get(ctx, client.ObjectKeyFromObject(run), r)
		return r.Labels[rsv1.LabelShardDrain] == "replica-b" || r.Labels[rsv1.LabelShard] != "replica-a", err
	})
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		r := &rsv1.Run{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(run), r); err != nil {
			t.Fatal(err)
		}
		if r.Labels[rsv1.LabelShard] != "replica-a" {
			t.Fatalf("the run was handed over (shard %q) while replica-a's fetch of its task was in flight", r.Labels[rsv1.LabelShard])
		}
		time.Sleep(100 * time.Millisecond)
	}
	close(release)
	eventually(t, 30*time.Second, "the run and its task on replica-b, the task fetched", func() (bool, error) {
		r, et := &rsv1.Run{}, &rsv1.ExecutorTask{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(run), r); err != nil {
			return false, err
		}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: etName}, et); err != nil {
			return false, err
		}
		fetched := r.Status.RecordedFetch(et)
		return r.Labels[rsv1.LabelShard] == "replica-b" && et.Labels[rsv1.LabelShard] == "replica-b" &&
			fetched != "" && fetched != rsv1.FetchedLost, nil
	})
}

// TestAMovedRunsUnfetchedTaskIsFetchedByItsNewOwner: a run moves while its ended task's fetch
// failed on its former owner (the executor answered 503: a backoff, nothing in flight, so the drain
// is acknowledged). The new owner sees the task relabelled before the run (by three seconds here),
// so its fetcher first finds no run to record the fetch in; the run's arrival must bring the task
// back, and the fetch is recorded.
func TestAMovedRunsUnfetchedTaskIsFetchedByItsNewOwner(t *testing.T) {
	ring, ns := newNamespace(t, "ring"), newNamespace(t, "refetch")
	ctx := context.Background()
	var healthy atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case !healthy.Load():
			http.Error(w, "not now", http.StatusServiceUnavailable)
		case strings.HasSuffix(r.URL.Path, "/log"):
			_, _ = w.Write([]byte("the step's log\n"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	withStore := fetchable(t, ns, srv.URL)
	stopA, err := env.StartManager(withStore(func(o *manager.Options) {
		sharded(ring, "replica-a", true)(o)
		o.Controllers.FetchBackoff = time.Hour // the former owner does not try again by itself
		// The leader's sharder: the new owner sees the run's task three seconds before the run.
		o.Controllers.ShardRelabelling = func(types.NamespacedName) { time.Sleep(3 * time.Second) }
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopA)
	dropRunsAtEnd(t, ns)

	run, etName := endedRunOfB(t, ns, "refetched")
	eventually(t, 30*time.Second, "replica-a's fetch failing (an UnreachableExecutor or FetchFailed event)", func() (bool, error) {
		r := &rsv1.Run{}
		err := k8s.Get(ctx, client.ObjectKeyFromObject(run), r)
		return err == nil && r.Status.Phase.IsFinal(), err
	})
	time.Sleep(time.Second) // the fetch has been tried and failed: a backoff of an hour
	healthy.Store(true)

	stopB, err := env.StartManager(withStore(sharded(ring, "replica-b", false)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopB)
	eventually(t, 30*time.Second, "the run and its task moved to replica-b", func() (bool, error) {
		r, et := &rsv1.Run{}, &rsv1.ExecutorTask{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(run), r); err != nil {
			return false, err
		}
		err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: etName}, et)
		return r.Labels[rsv1.LabelShard] == "replica-b" && et.Labels[rsv1.LabelShard] == "replica-b", err
	})
	eventually(t, 30*time.Second, "the task's fetch recorded in the run by replica-b", func() (bool, error) {
		r, et := &rsv1.Run{}, &rsv1.ExecutorTask{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(run), r); err != nil {
			return false, err
		}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: etName}, et); err != nil {
			return false, err
		}
		fetched := r.Status.RecordedFetch(et)
		return fetched != "" && fetched != rsv1.FetchedLost, nil
	})
}

// fetchable gives namespace ns an executor "fake" whose endpoint is url and the token it is
// fetched with, and returns what makes a manager's options fetch from it into one object store
// shared by the test's managers.
func fetchable(t *testing.T, ns, url string) func(change func(*manager.Options)) func(*manager.Options) {
	t.Helper()
	ctx := context.Background()
	token := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: rsv1.ExecutorTokenSecret, Namespace: ns}, StringData: map[string]string{rsv1.ExecutorTokenKey: "t"}}
	if err := k8s.Create(ctx, token); err != nil {
		t.Fatal(err)
	}
	testenv.StartFakeExecutor(t, k8s, ns, "fake")
	endpoint := client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"spec":{"endpoint":%q}}`, url))
	if err := k8s.Patch(ctx, &rsv1.Executor{ObjectMeta: metav1.ObjectMeta{Name: "fake", Namespace: ns}}, endpoint); err != nil {
		t.Fatal(err)
	}
	store := objectstore.FileURL(t.TempDir())
	return func(change func(*manager.Options)) func(*manager.Options) {
		return func(o *manager.Options) {
			change(o)
			o.ObjectStore, o.Controllers.ExecutorInsecureHTTP = store, true
		}
	}
}

// endedRunOfB creates a run of one task named prefix-<i>, the first such name that the ring of
// replica-a and replica-b gives to replica-b, and reports its task ended with success; it returns
// the run and the task's ExecutorTask name.
func endedRunOfB(t *testing.T, ns, prefix string) (*rsv1.Run, string) {
	t.Helper()
	ctx := context.Background()
	both := shard.NewRing("replica-a", "replica-b")
	name := ""
	for i := 0; name == ""; i++ {
		if n := fmt.Sprintf("%s-%d", prefix, i); both.Owner(shard.Key(ns, n)) == "replica-b" {
			name = n
		}
	}
	run := twoTaskRun(ns, name)
	run.Spec.Tasks = run.Spec.Tasks[:1]
	if err := k8s.Create(ctx, run); err != nil {
		t.Fatal(err)
	}
	etName := testenv.ReportTask(t, k8s, ns, name, "build", rsv1.ExecutorTaskStatus{})
	et := &rsv1.ExecutorTask{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: etName}, et); err != nil {
		t.Fatal(err)
	}
	if err := succeed(ctx, et); err != nil {
		t.Fatal(err)
	}
	return run, etName
}

// TestADrainRecordsTheFetchItHolds: a run is drained while the outcome of its task's fetch is
// still in its owner's memory (fetched, the status write that records it held back by
// FetchRecording until the drain is asked for, and then refused: the drain changed the run), and
// its Executor is deleted before the new owner could fetch again. The owner records the fetch
// before it acknowledges: the new owner finds the task fetched, not lost, and nothing is fetched
// twice.
func TestADrainRecordsTheFetchItHolds(t *testing.T) {
	ring, ns := newNamespace(t, "ring"), newNamespace(t, "pending")
	ctx := context.Background()
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/log") {
			fetches.Add(1)
			_, _ = w.Write([]byte("the step's log\n"))
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	withStore := fetchable(t, ns, srv.URL)
	recording, release := make(chan struct{}, 1), make(chan struct{})
	var once sync.Once
	releaseOnce := func() { once.Do(func() { close(release) }) }
	defer releaseOnce()
	stopA, err := env.StartManager(withStore(func(o *manager.Options) {
		sharded(ring, "replica-a", true)(o)
		o.Controllers.FetchRecording = func(types.NamespacedName) error {
			select {
			case recording <- struct{}{}:
			default:
			}
			<-release
			return nil
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopA)
	dropRunsAtEnd(t, ns)

	run, etName := endedRunOfB(t, ns, "pending")
	select {
	case <-recording:
	case <-time.After(30 * time.Second):
		t.Fatal("replica-a never came to record the task's fetch")
	}
	removeExecutor(t, ns, "fake")

	stopB, err := env.StartManager(withStore(sharded(ring, "replica-b", false)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopB)
	eventually(t, 30*time.Second, "the run drained", func() (bool, error) {
		r := &rsv1.Run{}
		err := k8s.Get(ctx, client.ObjectKeyFromObject(run), r)
		return r.Labels[rsv1.LabelShardDrain] == "replica-b", err
	})
	releaseOnce()
	var fetched string
	eventually(t, 30*time.Second, "the run on replica-b, its task's fetch recorded", func() (bool, error) {
		r, et := &rsv1.Run{}, &rsv1.ExecutorTask{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(run), r); err != nil {
			return false, err
		}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: etName}, et); err != nil {
			return false, err
		}
		fetched = r.Status.RecordedFetch(et)
		return r.Labels[rsv1.LabelShard] == "replica-b" && fetched != "", nil
	})
	if fetched == rsv1.FetchedLost {
		t.Fatalf("the task's fetch is recorded %q although replica-a stored its log", fetched)
	}
	time.Sleep(time.Second) // replica-b's fetcher has seen the task
	if n := fetches.Load(); n != 1 {
		t.Fatalf("the task's log was fetched %d times, want once", n)
	}
}

// removeExecutor deletes Executor name of ns for good (its finalizers dropped, as a forced
// removal does) and waits until it is gone.
func removeExecutor(t *testing.T, ns, name string) {
	t.Helper()
	ctx := context.Background()
	ex := &rsv1.Executor{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := k8s.Delete(ctx, ex); err != nil {
		t.Fatal(err)
	}
	err := k8s.Patch(ctx, ex, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`)))
	if client.IgnoreNotFound(err) != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "executor "+name+" gone", func() (bool, error) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(ex), &rsv1.Executor{})
		return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
	})
}

// TestARunLabelledWithADepartedMemberIsPlaced: a replica whose view of the ring lags behind still
// sees a member that left, and its webhook labels a new run with it; the leader's sharder, whose
// ring changed when the member left, looks again one Lease duration later, moves the run to a live
// member, and the run finishes. Resync is an hour: only that second look can find the run.
func TestARunLabelledWithADepartedMemberIsPlaced(t *testing.T) {
	ring, ns := newNamespace(t, "ring"), newNamespace(t, "stale")
	const lease = 2 * time.Second
	static := func(view shard.View, webhook bool) func(*manager.Options) {
		return func(o *manager.Options) {
			o.Controllers.Shard, o.Controllers.ShardLeaseDuration, o.Controllers.ShardResync = view, lease, time.Hour
			o.LeaderElection, o.LeaderElectionNS = true, ring
			if !webhook {
				o.WebhookPort = 0
			}
		}
	}
	// The leader (started first), and a replica with the stale view that serves the webhook.
	leaderView := shard.NewStatic("replica-a", "replica-gone")
	stopA, err := env.StartManager(static(leaderView, false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopA)
	staleView := shard.NewStatic("replica-w")
	staleView.Set(shard.NewRing("replica-a", "replica-gone"))
	stopW, err := env.StartManager(static(staleView, true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopW)
	testenv.StartFakeExecutor(t, k8s, ns, "fake")
	playExecutor(t, ns)
	dropRunsAtEnd(t, ns)

	leaderView.Set(shard.NewRing("replica-a"))
	time.Sleep(lease / 2) // the leader's scan of the change has looked, and found nothing
	ctx := context.Background()
	name := ""
	for i := 0; name == ""; i++ {
		if n := fmt.Sprintf("stale-%d", i); staleView.Ring().Owner(shard.Key(ns, n)) == "replica-gone" {
			name = n
		}
	}
	if err := k8s.Create(ctx, twoTaskRun(ns, name)); err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	run := &rsv1.Run{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, run); err != nil {
		t.Fatal(err)
	}
	if got := run.Labels[rsv1.LabelShard]; got != "replica-gone" {
		t.Fatalf("the stale webhook labelled the run %q, want replica-gone", got)
	}
	eventually(t, 30*time.Second, "the run moved to replica-a", func() (bool, error) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(run), run)
		return run.Labels[rsv1.LabelShard] == "replica-a", err
	})
	t.Logf("the run labelled with the departed member moved %s after its creation (Lease %s)", time.Since(created).Round(time.Millisecond), lease)
	eventually(t, 60*time.Second, "the run finished", func() (bool, error) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(run), run)
		return run.Status.Phase == rsv1.RunPhaseFinished, err
	})
}

// TestAGroupOwnedByAReplicaThatDoesNotLeadStartsItsQueuedRuns: two replicas with leader election,
// as deployed; a change group that the ring gives the replica that does not lead, with
// maxActiveRuns 1 and two runs. When the first ends, the group's owner starts the second: the
// changegroup controller, with the metadata informer it needs, works on every replica, not on the
// leader only.
func TestAGroupOwnedByAReplicaThatDoesNotLeadStartsItsQueuedRuns(t *testing.T) {
	ring, ns := newNamespace(t, "ring"), newNamespace(t, "runs")
	testenv.StartFakeExecutor(t, k8s, ns, "fake")
	members := []string{"replica-a", "replica-b"}
	for i, me := range members {
		stop, err := env.StartManager(sharded(ring, me, i == 0))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	dropRunsAtEnd(t, ns)
	ctx := context.Background()
	var leader string
	eventually(t, 30*time.Second, "a replica leads", func() (bool, error) {
		var l coordinationv1.Lease
		err := k8s.Get(ctx, types.NamespacedName{Namespace: ring, Name: "runservice-manager.runservice.dev"}, &l)
		if err == nil && l.Spec.HolderIdentity != nil {
			leader, _, _ = strings.Cut(*l.Spec.HolderIdentity, "/") // the member's identity: name/suffix
		}
		return leader != "", client.IgnoreNotFound(err)
	})
	follower := members[0]
	if leader == follower {
		follower = members[1]
	}
	both := shard.NewRing(members...)
	group := ""
	for i := 0; group == ""; i++ {
		if g := fmt.Sprintf("group-%d", i); both.Owner(shard.Key(ns, g)) == follower {
			group = g
		}
	}
	cg := &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: group, Namespace: ns}, Spec: rsv1.ChangeGroupSpec{MaxActiveRuns: ptr.To[int32](1)}}
	if err := k8s.Create(ctx, cg); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"first", "second"} {
		run := twoTaskRun(ns, name)
		run.Spec.ChangeGroups = []string{group}
		if err := k8s.Create(ctx, run); err != nil {
			t.Fatal(err)
		}
	}
	playExecutor(t, ns)
	eventually(t, time.Minute, fmt.Sprintf("both runs of %s (owned by %s, %s leads) finished", group, follower, leader), func() (bool, error) {
		var runs rsv1.RunList
		if err := k8s.List(ctx, &runs, client.InNamespace(ns)); err != nil {
			return false, err
		}
		finished := 0
		for _, r := range runs.Items {
			if r.Status.Phase == rsv1.RunPhaseFinished {
				finished++
			}
		}
		return finished == 2, nil
	})
}
