package docker_test

import (
	"context"
	"errors"
	"k8s.io/client-go/util/retry"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
)

// One name, one process: an executor process runs tasks only while its Lease is held under its
// own identity, so that two processes started under the same --name never both take its tasks.

// exitedNonZero waits for a process that must stop by itself, with an error naming why.
func exitedNonZero(t *testing.T, e *e2e.Executor, why string) {
	t.Helper()
	err := e.Exited(20 * time.Second)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("executor process: %v, want it to exit by itself with a non-zero status", err)
	}
	out := e.Output()
	i := strings.Index(out, why)
	if i < 0 {
		t.Fatalf("the executor's output does not say %q:\n%s", why, out)
	}
	line, _, _ := strings.Cut(out[i:], "\n")
	t.Logf("the executor said: %s", line)
}

// finishedOnce waits for a one-task run to succeed and checks that its task's log has line once.
func finishedOnce(t *testing.T, ns, run, line string) {
	t.Helper()
	if got := h.WaitRun(t, ns, run, rsv1.RunPhaseFinished); got.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("run %s: %s, want Success: %+v", run, got.Status.Result, got.Status.Tasks)
	}
	log, err := h.Logs(ns, run, "t")
	if err != nil {
		t.Fatalf("runctl logs: %v: %s", err, log)
	}
	if n := strings.Count(log, line); n != 1 {
		t.Errorf("the task's log has %q %d times, want once:\n%s", line, n, log)
	}
}

// TestASecondProcessUnderTheSameNameRefusesToRun: a process started under the name of a live
// executor sees the Lease renewed by another process, refuses to run (non-zero exit, saying why)
// without touching the Executor or its tasks, and the first one goes on.
func TestASecondProcessUnderTheSameNameRefusesToRun(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	const name = "twin"
	startExecutor(t, ns, name)
	h.Create(t, ns, "busy", e2e.ShellTask("t", "echo ran-once; sleep 5"))
	h.WaitStepRunning(t, ns, "busy", "t")

	second := h.NewExecutor(t, filepath.Join(bins, "executor"), ns, name, executorArgs(t)...)
	second.Launch()
	exitedNonZero(t, second, "another process runs as executor twin")

	finishedOnce(t, ns, "busy", "ran-once")
	h.Create(t, ns, "later", e2e.ShellTask("t", "echo later"))
	finishedOnce(t, ns, "later", "later")
	waitNoContainers(t, name)
}

// TestAProcessWhoseLeaseWasTakenOverLeavesItsTasks: a process that finds its Lease renewed by
// another process of its name (it was held up past the Lease's expiry, and a new one took over)
// stops at once, saying why, and leaves its tasks' containers to the one that holds the Lease. A
// restart once that one's Lease expired takes over again and finishes the task, run once.
func TestAProcessWhoseLeaseWasTakenOverLeavesItsTasks(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	const name = "usurped"
	first := startExecutor(t, ns, name)
	h.Create(t, ns, "long", e2e.ShellTask("t", "echo started; sleep 8; echo finished"))
	h.WaitStepRunning(t, ns, "long", "t")

	ctx := context.Background()
	// The executor renews its Lease meanwhile (with its count of active tasks): read it again on
	// a conflict, as another process taking it over would.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		lease := &coordinationv1.Lease{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, lease); err != nil {
			return err
		}
		now := metav1.NowMicro()
		lease.Spec.HolderIdentity = ptr.To(rsv1.LeaseHolder(name, "elsewhere"))
		lease.Spec.RenewTime = &now
		return k8s.Update(ctx, lease)
	})
	if err != nil {
		t.Fatal(err)
	}
	exitedNonZero(t, first, "another process runs as executor usurped")
	if len(containersOf(t, name)) == 0 {
		t.Fatal("the process that lost its Lease removed its task's containers: they are the new holder's now")
	}

	first.Start() // waits until the other process's Lease expired
	finishedOnce(t, ns, "long", "finished")
	waitNoContainers(t, name)
}
