package e2e

import (
	"context"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/runops"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

// Restarts are the runs RestartFromFailedTasks made.
type Restarts struct {
	// Original ran a (which saved a workspace) and b (which restored it and failed).
	Original *rsv1.Run
	// FailedOnly restarts Original from failed tasks, with b fixed; FromScratch restarts it whole.
	FailedOnly, FromScratch *rsv1.Run
}

// RestartFromFailedTasks: task a saves a workspace holding a stamp unique to its execution, b
// restores it and fails. Restarted from failed tasks (b fixed), a is not executed again (Success
// from the original, no ExecutorTask of the restart) and b restores the workspace a saved in the
// original: its log prints a's stamp, which runctl still reads from a's log through the restart.
// Restarted from scratch (runops, as runctl restart does), both run again. The suite checks what
// its driver shows of executions (Docker: container starts).
func RestartFromFailedTasks(t *testing.T, h *Harness, cfg *rest.Config, ns string) Restarts {
	ctx := context.Background()
	workdir := func(t *rsv1.Task) { t.WorkingDir = ptr.To("/work") }
	a := ShellTask("a", "mkdir -p out && date +stamp-%s-$$ > out/stamp && cat out/stamp", workdir, func(t *rsv1.Task) {
		t.Steps = append(t.Steps, rsv1.Step{SaveToWorkspace: &rsv1.SaveToWorkspaceStep{
			Contents: []rsv1.SaveContent{{SourceDir: "out", DestDir: ".", Paths: []string{"stamp"}}}}})
	})
	b := func(command string) rsv1.Task {
		t := ShellTask("b", command, After("a"), workdir)
		t.Steps = append([]rsv1.Step{{RestoreWorkspace: &rsv1.RestoreWorkspaceStep{DestDir: "."}}}, t.Steps...)
		return t
	}
	h.Create(t, ns, "flaky", a, b("echo restored $(cat stamp); exit 1"))
	orig := h.WaitRun(t, ns, "flaky", rsv1.RunPhaseFinished)
	if orig.Status.Result != rsv1.RunResultFailed || TaskStatus(orig, "b").Phase != rsv1.TaskPhaseFailed {
		t.Fatalf("original: %s %+v, want b Failed", orig.Status.Result, orig.Status.Tasks)
	}
	h.waitLogsFetched(t, ns, "flaky")
	orig = h.Run(t, ns, "flaky")
	stamp, err := h.Logs(ns, "flaky", "a", "a")
	if stamp = strings.TrimSpace(stamp); err != nil || !strings.HasPrefix(stamp, "stamp-") {
		t.Fatalf("runctl logs flaky a: %v\n%s", err, stamp)
	}

	fixed := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "flaky-fixed", Namespace: ns}, Spec: rsv1.RunSpec{
		Tasks:       []rsv1.Task{a, b("echo restored $(cat stamp)")},
		RestartFrom: &rsv1.RunRestart{Run: "flaky", FailedTasksOnly: true},
	}}
	if err := h.Client.Create(ctx, fixed); err != nil {
		t.Fatalf("creating the restart: %v", err)
	}
	fixed = h.WaitRun(t, ns, fixed.Name, rsv1.RunPhaseFinished)
	kept, origA := TaskStatus(fixed, "a"), TaskStatus(orig, "a")
	if fixed.Status.Result != rsv1.RunResultSuccess || kept.FromRun != "flaky" || kept.ExecutorTask != origA.ExecutorTask || !kept.StartTime.Equal(origA.StartTime) {
		t.Fatalf("restart from failed tasks: %s, a %+v; want Success with a the original's %+v", fixed.Status.Result, kept, origA)
	}
	var ets rsv1.ExecutorTaskList
	if err := h.Client.List(ctx, &ets, client.InNamespace(ns), client.MatchingLabels{rsv1.LabelRunUID: string(fixed.UID)}); err != nil {
		t.Fatal(err)
	}
	if len(ets.Items) != 1 || ets.Items[0].Spec.TaskName != "b" {
		t.Fatalf("the restart has %d ExecutorTasks (%v), want b's alone", len(ets.Items), ets.Items)
	}
	h.waitLogsFetched(t, ns, fixed.Name)
	if log, err := h.Logs(ns, fixed.Name, "b", "b"); err != nil || strings.TrimSpace(log) != "restored "+stamp {
		t.Fatalf("b of the restart printed %q (%v), want a's workspace of the original: restored %s", log, err, stamp)
	}
	if log, err := h.Logs(ns, fixed.Name, "a", "a"); err != nil || strings.TrimSpace(log) != stamp {
		t.Fatalf("runctl logs of the kept task a: %q (%v), want the original's %s", log, err, stamp)
	}

	cs, err := versioned.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	scratch, err := runops.Restart(ctx, cs, ns, "flaky", runops.RestartOptions{})
	if err != nil {
		t.Fatalf("restarting from scratch: %v", err)
	}
	scratch = h.WaitRun(t, ns, scratch.Name, rsv1.RunPhaseFinished)
	for _, ts := range scratch.Status.Tasks {
		if ts.FromRun != "" || ts.ExecutorTask == TaskStatus(orig, ts.Name).ExecutorTask {
			t.Fatalf("restart from scratch: task %s kept from %q (%s), want executed again", ts.Name, ts.FromRun, ts.ExecutorTask)
		}
	}
	if scratch.Status.Result != rsv1.RunResultFailed || TaskStatus(scratch, "a").Phase != rsv1.TaskPhaseSuccess {
		t.Fatalf("restart from scratch: %s %+v, want a again and b failing again", scratch.Status.Result, scratch.Status.Tasks)
	}
	return Restarts{Original: orig, FailedOnly: fixed, FromScratch: scratch}
}

// RestartRefusals: a restart of a run whose task still runs is refused, naming spec.restartFrom.run
// and saying what to do; once stopped, a restart into its change group with a token the group has
// moved past is refused with 409, and nothing is created.
func RestartRefusals(t *testing.T, h *Harness, cfg *rest.Config, ns string) {
	ctx := context.Background()
	cs, err := versioned.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	busy := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "busy", Namespace: ns}, Spec: rsv1.RunSpec{
		ChangeGroups: []string{"g"}, Tasks: []rsv1.Task{ShellTask("sleeper", "sleep 60")},
	}}
	if err := h.Client.Create(ctx, busy); err != nil {
		t.Fatal(err)
	}
	h.WaitStepRunning(t, ns, "busy", "sleeper")
	restart := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{GenerateName: "busy-", Namespace: ns}, Spec: rsv1.RunSpec{
		Tasks: busy.Spec.Tasks, RestartFrom: &rsv1.RunRestart{Run: "busy"},
	}}
	err = h.Client.Create(ctx, restart)
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.restartFrom.run") || !strings.Contains(err.Error(), "run busy is still Running: stop it") {
		t.Fatalf("restart of a running run: %v, want refused naming spec.restartFrom.run", err)
	}
	if _, err := runops.Stop(ctx, cs, ns, "busy"); err != nil {
		t.Fatal(err)
	}
	h.WaitRun(t, ns, "busy", rsv1.RunPhaseFinished)

	cg, err := cs.RunserviceV1alpha1().ChangeGroups(ns).Get(ctx, "g", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stale := rsv1.UpdateToken(cg)
	other := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "other-in-g", Namespace: ns}, Spec: rsv1.RunSpec{
		ChangeGroups: []string{"g"}, Tasks: []rsv1.Task{ShellTask("quick", "true")},
	}}
	if err := h.Client.Create(ctx, other); err != nil { // g moves on: the token read before is spent
		t.Fatal(err)
	}
	_, err = runops.Restart(ctx, cs, ns, "busy", runops.RestartOptions{FailedTasksOnly: true, UpdateToken: stale})
	if !apierrors.IsConflict(err) || !strings.Contains(err.Error(), `change group "g"`) {
		t.Fatalf("restart with a stale token: %v, want 409 naming change group g", err)
	}
	var runs rsv1.RunList
	if err := h.Client.List(ctx, &runs, client.InNamespace(ns), client.MatchingLabels{rsv1.LabelRestartedFrom: "busy"}); err != nil || len(runs.Items) != 0 {
		t.Fatalf("refused restarts left %d runs (%v)", len(runs.Items), err)
	}
	h.WaitRun(t, ns, "other-in-g", rsv1.RunPhaseFinished)
}
