package kubernetes_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

// These tests run Kubernetes-driver executor processes against a real apiserver + etcd, with kwok
// simulating the node and the pods' lives (no container runs): scale and group behaviour.

var (
	env        *testenv.Env
	k8s        client.Client
	kube       kubernetes.Interface
	kwok       *testenv.Kwok
	bins       string
	kubeconfig string
	h          *e2e.Harness
	// auditLog is the apiserver's log of write requests (testenv.WithAuditLog), for the tests that
	// count what each client writes.
	auditLog string
	// fetchAcking, when set, is called by the manager's fetcher before it tells an executor that a
	// task's copy may go; an error loses the ack on its way.
	fetchAcking atomic.Pointer[func(types.NamespacedName) error]
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	level := zapcore.ErrorLevel
	if os.Getenv("TEST_LOG") != "" {
		level = zapcore.DebugLevel
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(level)))
	tmp, err := os.MkdirTemp("", "runservice-kwok-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	auditLog = filepath.Join(tmp, "audit", "audit.log")
	if err := os.MkdirAll(filepath.Dir(auditLog), 0o755); err != nil {
		return fail(err)
	}
	if env, err = testenv.Start(testenv.WithAuditLog(auditLog)); err != nil {
		return fail(err)
	}
	defer func() { _ = env.Stop() }()
	bins = filepath.Join(tmp, "bin")
	if err := e2e.Build(env.Root, bins, "./cmd/executor"); err != nil {
		return fail(fmt.Errorf("building the executor: %w", err))
	}
	kubeconfig = filepath.Join(tmp, "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.Kubeconfig, 0o600); err != nil {
		return fail(err)
	}
	if k8s, err = client.New(env.Config, client.Options{Scheme: manager.Scheme()}); err != nil {
		return fail(err)
	}
	if kube, err = kubernetes.NewForConfig(env.Config); err != nil {
		return fail(err)
	}
	h = &e2e.Harness{Client: k8s, Kubeconfig: kubeconfig, Timeout: time.Minute}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if kwok, err = env.StartKwok(ctx, filepath.Join(tmp, "kwok")); err != nil {
		return fail(err)
	}
	defer kwok.Stop()
	opts := env.ManagerOptions()
	// The fetcher runs, as in production: a member leaves only once its finished tasks are fetched.
	// (Simulated pods write no logs: the executor answers 404, which stores nothing.)
	opts.ObjectStore = objectstore.FileURL(filepath.Join(tmp, "store"))
	opts.Controllers.FetchAcking = func(et types.NamespacedName) error {
		if f := fetchAcking.Load(); f != nil {
			return (*f)(et)
		}
		return nil
	}
	mgr, err := manager.New(ctx, env.Config, opts)
	if err != nil {
		return fail(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = mgr.Start(ctx)
	}()
	code := m.Run()
	cancel()
	<-done
	return code
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, "kwok e2e:", err)
	return 1
}

// startExecutor starts a member of the group "kwok"; extra flags override the defaults.
func startExecutor(t *testing.T, ns, name string, extra ...string) *e2e.Executor {
	t.Helper()
	addr := e2e.FreeAddr(t, "127.0.0.1")
	return h.StartExecutor(t, filepath.Join(bins, "executor"), ns, name, append([]string{
		"--driver", "Kubernetes", "--group", "kwok", "--node-name", kwok.Node,
		"--listen", addr, "--endpoint", "https://" + addr,
		"--data-dir", filepath.Join(t.TempDir(), "data"), "--object-store", "",
		"--lease-duration", "4s", "--renew-interval", "1s"}, extra...)...)
}

// podWatch records, for the whole test, every pod created per task (run/task).
type podWatch struct {
	mu      sync.Mutex
	created map[string]map[string]bool // run/task -> pod uids
}

func watchPods(t *testing.T, ns string) *podWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	// A retry watcher resumes where it was if the apiserver closes the watch (under load it drops
	// watchers that fall behind): the count must see every pod of the test.
	list, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return kube.CoreV1().Pods(ns).Watch(ctx, o)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	pw := &podWatch{created: map[string]map[string]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type != watch.Added {
				continue
			}
			key := pod.Labels[rsv1.LabelRun] + "/" + pod.Labels[rsv1.LabelTask]
			pw.mu.Lock()
			if pw.created[key] == nil {
				pw.created[key] = map[string]bool{}
			}
			pw.created[key][string(pod.UID)] = true
			pw.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); w.Stop(); <-done })
	return pw
}

// checkOnePodPerTask fails the test if any task had more than one pod, and returns how many had one.
func (pw *podWatch) checkOnePodPerTask(t *testing.T) int {
	t.Helper()
	pw.mu.Lock()
	defer pw.mu.Unlock()
	for key, uids := range pw.created {
		if len(uids) > 1 {
			t.Fatalf("task %s had %d pods", key, len(uids))
		}
	}
	return len(pw.created)
}

func task(name string) rsv1.Task {
	return rsv1.Task{
		Name:       name,
		Containers: []rsv1.Container{{Image: "busybox:1.36"}},
		Steps:      []rsv1.Step{{Run: &rsv1.RunStep{Name: ptr.To(name), Command: "true"}}},
	}
}

func getRun(t *testing.T, ns, name string) *rsv1.Run {
	t.Helper()
	run := &rsv1.Run{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, run); err != nil {
		t.Fatal(err)
	}
	return run
}

// TestThousandTasksAcrossThreeExecutors: 1,000 tasks through three executors of one group complete
// with exactly one pod each.
func TestThousandTasksAcrossThreeExecutors(t *testing.T) {
	const runs, perRun = 100, 10
	ns := e2e.NewNamespace(t, k8s, "k")
	pw := watchPods(t, ns)
	for i := range 3 {
		startExecutor(t, ns, fmt.Sprintf("kx-%d", i))
	}
	start := time.Now()
	for i := range runs {
		run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("scale-%03d", i), Namespace: ns}}
		for j := range perRun {
			run.Spec.Tasks = append(run.Spec.Tasks, task(fmt.Sprintf("t%d", j)))
		}
		if err := k8s.Create(context.Background(), run); err != nil {
			t.Fatal(err)
		}
	}
	e2e.Eventually(t, 8*time.Minute, "every run Finished", func() bool {
		var list rsv1.RunList
		if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			return false
		}
		n := 0
		for _, r := range list.Items {
			if r.Status.Phase == rsv1.RunPhaseFinished {
				if r.Status.Result != rsv1.RunResultSuccess {
					t.Fatalf("run %s: %s %+v", r.Name, r.Status.Result, r.Status.Tasks)
				}
				n++
			}
		}
		return n == runs
	})
	t.Logf("%d tasks in %v (%.1f tasks/s)", runs*perRun, time.Since(start).Round(time.Millisecond), float64(runs*perRun)/time.Since(start).Seconds())
	time.Sleep(time.Second)
	if n := pw.checkOnePodPerTask(t); n != runs*perRun {
		t.Fatalf("%d tasks had a pod, want %d", n, runs*perRun)
	}
	perExecutor := map[string]int{}
	var ets rsv1.ExecutorTaskList
	if err := k8s.List(context.Background(), &ets, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, et := range ets.Items {
		perExecutor[et.Spec.Executor]++
	}
	if len(perExecutor) != 3 {
		t.Fatalf("tasks per executor %v, want all three used", perExecutor)
	}
	e2e.Eventually(t, time.Minute, "every pod and secret removed", func() bool {
		pods, _ := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
		secrets, _ := kube.CoreV1().Secrets(ns).List(context.Background(), metav1.ListOptions{LabelSelector: rsv1.LabelExecutorTaskUID})
		return len(pods.Items) == 0 && len(secrets.Items) == 0
	})
}

// TestGroupCleansUpAfterADeadMember: a member killed mid-task has its pods and secrets deleted by a
// sibling, then its Executor; its tasks fail with ExecutorRemoved; no task ever had two pods. A member
// restarted with the same identity before its Lease expires re-adopts its pods.
func TestGroupCleansUpAfterADeadMember(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	pw := watchPods(t, ns)
	procs := map[string]*e2e.Executor{}
	for _, name := range []string{"ga", "gb"} {
		procs[name] = startExecutor(t, ns, name)
	}
	// gc restarts within its Lease: a lease long enough for a process restart on a loaded machine
	// (with 4s, a CI run whose parallel suites slowed the restart saw gc removed as dead).
	procs["gc"] = startExecutor(t, ns, "gc", "--lease-duration", "15s")
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: testenv.SlowRun, Namespace: ns}}
	// An environment: each task has a Secret too, which the cleanup must remove with its pod.
	run.Spec.Environment = []rsv1.EnvVar{{Name: "TOKEN", Value: "s3cr3t"}}
	for _, name := range []string{"t1", "t2", "t3"} {
		run.Spec.Tasks = append(run.Spec.Tasks, task(name))
	}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	onExecutor := map[string]string{}
	e2e.Eventually(t, time.Minute, "the three tasks running, one per executor", func() bool {
		run := getRun(t, ns, testenv.SlowRun)
		for _, ts := range run.Status.Tasks {
			if ts.Phase != rsv1.TaskPhaseRunning {
				return false
			}
			onExecutor[ts.Executor] = ts.Name
		}
		return len(onExecutor) == 3
	})
	victim, survivorRestart := "gb", "gc"
	// Members find each other's Leases by the group label, in one list.
	leases, err := kube.CoordinationV1().Leases(ns).List(context.Background(), metav1.ListOptions{LabelSelector: rsv1.LabelExecutorGroup + "=kwok"})
	if err != nil || len(leases.Items) != 3 {
		t.Fatalf("want the 3 members' Leases labelled with the group: %v", err)
	}
	// Its task has a Secret (its environment), created with its pod.
	e2e.Eventually(t, 30*time.Second, "the victim's task's Secret", func() bool {
		secrets, err := kube.CoreV1().Secrets(ns).List(context.Background(), metav1.ListOptions{LabelSelector: rsv1.LabelExecutor + "=" + victim})
		return err == nil && len(secrets.Items) == 1
	})

	procs[victim].Kill()
	killedAt := time.Now()
	// Meanwhile, gc restarts with its identity, before its Lease can expire.
	procs[survivorRestart].Kill()
	procs[survivorRestart].Start()

	e2e.Eventually(t, time.Minute, "the dead member's Executor removed by a sibling", func() bool {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: victim}, &rsv1.Executor{})
		return client.IgnoreNotFound(err) == nil && err != nil
	})
	pods, err := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: rsv1.LabelExecutor + "=" + victim})
	if err != nil || len(pods.Items) != 0 {
		t.Fatalf("the dead member's pods are still there after its Executor was removed: %d (%v)", len(pods.Items), err)
	}
	secrets, err := kube.CoreV1().Secrets(ns).List(context.Background(), metav1.ListOptions{LabelSelector: rsv1.LabelExecutor + "=" + victim})
	if err != nil || len(secrets.Items) != 0 {
		t.Fatalf("the dead member's secrets are still there: %d (%v)", len(secrets.Items), err)
	}
	t.Logf("cleanup done %v after the kill", time.Since(killedAt).Round(time.Millisecond))

	final := getRun(t, ns, testenv.SlowRun)
	e2e.Eventually(t, time.Minute, "the run finished", func() bool {
		final = getRun(t, ns, testenv.SlowRun)
		return final.Status.Phase == rsv1.RunPhaseFinished
	})
	for _, ts := range final.Status.Tasks {
		switch ts.Executor {
		case victim:
			if ts.Phase != rsv1.TaskPhaseFailed || ts.Reason != rsv1.ReasonExecutorRemoved {
				t.Errorf("task %s of the dead member: %s %s", ts.Name, ts.Phase, ts.Reason)
			}
		default: // including the restarted member, which re-adopted its pod
			if ts.Phase != rsv1.TaskPhaseSuccess {
				t.Errorf("task %s on %s: %s %s", ts.Name, ts.Executor, ts.Phase, ts.Message)
			}
		}
	}
	if final.Status.Result != rsv1.RunResultFailed {
		t.Fatalf("result %s, want Failed (a task's executor was removed)", final.Status.Result)
	}
	pw.checkOnePodPerTask(t)
}

// TestAStoppedMemberLeavesWhenIdle: SIGTERM (a pod deleted, a Deployment scaled down) with a task
// still running leaves the member registered, so that a restart under the same name re-adopts the
// task; once idle, SIGTERM removes its Executor and Lease at once instead of leaving them to expire.
func TestAStoppedMemberLeavesWhenIdle(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	ctx := context.Background()
	// A long Lease: whatever disappears here was removed by the member itself, not found expired.
	ex := startExecutor(t, ns, "sa", "--lease-duration", "5m")
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: testenv.SlowRun, Namespace: ns}}
	run.Spec.Tasks = []rsv1.Task{task("t")}
	if err := k8s.Create(ctx, run); err != nil {
		t.Fatal(err)
	}
	e2e.Eventually(t, time.Minute, "the task running", func() bool {
		ts := getRun(t, ns, testenv.SlowRun).Status.Tasks
		return len(ts) == 1 && ts[0].Phase == rsv1.TaskPhaseRunning
	})
	// No environment, no workspace to fetch: no Secret, the task file is in a pod annotation.
	var pods *corev1.PodList
	e2e.Eventually(t, 30*time.Second, "the task's pod", func() bool {
		var err error
		pods, err = kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: rsv1.LabelExecutor + "=sa"})
		return err == nil && len(pods.Items) == 1
	})
	if pods.Items[0].Annotations["runservice.dev/task"] == "" {
		t.Fatal("want the task file annotation on the pod")
	}
	if secrets, err := kube.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: rsv1.LabelExecutor + "=sa"}); err != nil || len(secrets.Items) != 0 {
		t.Fatalf("a task without environment should have no Secret: %d (%v)", len(secrets.Items), err)
	}
	ex.Stop()
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "sa"}, &rsv1.Executor{}); err != nil {
		t.Fatalf("stopped with a running task, the member's Executor should stay: %v", err)
	}
	ex.Start()
	e2e.Eventually(t, time.Minute, "the run finished", func() bool {
		return getRun(t, ns, testenv.SlowRun).Status.Phase == rsv1.RunPhaseFinished
	})
	if r := getRun(t, ns, testenv.SlowRun); r.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s, want Success (the restarted member re-adopts its pod): %+v", r.Status.Result, r.Status.Tasks)
	}
	ex.Stop()
	for _, obj := range []client.Object{&rsv1.Executor{}, &coordinationv1.Lease{}} {
		err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "sa"}, obj)
		if !apierrors.IsNotFound(err) {
			t.Errorf("stopped while idle, the member's %T should be gone: %v", obj, err)
		}
	}
}

// TestAStoppedMemberDrains: with --drain-timeout, SIGTERM marks the member unschedulable, new tasks
// go to its siblings, its running task is followed to its end, and then it leaves the group.
func TestAStoppedMemberDrains(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	ctx := context.Background()
	da := startExecutor(t, ns, "da", "--drain-timeout", "1m", "--lease-duration", "5m")
	slow := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: testenv.SlowRun, Namespace: ns}}
	slow.Spec.Tasks = []rsv1.Task{task("t")}
	if err := k8s.Create(ctx, slow); err != nil {
		t.Fatal(err)
	}
	e2e.Eventually(t, time.Minute, "the slow task running on da", func() bool {
		ts := getRun(t, ns, testenv.SlowRun).Status.Tasks
		return len(ts) == 1 && ts[0].Phase == rsv1.TaskPhaseRunning
	})
	startExecutor(t, ns, "db")

	stopped := make(chan struct{})
	go func() { defer close(stopped); da.Stop() }()
	e2e.Eventually(t, 30*time.Second, "da marked unschedulable", func() bool {
		ex := &rsv1.Executor{}
		return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "da"}, ex) == nil && ex.Spec.Unschedulable
	})
	next := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "next", Namespace: ns}}
	next.Spec.Tasks = []rsv1.Task{task("n")}
	if err := k8s.Create(ctx, next); err != nil {
		t.Fatal(err)
	}
	e2e.Eventually(t, time.Minute, "both runs finished", func() bool {
		return getRun(t, ns, testenv.SlowRun).Status.Phase == rsv1.RunPhaseFinished && getRun(t, ns, "next").Status.Phase == rsv1.RunPhaseFinished
	})
	for _, name := range []string{testenv.SlowRun, "next"} {
		r := getRun(t, ns, name)
		if r.Status.Result != rsv1.RunResultSuccess {
			t.Errorf("run %s: %s %+v", name, r.Status.Result, r.Status.Tasks)
		}
	}
	if ex := getRun(t, ns, "next").Status.Tasks[0].Executor; ex != "db" {
		t.Errorf("the task submitted during the drain went to %q, want db", ex)
	}
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("da did not exit after its task finished")
	}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "da"}, &rsv1.Executor{}); !apierrors.IsNotFound(err) {
		t.Errorf("drained, da should have left the group: %v", err)
	}
}

// holdFetches keeps the manager from fetching in ns, as a failing fetcher would: it deletes the
// executors' token Secret, which the fetcher reads before it calls an executor (the executors keep
// theirs in memory). The returned func puts it back, and the fetch lands.
func holdFetches(t *testing.T, ns string) (release func()) {
	t.Helper()
	ctx := context.Background()
	token := &corev1.Secret{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: rsv1.ExecutorTokenSecret}, token); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Delete(ctx, token); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: token.Name, Namespace: ns}, Data: token.Data}
		if err := k8s.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
}

// finishOne runs a one-task run on the namespace's members to its end.
func finishOne(t *testing.T, ns, name string) {
	t.Helper()
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	run.Spec.Tasks = []rsv1.Task{task("t")}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	e2e.Eventually(t, time.Minute, "run "+name+" finished", func() bool {
		return getRun(t, ns, name).Status.Phase == rsv1.RunPhaseFinished
	})
}

// TestAStoppedMemberWaitsForTheFetch: a member told to stop with a finished task the manager has not
// fetched yet stays registered, serving, until the fetch lands, then leaves: the task's logs and
// archives are fetched for real, not recorded as lost.
func TestAStoppedMemberWaitsForTheFetch(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	ctx := context.Background()
	fa := startExecutor(t, ns, "fa", "--drain-timeout", "1m", "--lease-duration", "5m")
	release := holdFetches(t, ns)
	finishOne(t, ns, "quick")

	stopped := make(chan struct{})
	go func() { defer close(stopped); fa.Stop() }()
	select {
	case <-stopped:
		t.Fatal("fa left with a finished task the manager had not fetched")
	case <-time.After(4 * time.Second):
	}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "fa"}, &rsv1.Executor{}); err != nil {
		t.Fatalf("fa's Executor should stay while its task is unfetched: %v", err)
	}
	release()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("fa did not leave once its task was fetched")
	}
	if v := e2e.TaskStatus(getRun(t, ns, "quick"), "t").Fetched; v == "" || v == rsv1.FetchedLost {
		t.Errorf("the run records the fetch as %q, want the time of a real fetch", v)
	}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "fa"}, &rsv1.Executor{}); !apierrors.IsNotFound(err) {
		t.Errorf("fetched, fa should have left the group: %v", err)
	}
}

// TestAStoppedMemberLeavesAfterALostAck: the manager's word that a finished task's fetch is
// recorded in its run never reaches the member (lost on its way, again and again, until the
// manager's backoff for the member is 16s). Told to stop, the member cordons itself and waits for
// that word; the manager, seeing the cordon, says it again at once: the member leaves within
// seconds, not after the backoff, nor stays registered once its fetch wait is over.
func TestAStoppedMemberLeavesAfterALostAck(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	ctx := context.Background()
	la := startExecutor(t, ns, "la", "--drain-timeout", "1m", "--lease-duration", "5m")
	var lost atomic.Int32
	hook := func(et types.NamespacedName) error {
		ex := &rsv1.Executor{}
		if et.Namespace != ns || k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "la"}, ex) == nil && ex.Spec.Unschedulable {
			return nil
		}
		lost.Add(1)
		return errors.New("the ack was lost on its way")
	}
	fetchAcking.Store(&hook)
	t.Cleanup(func() { fetchAcking.Store(nil) })
	finishOne(t, ns, "quick")
	e2e.Eventually(t, time.Minute, "four acks lost", func() bool { return lost.Load() >= 4 })
	if v := e2e.TaskStatus(getRun(t, ns, "quick"), "t").Fetched; v == "" || v == rsv1.FetchedLost {
		t.Fatalf("the run records the fetch as %q, want the time of a real fetch", v)
	}

	stopped, start := make(chan struct{}), time.Now()
	go func() { defer close(stopped); la.Stop() }()
	select {
	case <-stopped:
	case <-time.After(time.Minute):
		t.Fatal("la did not exit within its fetch wait")
	}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "la"}, &rsv1.Executor{}); !apierrors.IsNotFound(err) {
		t.Fatalf("la stayed registered (%v): it was never told that its task's fetch is recorded", err)
	}
	d := time.Since(start)
	t.Logf("la left %v after it was told to stop, with %d acks lost before", d.Round(time.Millisecond), lost.Load())
	if d > 10*time.Second {
		t.Fatalf("la left %v after it was told to stop, want about a round trip after its cordon, not after the manager's 16s backoff", d.Round(time.Millisecond))
	}
}

// TestAStoppedMemberStaysWhenTheFetchTimesOut: past its drain timeout with a task still unfetched, a
// member exits but stays registered, and says so with a Warning event on its Executor.
func TestAStoppedMemberStaysWhenTheFetchTimesOut(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	ctx := context.Background()
	fb := startExecutor(t, ns, "fb", "--drain-timeout", "2s", "--fetch-wait", "2s", "--lease-duration", "5m")
	holdFetches(t, ns)
	finishOne(t, ns, "quick")
	fb.Stop()
	ex := &rsv1.Executor{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "fb"}, ex); err != nil {
		t.Fatalf("with an unfetched task fb should stay registered: %v", err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, ex) }) // the fetcher stops retrying: "lost"
	var events eventsv1.EventList
	if err := k8s.List(ctx, &events, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, ev := range events.Items {
		if ev.Regarding.Kind == "Executor" && ev.Regarding.Name == "fb" && ev.Reason == executor.ReasonUnfetchedTasks && ev.Type == corev1.EventTypeWarning {
			return
		}
	}
	t.Fatalf("no %s Warning event on fb: %+v", executor.ReasonUnfetchedTasks, events.Items)
}
