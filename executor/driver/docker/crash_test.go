package docker_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dockercontainer "github.com/docker/docker/api/types/container"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor"
	dockerdriver "runservice.dev/runservice/executor/driver/docker"
	"runservice.dev/runservice/executor/toolbox"
	"runservice.dev/runservice/internal/e2e"
)

// TestCrashBetweenStartAndRelease: an executor that died after creating a task's containers and
// before letting the toolbox begin (the start file) leaves them waiting. Restarted under the same
// name, it adopts them; the toolbox must then be released (its steps never ran, so running them now
// runs them once), not left waiting for ever. A main container that was created but never started
// must not count as a task that succeeded without running a step.
func TestCrashBetweenStartAndRelease(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	ex, reg, data, drv := stoppedExecutor(t, ns, "docker-crash")
	// What the executor did before it died: the task recorded Running, its directory written, its
	// containers created (and, for the second, not even started).
	crashed := func(task string, start bool) *rsv1.ExecutorTask {
		return simulateCrash(t, ns, reg, data, drv, task, crashState{recorded: true, prepared: true, created: true, started: start})
	}
	waiting := crashed("waiting", true)
	if _, err := os.Stat(filepath.Join(data, "tasks", string(waiting.UID), toolbox.StartFile)); !os.IsNotExist(err) {
		t.Fatalf("the start file exists before the restart (%v): the scenario is not what it claims", err)
	}
	unstarted := crashed("unstarted", false)

	ex.Start()
	final := func(et *rsv1.ExecutorTask) *rsv1.ExecutorTask { return finalAfterRestart(t, et) }
	if got := final(waiting); got.Status.Phase != rsv1.TaskPhaseSuccess {
		t.Errorf("the adopted waiting task ended %s (%q), want Success: its steps had not run, so they run now, once", got.Status.Phase, got.Status.Message)
	}
	got := final(unstarted)
	if got.Status.Phase == rsv1.TaskPhaseSuccess {
		t.Errorf("a task whose container never ran a step ended Success")
	}
	if !strings.Contains(got.Status.Message, "never started") {
		t.Errorf("message %q, want it to say the container never started", got.Status.Message)
	}
}

// stoppedExecutor registers the executor name with a data directory of its own, and stops it: a
// permanent executor stays registered, its tasks wait for it. It returns the process (to start
// again), its Executor, its data directory and a driver acting in its name.
func stoppedExecutor(t *testing.T, ns, name string) (*e2e.Executor, *rsv1.Executor, string, *dockerdriver.Driver) {
	t.Helper()
	data := filepath.Join(t.TempDir(), "data")
	ex := startExecutor(t, ns, name, "--data-dir", data)
	reg := &rsv1.Executor{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, reg); err != nil {
		t.Fatal(err)
	}
	ex.Stop()
	drv, err := dockerdriver.New(name)
	if err != nil {
		t.Fatal(err)
	}
	return ex, reg, data, drv
}

// finalAfterRestart waits until et is final, and returns it.
func finalAfterRestart(t *testing.T, et *rsv1.ExecutorTask) *rsv1.ExecutorTask {
	t.Helper()
	got := &rsv1.ExecutorTask{}
	e2e.Eventually(t, 30*time.Second, "task "+et.Name+" final after the restart", func() bool {
		return k8s.Get(context.Background(), client.ObjectKeyFromObject(et), got) == nil && got.Status.Phase.IsFinal()
	})
	return got
}

// crashState is what an executor left of a task when it died: its status recorded Running, its
// directory prepared, its containers created, and started.
type crashState struct{ recorded, prepared, created, started bool }

// simulateCrash creates an ExecutorTask of the executor reg and leaves of it what s says, as an
// executor that died then would have.
func simulateCrash(t *testing.T, ns string, reg *rsv1.Executor, data string, drv *dockerdriver.Driver, task string, s crashState) *rsv1.ExecutorTask {
	t.Helper()
	ctx := context.Background()
	name := reg.Name
	et := &rsv1.ExecutorTask{
		ObjectMeta: metav1.ObjectMeta{Name: "crash-" + task, Namespace: ns, Labels: map[string]string{rsv1.LabelExecutor: name}},
		Spec: rsv1.ExecutorTaskSpec{
			RunName: "crash", TaskName: task, Executor: name, ExecutorUID: string(reg.UID),
			Task: e2e.ShellTask(task, "echo ran-once-"+task),
		},
	}
	if err := k8s.Create(ctx, et); err != nil {
		t.Fatal(err)
	}
	if s.recorded {
		now := metav1.Now()
		et.Status = rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseRunning, StartTime: &now,
			Steps: []rsv1.StepStatus{{Name: task, Phase: rsv1.StepPhaseNotStarted}}}
		if err := k8s.Status().Update(ctx, et); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(data, "tasks", string(et.UID))
	if s.prepared {
		if err := toolbox.WriteTaskFile(dir, &toolbox.TaskFile{Steps: toolbox.StepsFromTask(&et.Spec.Task)}); err != nil {
			t.Fatal(err)
		}
	}
	if !s.created {
		return et
	}
	err := drv.Start(ctx, &executor.Task{
		ExecutorTask: et, Dir: dir, Toolbox: filepath.Join(bins, "toolbox"),
		Labels: map[string]string{
			rsv1.LabelExecutor: name, rsv1.LabelRun: "crash", rsv1.LabelTask: task, rsv1.LabelExecutorTaskUID: string(et.UID),
		},
		Started: func() error { return nil }, // the executor died here
	})
	if err != nil {
		t.Fatal(err)
	}
	if !s.started {
		// Back to "created": as if the executor died between creating the container and
		// starting it.
		for _, c := range containersOf(t, name) {
			if c.Labels[rsv1.LabelExecutorTaskUID] != string(et.UID) {
				continue
			}
			info, err := docker.ContainerInspect(ctx, c.ID)
			if err != nil {
				t.Fatal(err)
			}
			if err := docker.ContainerRemove(ctx, c.ID, dockercontainer.RemoveOptions{Force: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := docker.ContainerCreate(ctx, info.Config, info.HostConfig, nil, nil, strings.TrimPrefix(info.Name, "/")); err != nil {
				t.Fatal(err)
			}
		}
	}
	return et
}

// TestCrashBeforeAnyStatusWrite: the executor writes nothing of a task before its containers exist
// (their deterministic names and labels are the lock), so a crash can leave a task NotStarted with
// its containers created, or with its directory prepared and no container. Restarted, the executor
// adopts the first (its step runs once; the container is not started again) and fails the second
// without running it: its containers may have run and been removed since, and nothing tells.
func TestCrashBeforeAnyStatusWrite(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	const name = "docker-unrecorded"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	starts := countStarts(ctx, name)
	ex, reg, data, drv := stoppedExecutor(t, ns, name)
	created := simulateCrash(t, ns, reg, data, drv, "created", crashState{prepared: true, created: true, started: true})
	prepared := simulateCrash(t, ns, reg, data, drv, "prepared", crashState{prepared: true})

	ex.Start()
	final := func(et *rsv1.ExecutorTask) *rsv1.ExecutorTask { return finalAfterRestart(t, et) }
	if got := final(created); got.Status.Phase != rsv1.TaskPhaseSuccess {
		t.Errorf("the task whose containers existed ended %s (%q), want Success: adopted, its steps run once", got.Status.Phase, got.Status.Message)
	}
	got := final(prepared)
	if got.Status.Phase != rsv1.TaskPhaseFailed || !strings.Contains(got.Status.Message, "not run again") {
		t.Errorf("the prepared task without containers ended %s (%q), want Failed, saying it is not run again", got.Status.Phase, got.Status.Message)
	}
	time.Sleep(time.Second) // let the event stream catch up
	if n := starts(); n[string(created.UID)] != 1 || n[string(prepared.UID)] != 0 {
		t.Errorf("container starts by task %v, want the created task's once (by the crashed executor) and none of the prepared one's", n)
	}
	waitNoContainers(t, name)
}

// TestDeletedTasksLeaveNoDirectory: the directory of a deleted ExecutorTask (its logs and archives,
// which nobody will fetch now) is removed, whether the executor saw the deletion or was down then.
func TestDeletedTasksLeaveNoDirectory(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	data := filepath.Join(t.TempDir(), "data")
	p := startExecutor(t, ns, "tidy", "--data-dir", data)
	h.Create(t, ns, "tidy", e2e.ShellTask("seen", "sleep 120"), e2e.ShellTask("unseen", "sleep 120"))
	ctx := context.Background()
	tasks := map[string]*rsv1.ExecutorTask{}
	for _, name := range []string{"seen", "unseen"} {
		e2e.Eventually(t, time.Minute, "task "+name+" running", func() bool { return h.StepRunning(t, ns, "tidy", name) })
		et := &rsv1.ExecutorTask{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: e2e.TaskStatus(h.Run(t, ns, "tidy"), name).ExecutorTask}, et); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(data, "tasks", string(et.UID))); err != nil {
			t.Fatalf("task %s has no directory: %v", name, err)
		}
		tasks[name] = et
	}
	gone := func(et *rsv1.ExecutorTask) {
		t.Helper()
		e2e.Eventually(t, 30*time.Second, "the directory of "+et.Name+" removed", func() bool {
			_, err := os.Stat(filepath.Join(data, "tasks", string(et.UID)))
			return os.IsNotExist(err)
		})
	}
	// Deleted while the executor runs it.
	if err := k8s.Delete(ctx, tasks["seen"]); err != nil {
		t.Fatal(err)
	}
	gone(tasks["seen"])
	// Deleted while the executor is down.
	p.Kill()
	if err := k8s.Delete(ctx, tasks["unseen"]); err != nil {
		t.Fatal(err)
	}
	p.Start()
	gone(tasks["unseen"])
	waitNoContainers(t, "tidy")
}
