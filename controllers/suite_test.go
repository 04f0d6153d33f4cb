package controllers_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/executorhttp"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

var (
	env      *testenv.Env
	k8s      client.Client // uncached, as a user would talk to the apiserver
	storeURL string        // the object store the manager's fetcher writes

	mgrMu     sync.Mutex
	mgrCancel context.CancelFunc
	mgrDone   chan struct{}
	mgrCache  cache.Cache
	nsCounter atomic.Int64
	// archiveStepDone, when set, is called by the manager's archiver after each step.
	archiveStepDone atomic.Pointer[func(types.NamespacedName, string) error]
	// ledgerReleased, when set, is called by the manager's run controller after a run left its
	// groups' ledgers and before its ledger finalizer is removed.
	ledgerReleased atomic.Pointer[func(types.NamespacedName) error]
	// restartReading, when set, is called by the manager's run controller before it reads the run
	// a restart restarts; an error fails that read.
	restartReading atomic.Pointer[func(types.NamespacedName) error]
	// fetchRecording, when set, is called by the manager's run controller before a status write
	// that records a fetch; an error stops the write.
	fetchRecording atomic.Pointer[func(types.NamespacedName) error]
	storeDir       string // the manager's object store
)

func TestMain(m *testing.M) {
	level := zapcore.ErrorLevel
	if os.Getenv("TEST_LOG") != "" {
		level = zapcore.DebugLevel
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(level)))
	store, err := os.MkdirTemp("", "runservice-controllers-store-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	storeDir, storeURL = store, objectstore.FileURL(store)
	env, err = testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	k8s, err = client.New(env.Config, client.Options{Scheme: manager.Scheme()})
	if err == nil {
		err = startManager()
	}
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	stopManager()
	_ = env.Stop()
	_ = os.RemoveAll(store)
	os.Exit(code)
}

// startManager starts a manager in the background, as the process would.
func startManager() error {
	mgrMu.Lock()
	defer mgrMu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	opts := env.ManagerOptions()
	opts.Controllers.PhantomGrace = 5 * time.Second
	opts.Controllers.NoExecutorRetry = 300 * time.Millisecond
	opts.ObjectStore = storeURL
	// The fake executors' endpoints listen on 127.0.0.1 only; fetcher_test.go uses 127.0.0.2 as
	// an address the fetcher must not dial. Short timeouts let the tests see hung fetches end.
	opts.Controllers.EndpointAllow = executorhttp.Allow{netip.MustParsePrefix("127.0.0.1/32")}
	opts.Controllers.ExecutorInsecureHTTP = true // most fake executors are httptest servers
	opts.Controllers.FetchTimeouts = executorhttp.Timeouts{ResponseHeader: time.Second, Stall: time.Second}
	opts.Controllers.FetchBackoff = 500 * time.Millisecond
	// Runs are archived an hour after their end unless a test's run says otherwise
	// (runservice.dev/archive-after); archiveStepDone lets fault tests stop the manager mid-way.
	opts.Controllers.Archive = true
	opts.Controllers.ArchiveAfter = time.Hour
	opts.Controllers.ArchiveStepDone = func(run types.NamespacedName, step string) error {
		if f := archiveStepDone.Load(); f != nil {
			return (*f)(run, step)
		}
		return nil
	}
	opts.Controllers.LedgerReleased = func(run types.NamespacedName) error {
		if f := ledgerReleased.Load(); f != nil {
			return (*f)(run)
		}
		return nil
	}
	opts.Controllers.RestartReading = func(run types.NamespacedName) error {
		if f := restartReading.Load(); f != nil {
			return (*f)(run)
		}
		return nil
	}
	opts.Controllers.FetchRecording = func(run types.NamespacedName) error {
		if f := fetchRecording.Load(); f != nil {
			return (*f)(run)
		}
		return nil
	}
	cfg := rest.CopyConfig(env.Config)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &recordingTransport{next: rt} })
	mgr, err := manager.New(ctx, cfg, opts)
	if err != nil {
		cancel()
		return err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
	mgrCancel, mgrDone, mgrCache = cancel, done, mgr.GetCache()
	return nil
}

// managerWrite is a write the manager sent to the apiserver, and the status code it got; body is
// kept for the patches of runs' status (what each write changed).
type managerWrite struct {
	method, path string
	code         int
	body         string
	at           time.Time
}

var (
	managerWritesMu sync.Mutex
	managerWrites   []managerWrite
)

// recordingTransport records the manager's writes (not its reads or watches), for the tests that
// bound what the manager costs the apiserver.
type recordingTransport struct{ next http.RoundTripper }

func (t *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	runStatus := req.Method == http.MethodPatch && strings.HasSuffix(req.URL.Path, "/status") && strings.Contains(req.URL.Path, "/runs/")
	etCreate := req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/executortasks")
	if (runStatus || etCreate) && req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		_ = req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	resp, err := t.next.RoundTrip(req)
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		w := managerWrite{method: req.Method, path: req.URL.Path, body: string(body), at: time.Now()}
		if resp != nil {
			w.code = resp.StatusCode
		}
		managerWritesMu.Lock()
		managerWrites = append(managerWrites, w)
		managerWritesMu.Unlock()
	}
	return resp, err
}

// managerWritesIn returns the writes the manager sent so far to objects of namespace ns.
func managerWritesIn(ns string) []managerWrite {
	managerWritesMu.Lock()
	defer managerWritesMu.Unlock()
	var out []managerWrite
	for _, w := range managerWrites {
		if strings.Contains(w.path, "/namespaces/"+ns+"/") {
			out = append(out, w)
		}
	}
	return out
}

var errCrash = errors.New("the manager stopped here")

// managerCrash stops the manager the first time a fault hook calls it, as a crash at that point of
// the hook's caller would.
type managerCrash struct {
	once    sync.Once
	crashed chan struct{}
}

func newManagerCrash() *managerCrash { return &managerCrash{crashed: make(chan struct{})} }

// now stops the manager (the first time) and returns errCrash, so that its caller does not go on.
func (c *managerCrash) now() error {
	c.once.Do(func() {
		close(c.crashed)
		go stopManager()
	})
	return errCrash
}

// in is a fault hook that crashes at the first call for an object of namespace ns.
func (c *managerCrash) in(ns string) func(types.NamespacedName) error {
	return func(key types.NamespacedName) error {
		if key.Namespace != ns {
			return nil
		}
		return c.now()
	}
}

// wait waits until the crash happened, within a minute of its caller reaching the point where,
// and the manager has stopped.
func (c *managerCrash) wait(t *testing.T, where string) {
	t.Helper()
	select {
	case <-c.crashed:
	case <-time.After(60 * time.Second):
		t.Fatalf("the manager never reached %s", where)
	}
	eventually(t, 60*time.Second, "the manager stopped", func() (bool, error) {
		mgrMu.Lock()
		defer mgrMu.Unlock()
		return mgrCancel == nil, nil
	})
}

// managerCache is the running manager's cache.
func managerCache() cache.Cache {
	mgrMu.Lock()
	defer mgrMu.Unlock()
	return mgrCache
}

// stopManager stops the running manager and waits until it is gone.
func stopManager() {
	mgrMu.Lock()
	defer mgrMu.Unlock()
	if mgrCancel != nil {
		mgrCancel()
		<-mgrDone
		mgrCancel = nil
	}
}

// newNamespace creates a namespace of its own for a test.
func newNamespace(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("t%d-%d", time.Now().Unix()%100000, nsCounter.Add(1))
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	return name
}

// eventually polls cond until it returns true or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok && err == nil {
			return
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s (last error: %v)", what, lastErr)
}

// ---- builders ----

type taskOpt func(*rsv1.Task)

func task(name string, opts ...taskOpt) rsv1.Task {
	t := rsv1.Task{
		Name:       name,
		Containers: []rsv1.Container{{Image: "busybox:1.36"}},
		Steps:      []rsv1.Step{{Run: &rsv1.RunStep{Command: "echo " + name}}},
	}
	for _, o := range opts {
		o(&t)
	}
	return t
}

func dependsOn(parent string, conds ...rsv1.DependCondition) taskOpt {
	return func(t *rsv1.Task) {
		t.Depends = append(t.Depends, rsv1.TaskDependency{Task: parent, Conditions: conds})
	}
}

func ignoreFailure() taskOpt { return func(t *rsv1.Task) { t.IgnoreFailure = ptr.To(true) } }
func needsApproval() taskOpt { return func(t *rsv1.Task) { t.NeedsApproval = ptr.To(true) } }

func newRun(ns, name string, tasks ...rsv1.Task) *rsv1.Run {
	return &rsv1.Run{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       rsv1.RunSpec{Tasks: tasks},
	}
}

func createRun(t *testing.T, run *rsv1.Run) *rsv1.Run {
	t.Helper()
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatalf("creating run %s: %v", run.Name, err)
	}
	return run
}

func getRun(t *testing.T, ns, name string) *rsv1.Run {
	t.Helper()
	run := &rsv1.Run{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, run); err != nil {
		t.Fatalf("reading run %s: %v", name, err)
	}
	return run
}

func updateRun(t *testing.T, ns, name string, change func(*rsv1.Run)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		run := &rsv1.Run{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, run); err != nil {
			return err
		}
		change(run)
		return k8s.Update(context.Background(), run)
	})
	if err != nil {
		t.Fatalf("updating run %s: %v", name, err)
	}
}

func waitRunPhase(t *testing.T, ns, name string, phase rsv1.RunPhase) *rsv1.Run {
	t.Helper()
	var run *rsv1.Run
	eventually(t, 30*time.Second, fmt.Sprintf("run %s in phase %s", name, phase), func() (bool, error) {
		run = &rsv1.Run{}
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, run)
		return err == nil && run.Status.Phase == phase, err
	})
	return run
}

func taskStatus(run *rsv1.Run, name string) rsv1.TaskStatus {
	for _, ts := range run.Status.Tasks {
		if ts.Name == name {
			return ts
		}
	}
	return rsv1.TaskStatus{}
}

// ---- a fake executor played through the API ----

// fakeExecutor registers an Executor with a Lease and reports on its ExecutorTasks like a real one.
type fakeExecutor struct {
	t      *testing.T
	ns     string
	name   string
	cancel context.CancelFunc
	done   chan struct{}
}

type executorOpt func(*rsv1.Executor)

func withLimit(n int32) executorOpt { return func(e *rsv1.Executor) { e.Spec.ActiveTasksLimit = n } }

func withEndpoint(url string) executorOpt { return func(e *rsv1.Executor) { e.Spec.Endpoint = url } }

// startExecutor registers an executor and keeps its Lease renewed until the test ends or stop.
func startExecutor(t *testing.T, ns, name string, opts ...executorOpt) *fakeExecutor {
	t.Helper()
	ex := &rsv1.Executor{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       rsv1.ExecutorSpec{Driver: rsv1.DriverDocker, Permanent: true, Archs: []string{"amd64"}},
	}
	for _, o := range opts {
		o(ex)
	}
	ctx := context.Background()
	if err := k8s.Create(ctx, ex); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("registering executor %s: %v", name, err)
	}
	f := &fakeExecutor{t: t, ns: ns, name: name}
	f.heartbeat()
	return f
}

func (f *fakeExecutor) renew(ctx context.Context) error {
	now := metav1.NowMicro()
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: f.name, Namespace: f.ns}}
	err := k8s.Get(ctx, client.ObjectKeyFromObject(lease), lease)
	lease.Labels = map[string]string{rsv1.LabelExecutor: f.name}
	lease.Spec.HolderIdentity = ptr.To(f.name)
	lease.Spec.LeaseDurationSeconds = ptr.To[int32](3)
	lease.Spec.RenewTime = &now
	if apierrors.IsNotFound(err) {
		return k8s.Create(ctx, lease)
	}
	if err != nil {
		return err
	}
	return k8s.Update(ctx, lease)
}

// heartbeat starts renewing the Lease every second.
func (f *fakeExecutor) heartbeat() {
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel, f.done = cancel, make(chan struct{})
	if err := f.renew(ctx); err != nil {
		f.t.Fatalf("renewing lease of %s: %v", f.name, err)
	}
	go func() {
		defer close(f.done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				_ = f.renew(ctx)
			}
		}
	}()
	f.t.Cleanup(f.silence)
}

// silence stops renewing the Lease, like an executor that died.
func (f *fakeExecutor) silence() {
	if f.cancel != nil {
		f.cancel()
		<-f.done
		f.cancel = nil
	}
}

// object reads the executor's Executor.
func (f *fakeExecutor) object() *rsv1.Executor {
	f.t.Helper()
	ex := &rsv1.Executor{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: f.ns, Name: f.name}, ex); err != nil {
		f.t.Fatalf("reading executor %s: %v", f.name, err)
	}
	return ex
}

// tasks lists the executor's ExecutorTasks.
func (f *fakeExecutor) tasks() []rsv1.ExecutorTask {
	var list rsv1.ExecutorTaskList
	if err := k8s.List(context.Background(), &list, client.InNamespace(f.ns), client.MatchingLabels{rsv1.LabelExecutor: f.name}); err != nil {
		f.t.Fatalf("listing executor tasks: %v", err)
	}
	return list.Items
}

// report writes an ExecutorTask's status as its executor would.
func report(t *testing.T, ns, etName string, phase rsv1.TaskPhase, msg string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		et := &rsv1.ExecutorTask{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: etName}, et); err != nil {
			return err
		}
		now := metav1.Now()
		if et.Status.StartTime == nil {
			et.Status.StartTime = &now
		}
		et.Status.Phase = phase
		et.Status.Message = msg
		exit := int32(0)
		if phase == rsv1.TaskPhaseFailed {
			exit = 1
		}
		step := rsv1.StepStatus{Name: "step-0", Phase: rsv1.StepPhaseRunning, StartTime: &now}
		if phase.IsFinal() {
			et.Status.EndTime = &now
			step.Phase, step.ExitCode, step.EndTime = rsv1.StepPhase(phase), &exit, &now
			if phase == rsv1.TaskPhaseStopped {
				step.Phase = rsv1.StepPhaseStopped
			}
		}
		et.Status.Steps = []rsv1.StepStatus{step}
		return k8s.Status().Update(context.Background(), et)
	})
	if err != nil {
		t.Fatalf("reporting %s on %s: %v", phase, etName, err)
	}
}

// runTask finds the ExecutorTask of task scheduled by the run now named run: the one that run
// controls (a recreated run's are not an earlier run's of the same name), nil if there is none.
func runTask(ns, run, taskName string) (*rsv1.ExecutorTask, error) {
	ctx := context.Background()
	r := &rsv1.Run{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: run}, r); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	var list rsv1.ExecutorTaskList
	if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return nil, err
	}
	for i := range list.Items {
		if et := &list.Items[i]; metav1.IsControlledBy(et, r) && et.Spec.TaskName == taskName {
			return et, nil
		}
	}
	return nil, nil
}

// waitTask waits for the ExecutorTask of run/task to exist and returns it.
func waitTask(t *testing.T, ns, run, taskName string) *rsv1.ExecutorTask {
	t.Helper()
	var et *rsv1.ExecutorTask
	eventually(t, 30*time.Second, "executor task "+run+"/"+taskName, func() (bool, error) {
		var err error
		et, err = runTask(ns, run, taskName)
		return et != nil, err
	})
	return et
}

// noTask checks that run/task has no ExecutorTask.
func noTask(t *testing.T, ns, run, taskName string) {
	t.Helper()
	if et, err := runTask(ns, run, taskName); et != nil || err != nil {
		t.Fatalf("task %s of run %s has an ExecutorTask, it should not (err %v)", taskName, run, err)
	}
}

// complete runs a task to the given phase through its ExecutorTask.
func complete(t *testing.T, ns, run, taskName string, phase rsv1.TaskPhase) {
	t.Helper()
	et := waitTask(t, ns, run, taskName)
	report(t, ns, et.Name, rsv1.TaskPhaseRunning, "")
	report(t, ns, et.Name, phase, "")
}
