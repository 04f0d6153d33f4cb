// Package e2e holds the end-to-end scenarios that every executor driver must pass unchanged: the
// Docker suite and the real-node Kubernetes suite run the same functions against their own
// control plane, manager and executors.
package e2e

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/objectstore"
)

// Harness is what a suite gives the scenarios.
type Harness struct {
	// Client talks to the apiserver as an admin.
	Client client.Client
	// Root is the repository root (for config/samples).
	Root string
	// Kubectl and Kubeconfig run the real kubectl.
	Kubectl, Kubeconfig string
	// Runctl is the built runctl; ObjectStore the store URL the manager writes.
	Runctl, ObjectStore string
	// Timeout bounds each wait (pods start slower than containers).
	Timeout time.Duration
}

// Eventually polls cond until it holds or the harness's timeout passes.
func (h *Harness) Eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	Eventually(t, h.Timeout, what, cond)
}

// Eventually polls cond until it holds, or fails the test once timeout passed.
func Eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
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

// Consistently polls cond for the whole of d, and fails the test the first time it does not hold;
// what says what should hold.
func Consistently(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err := cond(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

var namespaces atomic.Int64

// NewNamespace creates a namespace for one test, named prefix and a number unique in the process,
// with the ServiceAccount "default" that no controller creates here (the ServiceAccount admission
// plugin, where it runs, refuses pods without it).
func NewNamespace(t *testing.T, c client.Client, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s%d-%d", prefix, time.Now().Unix()%100000, namespaces.Add(1))
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}

// KubectlRun runs kubectl in a namespace.
func (h *Harness) KubectlRun(ns string, args ...string) (string, error) {
	out, err := exec.Command(h.Kubectl, append([]string{"--kubeconfig", h.Kubeconfig, "-n", ns}, args...)...).CombinedOutput()
	return string(out), err
}

// Logs runs `runctl logs` in a namespace.
func (h *Harness) Logs(ns string, args ...string) (string, error) {
	args = append(append([]string{"logs"}, args...), "-n", ns, "--kubeconfig", h.Kubeconfig, "--object-store", h.ObjectStore)
	ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
	defer cancel()
	// Bounded: a log the executor would block on must fail the test, not hang it.
	out, err := exec.CommandContext(ctx, h.Runctl, args...).CombinedOutput()
	return string(out), err
}

// Run reads a run.
func (h *Harness) Run(t *testing.T, ns, name string) *rsv1.Run {
	t.Helper()
	run := &rsv1.Run{}
	if err := h.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, run); err != nil {
		t.Fatalf("reading run %s: %v", name, err)
	}
	return run
}

// WaitRun waits for a run's phase.
func (h *Harness) WaitRun(t *testing.T, ns, name string, phase rsv1.RunPhase) *rsv1.Run {
	t.Helper()
	var run *rsv1.Run
	h.Eventually(t, fmt.Sprintf("run %s %s", name, phase), func() bool {
		run = h.Run(t, ns, name)
		return run.Status.Phase == phase
	})
	return run
}

// Create creates a run of the given tasks.
func (h *Harness) Create(t *testing.T, ns, name string, tasks ...rsv1.Task) {
	t.Helper()
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: rsv1.RunSpec{Tasks: tasks}}
	if err := h.Client.Create(context.Background(), run); err != nil {
		t.Fatalf("creating run %s: %v", name, err)
	}
}

// TaskStatus finds a task's status in a run.
func TaskStatus(run *rsv1.Run, name string) rsv1.TaskStatus {
	for _, ts := range run.Status.Tasks {
		if ts.Name == name {
			return ts
		}
	}
	return rsv1.TaskStatus{}
}

// ShellTask is a one-step busybox task.
func ShellTask(name, command string, opts ...func(*rsv1.Task)) rsv1.Task {
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

// After makes a task depend on parents (OnSuccess).
func After(parents ...string) func(*rsv1.Task) {
	return func(t *rsv1.Task) {
		for _, p := range parents {
			t.Depends = append(t.Depends, rsv1.TaskDependency{Task: p})
		}
	}
}

// WaitStepRunning waits until a one-step task's step runs.
func (h *Harness) WaitStepRunning(t *testing.T, ns, run, task string) {
	t.Helper()
	h.Eventually(t, "step of "+task+" running", func() bool { return h.StepRunning(t, ns, run, task) })
}

// StepRunning says whether a one-step task's step runs, as its executor reports it on the task's
// ExecutorTask: the run records a start only with its next status write, or StartDelay later.
func (h *Harness) StepRunning(t *testing.T, ns, run, task string) bool {
	t.Helper()
	ts := TaskStatus(h.Run(t, ns, run), task)
	if ts.ExecutorTask == "" {
		return false
	}
	et := &rsv1.ExecutorTask{}
	if err := h.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: ts.ExecutorTask}, et); err != nil {
		return false
	}
	return len(et.Status.Steps) == 1 && et.Status.Steps[0].Phase == rsv1.StepPhaseRunning
}

// waitLogsFetched waits until every started step of a run points at its log in the object store.
func (h *Harness) waitLogsFetched(t *testing.T, ns, name string) {
	t.Helper()
	h.Eventually(t, "the logs of "+name+" fetched", func() bool {
		for _, ts := range h.Run(t, ns, name).Status.Tasks {
			for _, s := range ts.Steps {
				if s.Phase != rsv1.StepPhaseNotStarted && s.LogKey == "" {
					return false
				}
			}
		}
		return true
	})
}

// SampleDiamond applies the README's sample diamond with kubectl: checkout saves a workspace, build
// and test restore it, package fans in; every step's log is then read with runctl.
func SampleDiamond(t *testing.T, h *Harness, ns string) {
	if out, err := h.KubectlRun(ns, "apply", "-f", filepath.Join(h.Root, "config", "samples", "run_diamond.yaml")); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	run := h.WaitRun(t, ns, "diamond", rsv1.RunPhaseFinished)
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
	out, err := h.KubectlRun(ns, "get", "runs")
	if err != nil || !strings.Contains(out, "Finished") || !strings.Contains(out, "4/4") {
		t.Fatalf("kubectl get runs: %v\n%s", err, out)
	}
	h.waitLogsFetched(t, ns, "diamond")
	if log, err := h.Logs(ns, "diamond", "build", "build"); err != nil || !strings.Contains(log, "main.c") {
		t.Fatalf("runctl logs diamond build build: %v\n%s", err, log)
	}
	if log, err := h.Logs(ns, "diamond", "package"); err != nil || !strings.Contains(log, "packaged") {
		t.Fatalf("runctl logs diamond package: %v\n%s", err, log)
	}
}

// ArchivedDiamond: the finished sample diamond, once archived (its runservice.dev/archive-after set
// to 0s), is gone from etcd and served by the archive API: kubectl lists it with its phase, result
// and tasks, and runctl still reads its logs.
func ArchivedDiamond(t *testing.T, h *Harness, ns string) {
	if out, err := h.KubectlRun(ns, "annotate", "run", "diamond", rsv1.AnnotationArchiveAfter+"=0s"); err != nil {
		t.Fatalf("kubectl annotate: %v\n%s", err, out)
	}
	h.Eventually(t, "the diamond archived and gone from etcd", func() bool {
		out, err := h.KubectlRun(ns, "get", "runs", "diamond")
		return err != nil && strings.Contains(out, "NotFound")
	})
	h.Eventually(t, "the diamond listed as archived", func() bool {
		out, err := h.KubectlRun(ns, "get", "archivedruns", "-l", "runservice.dev/result=Success")
		return err == nil && strings.Contains(out, "diamond") && strings.Contains(out, "Finished") && strings.Contains(out, "4/4")
	})
	if log, err := h.Logs(ns, "diamond", "build", "build"); err != nil || !strings.Contains(log, "main.c") {
		t.Fatalf("runctl logs of the archived diamond's build: %v\n%s", err, log)
	}
}

// FailingStep: a failing step's exit code reaches the run's status and fails the run; a command
// that is not found gives 127; the failed task's child is skipped; the logs say why.
func FailingStep(t *testing.T, h *Harness, ns string) {
	h.Create(t, ns, "fails",
		ShellTask("ok", "echo fine"),
		ShellTask("bad", "echo about to fail; exit 3"),
		ShellTask("notfound", "no-such-command --help"),
		ShellTask("after", "echo never", After("bad")))
	run := h.WaitRun(t, ns, "fails", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultFailed {
		t.Fatalf("result %s", run.Status.Result)
	}
	bad := TaskStatus(run, "bad")
	if bad.Phase != rsv1.TaskPhaseFailed || len(bad.Steps) != 1 || bad.Steps[0].ExitCode == nil || *bad.Steps[0].ExitCode != 3 {
		t.Fatalf("bad task: %+v", bad)
	}
	if !strings.Contains(bad.Message, "exit code 3") {
		t.Fatalf("bad task message %q does not give the exit code", bad.Message)
	}
	nf := TaskStatus(run, "notfound")
	if nf.Phase != rsv1.TaskPhaseFailed || nf.Steps[0].ExitCode == nil || *nf.Steps[0].ExitCode != 127 {
		t.Fatalf("command not found: %+v", nf)
	}
	if TaskStatus(run, "after").Phase != rsv1.TaskPhaseSkipped || TaskStatus(run, "ok").Phase != rsv1.TaskPhaseSuccess {
		t.Fatalf("tasks: %+v", run.Status.Tasks)
	}
	h.waitLogsFetched(t, ns, "fails")
	if log, err := h.Logs(ns, "fails", "notfound"); err != nil || !strings.Contains(log, "not found") {
		t.Fatalf("runctl logs fails notfound: %v\n%s", err, log)
	}
}

// WorkspaceFanIn: two parents save different files; the child restores both.
func WorkspaceFanIn(t *testing.T, h *Harness, ns string) {
	save := func(file, content string) func(*rsv1.Task) {
		return func(t *rsv1.Task) {
			t.Steps = []rsv1.Step{
				{Run: &rsv1.RunStep{Command: fmt.Sprintf("mkdir -p out && echo %s > out/%s", content, file)}},
				{SaveToWorkspace: &rsv1.SaveToWorkspaceStep{Contents: []rsv1.SaveContent{{SourceDir: "out", DestDir: "shared", Paths: []string{file}}}}},
			}
		}
	}
	workdir := func(t *rsv1.Task) { t.WorkingDir = ptr.To("/work") }
	child := ShellTask("child", "cat shared/a.txt shared/b.txt && test \"$(cat shared/a.txt)\" = from-a && test \"$(cat shared/b.txt)\" = from-b", After("pa", "pb"), workdir)
	child.Steps = append([]rsv1.Step{{RestoreWorkspace: &rsv1.RestoreWorkspaceStep{DestDir: "."}}}, child.Steps...)
	h.Create(t, ns, "fanin", ShellTask("pa", "", save("a.txt", "from-a"), workdir), ShellTask("pb", "", save("b.txt", "from-b"), workdir), child)
	run := h.WaitRun(t, ns, "fanin", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s: %+v", run.Status.Result, run.Status.Tasks)
	}
	h.waitLogsFetched(t, ns, "fanin")
	if log, err := h.Logs(ns, "fanin", "child", "1"); err != nil || !strings.Contains(log, "from-a") || !strings.Contains(log, "from-b") {
		t.Fatalf("child log: %v\n%s", err, log)
	}
}

// StopAndTimeout: stopping a run stops its running task (Stopped) and cancels the rest; a hanging
// step fails its task once timeoutSeconds passed.
func StopAndTimeout(t *testing.T, h *Harness, ns string) {
	h.Create(t, ns, "stopme", ShellTask("sleeper", "echo sleeping; sleep 120"), ShellTask("later", "echo later", After("sleeper")))
	h.Create(t, ns, "slow", ShellTask("hang", "sleep 120", func(t *rsv1.Task) { t.TimeoutSeconds = ptr.To[int64](3) }))
	h.WaitStepRunning(t, ns, "stopme", "sleeper")
	run := h.Run(t, ns, "stopme")
	run.Spec.Stop = ptr.To(true)
	if err := h.Client.Update(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	run = h.WaitRun(t, ns, "stopme", rsv1.RunPhaseFinished)
	if took := time.Since(stopped); took > 30*time.Second {
		t.Fatalf("stop took %v", took)
	}
	if run.Status.Result != rsv1.RunResultStopped || TaskStatus(run, "sleeper").Phase != rsv1.TaskPhaseStopped || TaskStatus(run, "later").Phase != rsv1.TaskPhaseCancelled {
		t.Fatalf("stopped run: %s %+v", run.Status.Result, run.Status.Tasks)
	}
	run = h.WaitRun(t, ns, "slow", rsv1.RunPhaseFinished)
	hang := TaskStatus(run, "hang")
	if run.Status.Result != rsv1.RunResultFailed || hang.Phase != rsv1.TaskPhaseFailed || !strings.Contains(hang.Message, "timed out after 3s") {
		t.Fatalf("timed out run: %s %+v", run.Status.Result, hang)
	}
}

// UserAndEnvironment: a task runs as the container's user, within its resources, with the run's
// environment, then the container's, then the step's.
func UserAndEnvironment(t *testing.T, h *Harness, ns string) {
	task := ShellTask("who", `echo "uid=$(id -u) A=$A B=$B C=$C"`, func(t *rsv1.Task) {
		t.Containers[0].User = ptr.To("1000")
		t.Containers[0].Env = []rsv1.EnvVar{{Name: "B", Value: "container"}, {Name: "C", Value: "container"}}
		t.Steps[0].Run.Env = []rsv1.EnvVar{{Name: "C", Value: "step"}}
		t.Containers[0].Resources = &rsv1.ContainerResources{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		}
	})
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "who", Namespace: ns}, Spec: rsv1.RunSpec{
		Environment: []rsv1.EnvVar{{Name: "A", Value: "run"}, {Name: "B", Value: "run"}, {Name: "C", Value: "run"}},
		Tasks:       []rsv1.Task{task},
	}}
	if err := h.Client.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	if run := h.WaitRun(t, ns, "who", rsv1.RunPhaseFinished); run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s: %+v", run.Status.Result, run.Status.Tasks)
	}
	h.waitLogsFetched(t, ns, "who")
	if log, err := h.Logs(ns, "who", "who"); err != nil || !strings.Contains(log, "uid=1000 A=run B=container C=step") {
		t.Fatalf("log: %v\n%s", err, log)
	}
}

// PrivilegedRefused: a privileged task on an executor that does not allow privileged containers (the
// only one there is) fails with a message that says so, and starts nothing.
func PrivilegedRefused(t *testing.T, h *Harness, ns, executor string, opts ...func(*rsv1.Task)) {
	opts = append(opts, func(t *rsv1.Task) { t.Containers[0].Privileged = ptr.To(true) })
	h.Create(t, ns, "privileged", ShellTask("priv", "true", opts...))
	run := h.WaitRun(t, ns, "privileged", rsv1.RunPhaseFinished)
	ts := TaskStatus(run, "priv")
	if run.Status.Result != rsv1.RunResultFailed || ts.Phase != rsv1.TaskPhaseFailed ||
		!strings.Contains(ts.Message, "privileged containers are not allowed on executor "+executor) {
		t.Fatalf("privileged task: %s %+v", run.Status.Result, ts)
	}
	if len(ts.Steps) > 0 && ts.Steps[0].Phase != rsv1.StepPhaseNotStarted {
		t.Fatalf("the refused task ran a step: %+v", ts.Steps)
	}
}

// RecreatedRun: a run deleted and created again under the same name (its ExecutorTasks removed
// with it, as the garbage collector does) restores its own parents' workspaces, never the old
// run's: its parent p1 saved "2", not the old run's "1", and its parent p2, skipped this time,
// saved nothing, while the old run's p2 had. The old run's logs stay where its status said they
// were, not overwritten by the new run's.
func RecreatedRun(t *testing.T, h *Harness, ns string) {
	ctx := context.Background()
	workdir := func(t *rsv1.Task) { t.WorkingDir = ptr.To("/work") }
	save := func(file string) func(*rsv1.Task) {
		return func(t *rsv1.Task) {
			t.Steps = append(t.Steps, rsv1.Step{SaveToWorkspace: &rsv1.SaveToWorkspaceStep{
				Contents: []rsv1.SaveContent{{SourceDir: "out", DestDir: ".", Paths: []string{file}}}}})
		}
	}
	gate := ShellTask("gate", `test "$GEN" = 1`, func(t *rsv1.Task) { t.IgnoreFailure = ptr.To(true) })
	p1 := ShellTask("p1", `echo gen-$GEN; mkdir -p out && echo $GEN > out/p1.txt`, workdir, save("p1.txt"))
	p2 := ShellTask("p2", `mkdir -p out && echo $GEN > out/p2.txt`, After("gate"), workdir, save("p2.txt"))
	child := ShellTask("child", `cat p1.txt; test "$(cat p1.txt)" = "$GEN"; if [ "$GEN" = 2 ]; then test ! -e p2.txt; fi`, workdir, func(t *rsv1.Task) {
		t.Depends = []rsv1.TaskDependency{{Task: "p1"}, {Task: "p2", Conditions: []rsv1.DependCondition{rsv1.DependOnSuccess, rsv1.DependOnSkipped}}}
		t.Steps = append([]rsv1.Step{{RestoreWorkspace: &rsv1.RestoreWorkspaceStep{DestDir: "."}}}, t.Steps...)
	})
	create := func(gen string) *rsv1.Run {
		run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "again", Namespace: ns}, Spec: rsv1.RunSpec{
			Environment: []rsv1.EnvVar{{Name: "GEN", Value: gen}},
			Tasks:       []rsv1.Task{*gate.DeepCopy(), *p1.DeepCopy(), *p2.DeepCopy(), *child.DeepCopy()},
		}}
		if err := h.Client.Create(ctx, run); err != nil {
			t.Fatalf("creating run again (GEN=%s): %v", gen, err)
		}
		run = h.WaitRun(t, ns, "again", rsv1.RunPhaseFinished)
		h.waitLogsFetched(t, ns, "again")
		run = h.Run(t, ns, "again")
		if run.Status.Result != rsv1.RunResultSuccess {
			t.Fatalf("run again (GEN=%s): result %s: %+v", gen, run.Status.Result, run.Status.Tasks)
		}
		return run
	}

	first := create("1")
	firstLog := TaskStatus(first, "p1").Steps[0].LogKey
	if err := h.Client.Delete(ctx, first); err != nil {
		t.Fatal(err)
	}
	var ets rsv1.ExecutorTaskList
	if err := h.Client.List(ctx, &ets, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for i := range ets.Items {
		if metav1.IsControlledBy(&ets.Items[i], first) {
			if err := h.Client.Delete(ctx, &ets.Items[i]); client.IgnoreNotFound(err) != nil {
				t.Fatal(err)
			}
		}
	}
	h.Eventually(t, "the first run gone", func() bool {
		return apierrors.IsNotFound(h.Client.Get(ctx, client.ObjectKeyFromObject(first), &rsv1.Run{}))
	})

	second := create("2")
	if got := TaskStatus(second, "p2").Phase; got != rsv1.TaskPhaseSkipped {
		t.Fatalf("p2 of the second run: %s, want Skipped", got)
	}
	if log, err := h.Logs(ns, "again", "child", "1"); err != nil || strings.TrimSpace(log) != "2" {
		t.Fatalf("the second run's child restored p1.txt %q (%v), want its own parent's 2", log, err)
	}
	if secondLog := TaskStatus(second, "p1").Steps[0].LogKey; secondLog == firstLog {
		t.Fatalf("both runs' p1 logs are at %s", firstLog)
	}
	store, err := objectstore.Open(ctx, h.ObjectStore)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	rc, err := store.Get(ctx, firstLog)
	if err != nil {
		t.Fatalf("the first run's log: %v", err)
	}
	defer rc.Close()
	if got, err := io.ReadAll(rc); err != nil || strings.TrimSpace(string(got)) != "gen-1" {
		t.Fatalf("the first run's p1 log at %s is %q (%v), want gen-1", firstLog, got, err)
	}
}
