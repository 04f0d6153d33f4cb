package docker_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/manager"
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
	nsCount    int
	nsMu       sync.Mutex
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
	build := exec.Command("go", "build", "-o", bins+"/", "./cmd/executor", "./cmd/toolbox", "./cmd/runctl")
	build.Dir, build.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
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
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := env.ManagerOptions()
	opts.ObjectStore = storeURL
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

func newNamespace(t *testing.T) string {
	t.Helper()
	nsMu.Lock()
	nsCount++
	name := fmt.Sprintf("d%d-%d", time.Now().Unix()%100000, nsCount)
	nsMu.Unlock()
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", timeout, what)
}

// executorProc is an executor process.
type executorProc struct {
	t       *testing.T
	name    string
	ns      string
	args    []string
	cmd     *exec.Cmd
	out     *bytes.Buffer
	dataDir string
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startExecutor starts an executor process and waits until its Executor is Ready.
func startExecutor(t *testing.T, ns, name string, extra ...string) *executorProc {
	t.Helper()
	port := freePort(t)
	p := &executorProc{t: t, name: name, ns: ns, dataDir: filepath.Join(t.TempDir(), "data")}
	p.args = append([]string{
		"--name", name, "--namespace", ns,
		"--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--data-dir", p.dataDir,
		"--toolbox", filepath.Join(bins, "toolbox"),
		"--object-store", storeURL,
		"--lease-duration", "4s", "--renew-interval", "1s",
	}, extra...)
	p.start()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("executor %s output:\n%s", name, p.out.String())
		}
	})
	return p
}

func (p *executorProc) start() {
	p.t.Helper()
	p.out = &bytes.Buffer{}
	p.cmd = exec.Command(filepath.Join(bins, "executor"), p.args...)
	p.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	eventually(p.t, 30*time.Second, "executor "+p.name+" registered", func() bool {
		ex := &rsv1.Executor{}
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: p.ns, Name: p.name}, ex)
		return err == nil && ex.DeletionTimestamp == nil && readyExecutor(ex)
	})
}

func readyExecutor(ex *rsv1.Executor) bool {
	for _, c := range ex.Status.Conditions {
		if c.Type == rsv1.ConditionReady && c.Status == metav1.ConditionTrue {
			return true
		}
	}
	return false
}

// kill kills the executor with SIGKILL, as a crash would.
func (p *executorProc) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
		p.cmd = nil
	}
}

func kubectl(t *testing.T, ns string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(env.Kubectl(), append([]string{"--kubeconfig", kubeconfig, "-n", ns}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func runctl(t *testing.T, ns string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bins, "runctl"), append([]string{"logs"}, append(args, "-n", ns, "--kubeconfig", kubeconfig, "--object-store", storeURL)...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func getRun(t *testing.T, ns, name string) *rsv1.Run {
	t.Helper()
	run := &rsv1.Run{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, run); err != nil {
		t.Fatalf("reading run %s: %v", name, err)
	}
	return run
}

func waitRun(t *testing.T, ns, name string, phase rsv1.RunPhase, timeout time.Duration) *rsv1.Run {
	t.Helper()
	var run *rsv1.Run
	eventually(t, timeout, fmt.Sprintf("run %s %s", name, phase), func() bool {
		run = getRun(t, ns, name)
		return run.Status.Phase == phase
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

func shellTask(name, command string, opts ...func(*rsv1.Task)) rsv1.Task {
	t := rsv1.Task{
		Name:       name,
		Containers: []rsv1.Container{{Image: "busybox:1.36"}},
		Steps:      []rsv1.Step{{Run: &rsv1.RunStep{Name: ptr.To(name), Command: command}}},
	}
	for _, o := range opts {
		o(&t)
	}
	return t
}

func after(parents ...string) func(*rsv1.Task) {
	return func(t *rsv1.Task) {
		for _, p := range parents {
			t.Depends = append(t.Depends, rsv1.TaskDependency{Task: p})
		}
	}
}

func createRun(t *testing.T, ns, name string, tasks ...rsv1.Task) {
	t.Helper()
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: rsv1.RunSpec{Tasks: tasks}}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatalf("creating run %s: %v", name, err)
	}
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
	eventually(t, 30*time.Second, "the containers of "+executor+" removed", func() bool { return len(containersOf(t, executor)) == 0 })
}

// TestSampleDiamondEndToEnd applies the README's sample diamond with kubectl and reads its logs with
// runctl: it passes files through workspaces (checkout saves, build and test restore).
func TestSampleDiamondEndToEnd(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "docker-1")
	if out, err := kubectl(t, ns, "apply", "-f", filepath.Join(env.Root, "config", "samples", "run_diamond.yaml")); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	run := waitRun(t, ns, "diamond", rsv1.RunPhaseFinished, 2*time.Minute)
	if run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s: %+v", run.Status.Result, run.Status.Tasks)
	}
	for _, ts := range run.Status.Tasks {
		for _, s := range ts.Steps {
			if s.Phase != rsv1.StepPhaseSuccess || s.StartTime == nil || s.EndTime == nil {
				t.Errorf("task %s step %s: %+v", ts.Name, s.Name, s)
			}
		}
	}
	out, err := kubectl(t, ns, "get", "runs")
	if err != nil || !strings.Contains(out, "Finished") || !strings.Contains(out, "4/4") {
		t.Fatalf("kubectl get runs: %v\n%s", err, out)
	}
	eventually(t, 30*time.Second, "logs fetched into the object store", func() bool {
		run = getRun(t, ns, "diamond")
		for _, ts := range run.Status.Tasks {
			for _, s := range ts.Steps {
				if s.LogKey == "" {
					return false
				}
			}
		}
		return true
	})
	log, err := runctl(t, ns, "diamond", "build", "build")
	if err != nil || !strings.Contains(log, "main.c") {
		t.Fatalf("runctl logs diamond build build: %v\n%s", err, log)
	}
	log, err = runctl(t, ns, "diamond", "package")
	if err != nil || !strings.Contains(log, "packaged") {
		t.Fatalf("runctl logs diamond package: %v\n%s", err, log)
	}
	waitNoContainers(t, "docker-1")
}

func TestFailingStepFailsTheRun(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "docker-1")
	createRun(t, ns, "fails",
		shellTask("ok", "echo fine"),
		shellTask("bad", "echo about to fail; exit 3"),
		shellTask("notfound", "no-such-command --help"),
		shellTask("after", "echo never", after("bad")))
	run := waitRun(t, ns, "fails", rsv1.RunPhaseFinished, 2*time.Minute)
	if run.Status.Result != rsv1.RunResultFailed {
		t.Fatalf("result %s", run.Status.Result)
	}
	bad := taskStatus(run, "bad")
	if bad.Phase != rsv1.TaskPhaseFailed || len(bad.Steps) != 1 || bad.Steps[0].ExitCode == nil || *bad.Steps[0].ExitCode != 3 {
		t.Fatalf("bad task: %+v", bad)
	}
	if !strings.Contains(bad.Message, "exit code 3") {
		t.Fatalf("bad task message %q does not give the exit code", bad.Message)
	}
	nf := taskStatus(run, "notfound")
	if nf.Phase != rsv1.TaskPhaseFailed || nf.Steps[0].ExitCode == nil || *nf.Steps[0].ExitCode != 127 {
		t.Fatalf("command not found: %+v", nf)
	}
	if taskStatus(run, "after").Phase != rsv1.TaskPhaseSkipped || taskStatus(run, "ok").Phase != rsv1.TaskPhaseSuccess {
		t.Fatalf("tasks: %+v", run.Status.Tasks)
	}
	eventually(t, 30*time.Second, "logs fetched", func() bool {
		return taskStatus(getRun(t, ns, "fails"), "notfound").Steps[0].LogKey != ""
	})
	log, err := runctl(t, ns, "fails", "notfound")
	if err != nil || !strings.Contains(log, "not found") {
		t.Fatalf("runctl logs fails notfound: %v\n%s", err, log)
	}
}

func TestWorkspaceFanIn(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "docker-1")
	save := func(file, content string) func(*rsv1.Task) {
		return func(t *rsv1.Task) {
			t.Steps = []rsv1.Step{
				{Run: &rsv1.RunStep{Command: fmt.Sprintf("mkdir -p out && echo %s > out/%s", content, file)}},
				{SaveToWorkspace: &rsv1.SaveToWorkspaceStep{Contents: []rsv1.SaveContent{{SourceDir: "out", DestDir: "shared", Paths: []string{file}}}}},
			}
		}
	}
	child := shellTask("child", "cat shared/a.txt shared/b.txt && test \"$(cat shared/a.txt)\" = from-a && test \"$(cat shared/b.txt)\" = from-b", after("pa", "pb"))
	child.Steps = append([]rsv1.Step{{RestoreWorkspace: &rsv1.RestoreWorkspaceStep{DestDir: "."}}}, child.Steps...)
	workdir := func(t *rsv1.Task) { t.WorkingDir = ptr.To("/work") }
	pa := shellTask("pa", "", save("a.txt", "from-a"), workdir)
	pb := shellTask("pb", "", save("b.txt", "from-b"), workdir)
	workdir(&child)
	createRun(t, ns, "fanin", pa, pb, child)
	run := waitRun(t, ns, "fanin", rsv1.RunPhaseFinished, 2*time.Minute)
	if run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s: %+v", run.Status.Result, run.Status.Tasks)
	}
	log, err := runctl(t, ns, "fanin", "child", "1")
	if err != nil || !strings.Contains(log, "from-a") || !strings.Contains(log, "from-b") {
		t.Fatalf("child log: %v\n%s", err, log)
	}
}

func TestServiceContainerIsReachable(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "docker-1")
	task := shellTask("with-service", "for i in $(seq 1 20); do wget -q -O- http://127.0.0.1:8080/ && exit 0; sleep 0.25; done; exit 1")
	task.Containers = append(task.Containers, rsv1.Container{
		Image:   "busybox:1.36",
		Command: []string{"/bin/sh", "-c", "mkdir -p /www && echo hello-from-service > /www/index.html && exec httpd -f -p 8080 -h /www"},
	})
	createRun(t, ns, "svc", task)
	run := waitRun(t, ns, "svc", rsv1.RunPhaseFinished, 2*time.Minute)
	if run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s: %+v", run.Status.Result, run.Status.Tasks)
	}
	log, err := runctl(t, ns, "svc", "with-service")
	if err != nil || !strings.Contains(log, "hello-from-service") {
		t.Fatalf("log: %v\n%s", err, log)
	}
	waitNoContainers(t, "docker-1")
}

func TestStopAndTimeout(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "docker-1")
	createRun(t, ns, "stopme", shellTask("sleeper", "echo sleeping; sleep 120"), shellTask("later", "echo later", after("sleeper")))
	createRun(t, ns, "slow", shellTask("hang", "sleep 120", func(t *rsv1.Task) { t.TimeoutSeconds = ptr.To[int64](2) }))
	eventually(t, time.Minute, "the sleeper step running", func() bool {
		ts := taskStatus(getRun(t, ns, "stopme"), "sleeper")
		return len(ts.Steps) == 1 && ts.Steps[0].Phase == rsv1.StepPhaseRunning
	})
	run := getRun(t, ns, "stopme")
	run.Spec.Stop = ptr.To(true)
	if err := k8s.Update(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	run = waitRun(t, ns, "stopme", rsv1.RunPhaseFinished, time.Minute)
	if took := time.Since(stopped); took > 30*time.Second {
		t.Fatalf("stop took %v", took)
	}
	if run.Status.Result != rsv1.RunResultStopped || taskStatus(run, "sleeper").Phase != rsv1.TaskPhaseStopped || taskStatus(run, "later").Phase != rsv1.TaskPhaseCancelled {
		t.Fatalf("stopped run: %s %+v", run.Status.Result, run.Status.Tasks)
	}
	run = waitRun(t, ns, "slow", rsv1.RunPhaseFinished, time.Minute)
	hang := taskStatus(run, "hang")
	if run.Status.Result != rsv1.RunResultFailed || hang.Phase != rsv1.TaskPhaseFailed || !strings.Contains(hang.Message, "timed out after 2s") {
		t.Fatalf("timed out run: %s %+v", run.Status.Result, hang)
	}
	waitNoContainers(t, "docker-1")
}

func TestBadInputFailsClearly(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "docker-1")
	noImage := shellTask("noimage", "true", func(t *rsv1.Task) { t.Containers[0].Image = "no-such-image.invalid/nothing:1" })
	priv := shellTask("priv", "true", func(t *rsv1.Task) { t.Containers[0].Privileged = ptr.To(true) })
	noShell := shellTask("noshell", "true", func(t *rsv1.Task) { t.Steps[0].Run.Shell = ptr.To("/bin/bash") })
	createRun(t, ns, "bad", noImage, noShell)
	// A privileged task finds no executor that allows it: the run says so and waits.
	createRun(t, ns, "privileged", priv)
	run := waitRun(t, ns, "bad", rsv1.RunPhaseFinished, 2*time.Minute)
	if ts := taskStatus(run, "noimage"); ts.Phase != rsv1.TaskPhaseFailed || !strings.Contains(ts.Message, "no-such-image.invalid/nothing:1") {
		t.Fatalf("missing image: %+v", ts)
	}
	if ts := taskStatus(run, "noshell"); ts.Phase != rsv1.TaskPhaseFailed || ts.Steps[0].ExitCode == nil || *ts.Steps[0].ExitCode != 127 || !strings.Contains(ts.Message, "/bin/bash") {
		t.Fatalf("missing shell: %+v", ts)
	}
	eventually(t, 30*time.Second, "the privileged run explains why it waits", func() bool {
		for _, c := range getRun(t, ns, "privileged").Status.Conditions {
			if c.Type == "Scheduled" && c.Status == metav1.ConditionFalse && strings.Contains(c.Message, "privileged containers not allowed") {
				return true
			}
		}
		return false
	})
	waitNoContainers(t, "docker-1")
}

// countStarts counts container start events of an executor's tasks, by ExecutorTask uid.
func countStarts(ctx context.Context, executor string) func() map[string]int {
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
				starts[m.Actor.Attributes[rsv1.LabelExecutorTaskUID]]++
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
	ns := newNamespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	starts := countStarts(ctx, "phoenix")
	p := startExecutor(t, ns, "phoenix")
	createRun(t, ns, "adopt", shellTask("long", "echo begin; sleep 6; echo end"))
	eventually(t, time.Minute, "the step running", func() bool {
		ts := taskStatus(getRun(t, ns, "adopt"), "long")
		return len(ts.Steps) == 1 && ts.Steps[0].Phase == rsv1.StepPhaseRunning
	})
	p.kill()
	time.Sleep(2 * time.Second)
	if ts := taskStatus(getRun(t, ns, "adopt"), "long"); ts.Phase != rsv1.TaskPhaseRunning {
		t.Fatalf("while the executor is down the task is %s, want Running", ts.Phase)
	}
	p.start()
	run := waitRun(t, ns, "adopt", rsv1.RunPhaseFinished, time.Minute)
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
	eventually(t, 30*time.Second, "logs fetched", func() bool { return taskStatus(getRun(t, ns, "adopt"), "long").Steps[0].LogKey != "" })
	log, err := runctl(t, ns, "adopt", "long")
	if err != nil || !strings.Contains(log, "begin") || !strings.Contains(log, "end") {
		t.Fatalf("log: %v\n%s", err, log)
	}
}

// TestExecutorKilledThenDeleted: its task becomes Failed/ExecutorRemoved, and when the executor comes
// back under the same name it removes the old task's containers instead of running them.
func TestExecutorKilledThenDeleted(t *testing.T) {
	ns := newNamespace(t)
	p := startExecutor(t, ns, "gone")
	createRun(t, ns, "orphan", shellTask("long", "sleep 120"))
	eventually(t, time.Minute, "the step running", func() bool {
		ts := taskStatus(getRun(t, ns, "orphan"), "long")
		return len(ts.Steps) == 1 && ts.Steps[0].Phase == rsv1.StepPhaseRunning
	})
	p.kill()
	if out, err := kubectl(t, ns, "delete", "executor", "gone"); err != nil {
		t.Fatalf("kubectl delete executor: %v\n%s", err, out)
	}
	run := waitRun(t, ns, "orphan", rsv1.RunPhaseFinished, time.Minute)
	if ts := taskStatus(run, "long"); ts.Phase != rsv1.TaskPhaseFailed || ts.Reason != rsv1.ReasonExecutorRemoved {
		t.Fatalf("task: %+v", ts)
	}
	p.start()
	waitNoContainers(t, "gone")
}

// TestDockerDaemonRestart: the daemon restarts under a running executor; the running task ends (its
// container died with the daemon) with a clear message, and the executor goes on running new tasks.
func TestDockerDaemonRestart(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "survivor")
	createRun(t, ns, "interrupted", shellTask("long", "sleep 120"))
	eventually(t, time.Minute, "the step running", func() bool {
		ts := taskStatus(getRun(t, ns, "interrupted"), "long")
		return len(ts.Steps) == 1 && ts.Steps[0].Phase == rsv1.StepPhaseRunning
	})
	restartDockerd(t)
	run := waitRun(t, ns, "interrupted", rsv1.RunPhaseFinished, 2*time.Minute)
	if ts := taskStatus(run, "long"); ts.Phase != rsv1.TaskPhaseFailed || !strings.Contains(ts.Message, "long") {
		t.Fatalf("interrupted task: %+v", ts)
	}
	createRun(t, ns, "afterwards", shellTask("quick", "echo still working"))
	if run := waitRun(t, ns, "afterwards", rsv1.RunPhaseFinished, 2*time.Minute); run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("after the restart: %s %+v", run.Status.Result, run.Status.Tasks)
	}
}

func restartDockerd(t *testing.T) {
	t.Helper()
	out, err := exec.Command("pkill", "-TERM", "-x", "dockerd").CombinedOutput()
	if err != nil {
		t.Fatalf("stopping dockerd: %v %s", err, out)
	}
	eventually(t, 60*time.Second, "dockerd stopped", func() bool {
		return exec.Command("pgrep", "-x", "dockerd").Run() != nil
	})
	setup := exec.Command(filepath.Join(env.Root, "hack", "docker.sh"))
	if out, err := setup.CombinedOutput(); err != nil {
		t.Fatalf("restarting dockerd: %v\n%s", err, out)
	}
}

// TestFollowLiveLog: runctl logs -f streams a running step's log from the executor to its end.
func TestFollowLiveLog(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "docker-1")
	createRun(t, ns, "live", shellTask("ticker", "for i in 1 2 3 4 5 6; do echo tick-$i; sleep 0.5; done"))
	eventually(t, time.Minute, "the step running", func() bool {
		ts := taskStatus(getRun(t, ns, "live"), "ticker")
		return len(ts.Steps) == 1 && ts.Steps[0].Phase == rsv1.StepPhaseRunning
	})
	log, err := runctl(t, ns, "live", "ticker", "ticker", "-f")
	if err != nil {
		t.Fatalf("runctl logs -f: %v\n%s", err, log)
	}
	for i := 1; i <= 6; i++ {
		if !strings.Contains(log, fmt.Sprintf("tick-%d", i)) {
			t.Fatalf("followed log misses tick-%d:\n%s", i, log)
		}
	}
	if run := getRun(t, ns, "live"); taskStatus(run, "ticker").Phase != rsv1.TaskPhaseSuccess && taskStatus(run, "ticker").Phase != rsv1.TaskPhaseRunning {
		t.Fatalf("task %s", taskStatus(run, "ticker").Phase)
	}
}
