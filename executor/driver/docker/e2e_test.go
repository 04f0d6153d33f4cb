package docker_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
	"go.uber.org/zap/zapcore"
	"gocloud.dev/blob"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

// These tests run the real thing: the manager against a real apiserver + etcd, executor processes
// built from cmd/executor, the toolbox in real containers on the local Docker daemon.

var (
	env        *testenv.Env
	k8s        client.Client
	docker     *dockerclient.Client
	bins       string // executor, toolbox, runctl
	kubeconfig string
	storeURL   string
	h          *e2e.Harness
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	level := zapcore.ErrorLevel
	if os.Getenv("TEST_LOG") != "" {
		level = zapcore.DebugLevel
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(level)))
	root, err := testenv.RepoRoot()
	if err != nil {
		return fail(err)
	}
	// Docker is set up by the test itself (installed and started when missing, where the machine allows).
	setup := exec.Command(filepath.Join(root, "hack", "docker.sh"))
	setup.Stdout, setup.Stderr = os.Stderr, os.Stderr
	if err := setup.Run(); err != nil {
		if os.Getenv("CI") != "" {
			return fail(fmt.Errorf("docker is required in CI: %w", err))
		}
		fmt.Fprintln(os.Stderr, "docker e2e: no docker daemon here, nothing to test:", err)
		return 0
	}
	if docker, err = dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation()); err != nil {
		return fail(err)
	}
	tmp, err := os.MkdirTemp("", "runservice-docker-e2e-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	bins = filepath.Join(tmp, "bin")
	if err := e2e.Build(root, bins, "./cmd/executor", "./cmd/toolbox", "./cmd/runctl"); err != nil {
		return fail(fmt.Errorf("building binaries: %w", err))
	}
	if env, err = testenv.Start(); err != nil {
		return fail(err)
	}
	defer func() { _ = env.Stop() }()
	kubeconfig = filepath.Join(tmp, "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.Kubeconfig, 0o600); err != nil {
		return fail(err)
	}
	if k8s, err = client.New(env.Config, client.Options{Scheme: manager.Scheme()}); err != nil {
		return fail(err)
	}
	// The object store is a real S3 server (the path real deployments take); the embedded file://
	// default is covered by internal/objectstore and `make run`.
	s3, err := testenv.StartS3(root, filepath.Join(tmp, "s3"))
	if err != nil {
		return fail(err)
	}
	defer s3.Stop()
	for _, kv := range s3.Env {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v) // for the manager here, and the executors and runctl it starts
	}
	storeURL = s3.URL
	h = &e2e.Harness{
		Client: k8s, Root: root, Kubectl: env.Kubectl(), Kubeconfig: kubeconfig,
		Runctl: filepath.Join(bins, "runctl"), ObjectStore: storeURL, Timeout: 2 * time.Minute,
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := env.ManagerOptions()
	opts.ObjectStore = storeURL
	// Runs are archived an hour after their end unless a test says otherwise; the archive API is
	// registered with the apiserver.
	opts.Controllers.Archive, opts.Controllers.ArchiveAfter = true, time.Hour
	if opts.ArchiveAPI, err = env.ArchiveAPI(ctx); err != nil {
		return fail(err)
	}
	opts.ArchiveIndexDir = filepath.Join(tmp, "archive-index")
	mgr, err := manager.New(ctx, env.Config, opts)
	if err != nil {
		return fail(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
	code := m.Run()
	cancel()
	<-done
	return code
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, "docker e2e:", err)
	return 1
}

// startExecutor starts a Docker executor process and waits until its Executor is Ready.
func startExecutor(t *testing.T, ns, name string, extra ...string) *e2e.Executor {
	t.Helper()
	return h.StartExecutor(t, filepath.Join(bins, "executor"), ns, name, executorArgs(t, extra...)...)
}

// executorArgs are the flags of a Docker executor process of the suite; extra flags override them.
func executorArgs(t *testing.T, extra ...string) []string {
	return append([]string{
		"--listen", e2e.FreeAddr(t, "127.0.0.1"),
		"--data-dir", filepath.Join(t.TempDir(), "data"),
		"--toolbox", filepath.Join(bins, "toolbox"),
		"--object-store", storeURL,
		"--lease-duration", "4s", "--renew-interval", "1s",
	}, extra...)
}

// containersOf lists the containers of an executor's tasks.
func containersOf(t *testing.T, executor string) []container.Summary {
	t.Helper()
	list, err := docker.ContainerList(context.Background(), container.ListOptions{
		All: true, Filters: filters.NewArgs(filters.Arg("label", rsv1.LabelExecutor+"="+executor)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func waitNoContainers(t *testing.T, executor string) {
	t.Helper()
	e2e.Eventually(t, 30*time.Second, "the containers of "+executor+" removed", func() bool { return len(containersOf(t, executor)) == 0 })
}

// The scenarios every driver passes unchanged (internal/e2e), here on Docker; each leaves no container.

func TestSampleDiamondEndToEnd(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	e2e.SampleDiamond(t, h, ns)
	e2e.ArchivedDiamond(t, h, ns)
	waitNoContainers(t, "docker-1")
}

// TestArchivedManyEndToEnd: 50 runs of real containers, archived, read back with kubectl and runctl
// (see e2e.ArchivedMany).
func TestArchivedManyEndToEnd(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	e2e.ArchivedMany(t, h, ns, 50)
	waitNoContainers(t, "docker-1")
}

func TestFailingStepFailsTheRun(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	e2e.FailingStep(t, h, ns)
	waitNoContainers(t, "docker-1")
}

func TestWorkspaceFanIn(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	e2e.WorkspaceFanIn(t, h, ns)
	waitNoContainers(t, "docker-1")
}

// TestRestoreNeedsEveryArchiveItsParentSaved: an archive a parent saved that is not in the object
// store when the child starts (removed after the fetch, behind the manager's back) fails the child
// before it runs, naming the parent and the step; it never runs on a workspace with a hole.
func TestRestoreNeedsEveryArchiveItsParentSaved(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	parent := e2e.ShellTask("parent", "mkdir -p out && echo x > out/x", func(t *rsv1.Task) {
		t.Steps = append(t.Steps, rsv1.Step{SaveToWorkspace: &rsv1.SaveToWorkspaceStep{Contents: []rsv1.SaveContent{{SourceDir: "out", DestDir: ".", Paths: []string{"x"}}}}})
	})
	child := e2e.ShellTask("child", "true", e2e.After("parent"), func(t *rsv1.Task) { t.NeedsApproval = ptr.To(true) })
	child.Steps = append([]rsv1.Step{{RestoreWorkspace: &rsv1.RestoreWorkspaceStep{DestDir: "."}}}, child.Steps...)
	h.Create(t, ns, "gap", parent, child)
	e2e.Eventually(t, 2*time.Minute, "the child waiting for approval, and the parent's fetch recorded", func() bool {
		run := h.Run(t, ns, "gap")
		return e2e.TaskStatus(run, "child").WaitingApproval && e2e.TaskStatus(run, "parent").Fetched != ""
	})
	ctx := context.Background()
	bucket, err := blob.OpenBucket(ctx, storeURL)
	if err != nil {
		t.Fatal(err)
	}
	defer bucket.Close()
	gap := h.Run(t, ns, "gap")
	parentArchive := objectstore.Task{Namespace: ns, Run: "gap", RunUID: string(gap.UID), ExecutorTask: e2e.TaskStatus(gap, "parent").ExecutorTask}.ArchiveKey(1)
	if err := bucket.Delete(ctx, parentArchive); err != nil {
		t.Fatalf("removing the fetched archive: %v", err)
	}
	run := h.Run(t, ns, "gap")
	run.Spec.ApprovedTasks = []string{"child"}
	if err := k8s.Update(ctx, run); err != nil {
		t.Fatal(err)
	}
	run = h.WaitRun(t, ns, "gap", rsv1.RunPhaseFinished)
	got := e2e.TaskStatus(run, "child")
	want := `preparing the task: workspace of task "parent" step 1 (save-to-workspace) is missing from the object store`
	if got.Phase != rsv1.TaskPhaseFailed || got.Message != want {
		t.Fatalf("child %s %q, want Failed %q", got.Phase, got.Message, want)
	}
	waitNoContainers(t, "docker-1")
}

// TestRecreatedRunRestoresItsOwnWorkspace: see e2e.RecreatedRun.
func TestRecreatedRunRestoresItsOwnWorkspace(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	e2e.RecreatedRun(t, h, ns)
	waitNoContainers(t, "docker-1")
}

func TestStopAndTimeout(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	e2e.StopAndTimeout(t, h, ns)
	waitNoContainers(t, "docker-1")
}

func TestServiceContainerIsReachable(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	task := e2e.ShellTask("with-service", "for i in $(seq 1 20); do wget -q -O- http://127.0.0.1:8080/ && exit 0; sleep 0.25; done; exit 1")
	task.Containers = append(task.Containers, rsv1.Container{
		Image:   "busybox:1.36",
		Command: []string{"/bin/sh", "-c", "mkdir -p /www && echo hello-from-service > /www/index.html && exec httpd -f -p 8080 -h /www"},
	})
	h.Create(t, ns, "svc", task)
	run := h.WaitRun(t, ns, "svc", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s: %+v", run.Status.Result, run.Status.Tasks)
	}
	log, err := h.Logs(ns, "svc", "with-service")
	if err != nil || !strings.Contains(log, "hello-from-service") {
		t.Fatalf("log: %v\n%s", err, log)
	}
	waitNoContainers(t, "docker-1")
}

func TestBadInputFailsClearly(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	noImage := e2e.ShellTask("noimage", "true", func(t *rsv1.Task) { t.Containers[0].Image = "no-such-image.invalid/nothing:1" })
	noShell := e2e.ShellTask("noshell", "true", func(t *rsv1.Task) { t.Steps[0].Run.Shell = ptr.To("/bin/bash") })
	h.Create(t, ns, "bad", noImage, noShell)
	run := h.WaitRun(t, ns, "bad", rsv1.RunPhaseFinished)
	if ts := e2e.TaskStatus(run, "noimage"); ts.Phase != rsv1.TaskPhaseFailed || !strings.Contains(ts.Message, "no-such-image.invalid/nothing:1") {
		t.Fatalf("missing image: %+v", ts)
	}
	if ts := e2e.TaskStatus(run, "noshell"); ts.Phase != rsv1.TaskPhaseFailed || ts.Steps[0].ExitCode == nil || *ts.Steps[0].ExitCode != 127 || !strings.Contains(ts.Message, "/bin/bash") {
		t.Fatalf("missing shell: %+v", ts)
	}
	e2e.PrivilegedRefused(t, h, ns, "docker-1")
	waitNoContainers(t, "docker-1")
}

// countStarts counts container start events of an executor's tasks, by ExecutorTask uid.
func countStarts(ctx context.Context, executor string) func() map[string]int {
	return countStartsBy(ctx, executor, func(labels map[string]string) string { return labels[rsv1.LabelExecutorTaskUID] })
}

// countStartsBy counts container start events of an executor's tasks, by what key makes of the
// started container's labels.
func countStartsBy(ctx context.Context, executor string, key func(labels map[string]string) string) func() map[string]int {
	var mu sync.Mutex
	starts := map[string]int{}
	msgs, _ := docker.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", "container"), filters.Arg("event", "start"), filters.Arg("label", rsv1.LabelExecutor+"="+executor),
		filters.Arg("label", "runservice.dev/role=main"),
	)})
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-msgs:
				mu.Lock()
				starts[key(m.Actor.Attributes)]++
				mu.Unlock()
			}
		}
	}()
	return func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]int{}
		for k, v := range starts {
			out[k] = v
		}
		return out
	}
}

// TestExecutorKilledAndRestartedAdopts: an executor killed mid-task leaves the task Running while it
// is down; restarted, it re-adopts the container and finishes the task, which started exactly once.
func TestExecutorKilledAndRestartedAdopts(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	starts := countStarts(ctx, "phoenix")
	p := startExecutor(t, ns, "phoenix")
	h.Create(t, ns, "adopt", e2e.ShellTask("long", "echo begin; sleep 6; echo end"))
	e2e.Eventually(t, time.Minute, "the step running", func() bool { return h.StepRunning(t, ns, "adopt", "long") })
	p.Kill()
	time.Sleep(2 * time.Second)
	if ts := e2e.TaskStatus(h.Run(t, ns, "adopt"), "long"); ts.Phase.IsFinal() {
		t.Fatalf("while the executor is down the task is %s, want it not ended", ts.Phase)
	}
	p.Start()
	run := h.WaitRun(t, ns, "adopt", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s: %+v", run.Status.Result, run.Status.Tasks)
	}
	time.Sleep(time.Second) // let the event stream catch up
	got := starts()
	if len(got) != 1 {
		t.Fatalf("container starts by task: %v, want one task started once", got)
	}
	for uid, n := range got {
		if n != 1 {
			t.Fatalf("task %s started %d times", uid, n)
		}
	}
	e2e.Eventually(t, 30*time.Second, "logs fetched", func() bool { return e2e.TaskStatus(h.Run(t, ns, "adopt"), "long").Steps[0].LogKey != "" })
	log, err := h.Logs(ns, "adopt", "long")
	if err != nil || !strings.Contains(log, "begin") || !strings.Contains(log, "end") {
		t.Fatalf("log: %v\n%s", err, log)
	}
}

// TestExecutorDeletedWhileDown: kubectl delete executor of a Docker executor that is down with a
// running container only starts the removal: the Executor stays (its finalizer) and the task stays
// unfinished while nobody knows the container gone. Back under the same name, the executor removes
// the old task's container instead of running it, releases its Executor and exits; only then does
// the task fail with ExecutorRemoved.
func TestExecutorDeletedWhileDown(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	p := startExecutor(t, ns, "gone")
	h.Create(t, ns, "orphan", e2e.ShellTask("long", "sleep 120"))
	h.WaitStepRunning(t, ns, "orphan", "long")
	p.Kill()
	if out, err := h.KubectlRun(ns, "delete", "executor", "gone", "--wait=false"); err != nil {
		t.Fatalf("kubectl delete executor: %v\n%s", err, out)
	}
	e2e.Consistently(t, 3*time.Second, "while the executor is down", func() error {
		if ts := e2e.TaskStatus(h.Run(t, ns, "orphan"), "long"); ts.Phase.IsFinal() {
			return fmt.Errorf("the task became %s (%s) while its container runs", ts.Phase, ts.Reason)
		}
		if len(containersOf(t, "gone")) == 0 {
			return fmt.Errorf("the container is gone, but nobody removed it")
		}
		return nil
	})
	p.Launch()
	if err := p.Exited(time.Minute); err != nil {
		t.Fatalf("back under its name, the executor should complete its removal and exit 0: %v", err)
	}
	if n := len(containersOf(t, "gone")); n != 0 {
		t.Fatalf("the executor released its Executor with %d containers left", n)
	}
	run := h.WaitRun(t, ns, "orphan", rsv1.RunPhaseFinished)
	if ts := e2e.TaskStatus(run, "long"); ts.Phase != rsv1.TaskPhaseFailed || ts.Reason != rsv1.ReasonExecutorRemoved {
		t.Fatalf("task: %+v", ts)
	}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "gone"}, &rsv1.Executor{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the Executor should be gone: %v", err)
	}
}

// TestDeletingALiveExecutorRemovesItsContainersFirst: kubectl delete executor of a running Docker
// executor: it removes its task's container and only then releases its Executor, so that the task
// fails with ExecutorRemoved only once its container is really gone; then the executor exits.
func TestDeletingALiveExecutorRemovesItsContainersFirst(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	// A slow heartbeat: a manager that does not wait for the executor fails the task long before.
	p := startExecutor(t, ns, "doomed", "--renew-interval", "3s", "--lease-duration", "10s")
	h.Create(t, ns, "cut", e2e.ShellTask("long", "sleep 120"))
	h.WaitStepRunning(t, ns, "cut", "long")
	if out, err := h.KubectlRun(ns, "delete", "executor", "doomed", "--wait=false"); err != nil {
		t.Fatalf("kubectl delete executor: %v\n%s", err, out)
	}
	e2e.Eventually(t, time.Minute, "the task final", func() bool {
		ts := e2e.TaskStatus(h.Run(t, ns, "cut"), "long")
		if !ts.Phase.IsFinal() {
			return false
		}
		if n := len(containersOf(t, "doomed")); n != 0 {
			t.Fatalf("the task became %s (%s) while %d containers of it remain", ts.Phase, ts.Reason, n)
		}
		if ts.Phase != rsv1.TaskPhaseFailed || ts.Reason != rsv1.ReasonExecutorRemoved {
			t.Fatalf("task: %+v", ts)
		}
		return true
	})
	if err := p.Exited(30 * time.Second); err != nil {
		t.Fatalf("the removed executor should exit 0: %v", err)
	}
}

// TestDockerDaemonRestart: the daemon restarts under a running executor; the running task ends (its
// container died with the daemon) with a clear message, and the executor goes on running new tasks.
func TestDockerDaemonRestart(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "survivor")
	h.Create(t, ns, "interrupted", e2e.ShellTask("long", "sleep 120"))
	e2e.Eventually(t, time.Minute, "the step running", func() bool { return h.StepRunning(t, ns, "interrupted", "long") })
	restartDockerd(t)
	run := h.WaitRun(t, ns, "interrupted", rsv1.RunPhaseFinished)
	if ts := e2e.TaskStatus(run, "long"); ts.Phase != rsv1.TaskPhaseFailed || !strings.Contains(ts.Message, "long") {
		t.Fatalf("interrupted task: %+v", ts)
	}
	h.Create(t, ns, "afterwards", e2e.ShellTask("quick", "echo still working"))
	if run := h.WaitRun(t, ns, "afterwards", rsv1.RunPhaseFinished); run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("after the restart: %s %+v", run.Status.Result, run.Status.Tasks)
	}
}

func restartDockerd(t *testing.T) {
	t.Helper()
	out, err := exec.Command("pkill", "-TERM", "-x", "dockerd").CombinedOutput()
	if err != nil {
		t.Fatalf("stopping dockerd: %v %s", err, out)
	}
	e2e.Eventually(t, 60*time.Second, "dockerd stopped", func() bool {
		return exec.Command("pgrep", "-x", "dockerd").Run() != nil
	})
	setup := exec.Command(filepath.Join(env.Root, "hack", "docker.sh"))
	if out, err := setup.CombinedOutput(); err != nil {
		t.Fatalf("restarting dockerd: %v\n%s", err, out)
	}
}

// TestFollowLiveLog: runctl logs -f streams a running step's log from the executor to its end.
func TestFollowLiveLog(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	h.Create(t, ns, "live", e2e.ShellTask("ticker", "for i in 1 2 3 4 5 6; do echo tick-$i; sleep 0.5; done"))
	e2e.Eventually(t, time.Minute, "the step running", func() bool { return h.StepRunning(t, ns, "live", "ticker") })
	log, err := h.Logs(ns, "live", "ticker", "ticker", "-f")
	if err != nil {
		t.Fatalf("runctl logs -f: %v\n%s", err, log)
	}
	for i := 1; i <= 6; i++ {
		if !strings.Contains(log, fmt.Sprintf("tick-%d", i)) {
			t.Fatalf("followed log misses tick-%d:\n%s", i, log)
		}
	}
	// The run records the task's start and end with its next writes (a start up to the run
	// controller's StartDelay later): the log was followed before, from the executor.
	if run := h.WaitRun(t, ns, "live", rsv1.RunPhaseFinished); e2e.TaskStatus(run, "ticker").Phase != rsv1.TaskPhaseSuccess {
		t.Fatalf("task %s", e2e.TaskStatus(run, "ticker").Phase)
	}
}

func TestUserAndEnvironment(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	e2e.UserAndEnvironment(t, h, ns)
}
