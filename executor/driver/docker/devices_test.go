package docker_test

import (
	"strings"
	"testing"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
)

// TestTasksCannotMakeDeviceNodes: a task's main container shares its directory with the executor,
// which runs as root on the host; a device node there could be opened by the executor in the instant
// between its check of the file's type and its open. Tasks do not get to make device nodes at all.
func TestTasksCannotMakeDeviceNodes(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	h.Create(t, ns, "mknod", e2e.ShellTask("mk", "if mknod /.runservice/null c 1 3; then echo MKNOD-ALLOWED; exit 3; fi; echo mknod-refused"))
	run := h.WaitRun(t, ns, "mknod", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("the task could make a device node in its directory: %+v", e2e.TaskStatus(run, "mk"))
	}
	h.Eventually(t, "the log fetched", func() bool { return e2e.TaskStatus(h.Run(t, ns, "mknod"), "mk").Steps[0].LogKey != "" })
	log, err := h.Logs(ns, "mknod", "mk")
	if err != nil || !strings.Contains(log, "mknod-refused") {
		t.Fatalf("log: %v\n%s", err, log)
	}
}
