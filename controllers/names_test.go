package controllers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// TestExecutorTaskNamesDoNotCollideAcrossRuns: run deploy-prod's task api and run deploy's task
// prod-api both read "deploy-prod-api"; each gets an ExecutorTask of its own and finishes, neither
// adopts the other's.
func TestExecutorTaskNamesDoNotCollideAcrossRuns(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	createRun(t, newRun(ns, "deploy-prod", task("api")))
	waitTask(t, ns, "deploy-prod", "api")
	createRun(t, newRun(ns, "deploy", task("prod-api")))
	first := waitTask(t, ns, "deploy-prod", "api")
	second := waitTask(t, ns, "deploy", "prod-api")
	if first.Name == second.Name {
		t.Fatalf("both runs' tasks are ExecutorTask %s", first.Name)
	}
	checkIdentity(t, first, getRun(t, ns, "deploy-prod"), "api")
	checkIdentity(t, second, getRun(t, ns, "deploy"), "prod-api")
	complete(t, ns, "deploy-prod", "api", rsv1.TaskPhaseSuccess)
	complete(t, ns, "deploy", "prod-api", rsv1.TaskPhaseFailed)
	// Each run ends with its own task's outcome: a shared ExecutorTask would give both the same.
	if r := waitRunPhase(t, ns, "deploy-prod", rsv1.RunPhaseFinished); r.Status.Result != rsv1.RunResultSuccess {
		t.Errorf("deploy-prod: result %s, want Success", r.Status.Result)
	}
	if r := waitRunPhase(t, ns, "deploy", rsv1.RunPhaseFinished); r.Status.Result != rsv1.RunResultFailed {
		t.Errorf("deploy: result %s, want Failed", r.Status.Result)
	}
	for _, c := range []struct{ run, task, et string }{{"deploy-prod", "api", first.Name}, {"deploy", "prod-api", second.Name}} {
		if got := taskStatus(getRun(t, ns, c.run), c.task).ExecutorTask; got != c.et {
			t.Errorf("run %s task %s: status names ExecutorTask %q, want %q", c.run, c.task, got, c.et)
		}
	}
}

// TestRecreatedRunGetsItsOwnExecutorTasks: a run deleted while its ExecutorTasks are still there (the
// garbage collector lags, or the delete orphaned them; this control plane has no garbage collector
// at all) and created again under the same name schedules tasks of its own and finishes; the old
// run's ExecutorTask is left as it was.
func TestRecreatedRunGetsItsOwnExecutorTasks(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	startExecutor(t, ns, "ex1")
	createRun(t, newRun(ns, "again", task("a")))
	complete(t, ns, "again", "a", rsv1.TaskPhaseSuccess)
	old := getRun(t, ns, "again")
	waitRunPhase(t, ns, "again", rsv1.RunPhaseFinished)
	oldET := waitTask(t, ns, "again", "a")
	// Deleted without its archive (the archiver would delete its ExecutorTasks too).
	patch := client.RawPatch(types.JSONPatchType, []byte(`[{"op":"remove","path":"/metadata/finalizers"}]`))
	if err := k8s.Patch(ctx, old, patch); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Delete(ctx, old); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the old run gone", func() (bool, error) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(old), &rsv1.Run{})
		return err != nil, client.IgnoreNotFound(err)
	})

	createRun(t, newRun(ns, "again", task("a")))
	et := waitTask(t, ns, "again", "a")
	if et.Name == oldET.Name {
		t.Fatalf("the recreated run's task reuses the old run's ExecutorTask name %s", et.Name)
	}
	checkIdentity(t, et, getRun(t, ns, "again"), "a")
	// Selecting by the run-uid label gets the recreated run's task only.
	var list rsv1.ExecutorTaskList
	if err := k8s.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{rsv1.LabelRunUID: et.Spec.RunUID}); err != nil || len(list.Items) != 1 || list.Items[0].Name != et.Name {
		t.Errorf("ExecutorTasks labelled with the recreated run's uid: %d (%v), want only %s", len(list.Items), err, et.Name)
	}
	complete(t, ns, "again", "a", rsv1.TaskPhaseSuccess)
	run := waitRunPhase(t, ns, "again", rsv1.RunPhaseFinished)
	if run.Status.Result != rsv1.RunResultSuccess || taskStatus(run, "a").ExecutorTask != et.Name {
		t.Fatalf("recreated run: result %s, task a on %q, want Success on %s", run.Status.Result, taskStatus(run, "a").ExecutorTask, et.Name)
	}
	still := &rsv1.ExecutorTask{}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(oldET), still); err != nil {
		t.Fatalf("the old run's ExecutorTask: %v", err)
	}
	if still.Spec.Stop || !metav1.IsControlledBy(still, old) {
		t.Errorf("the old run's ExecutorTask was touched: stop %v, owners %v", still.Spec.Stop, still.OwnerReferences)
	}
}

// TestForeignExecutorTaskIsNotAdopted: an ExecutorTask that already has the name a task's would get,
// but belongs to another run or to another task, is never adopted: the task fails naming it, the
// run finishes (once an ExecutorTask it owns has ended), and the ExecutorTask is left alone.
func TestForeignExecutorTaskIsNotAdopted(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	ex := startExecutor(t, ns, "ex1").object()
	owner := createRun(t, suspended(newRun(ns, "owner", task("t"))))

	for _, c := range []struct {
		name, run string
		// squat makes the ExecutorTask that takes run's task t's name.
		squat func(run *rsv1.Run) (ownedBy *rsv1.Run, task string)
		says  string
	}{
		{"another run's", "victim-run", func(*rsv1.Run) (*rsv1.Run, string) { return owner, "t" }, `belongs to run "owner"`},
		{"another task's of the same run", "victim-task", func(run *rsv1.Run) (*rsv1.Run, string) { return run, "u" }, `is task "u"'s`},
	} {
		t.Run(c.name, func(t *testing.T) {
			name := c.run
			run := createRun(t, suspended(newRun(ns, name, task("t"))))
			ownedBy, taskName := c.squat(run)
			squatter := &rsv1.ExecutorTask{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: expectedExecutorTaskName(run, "t")},
				Spec: rsv1.ExecutorTaskSpec{
					RunName: ownedBy.Name, TaskName: taskName, Executor: ex.Name, ExecutorUID: string(ex.UID),
					Task: task(taskName),
				},
			}
			squatter.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(ownedBy, rsv1.GroupVersion.WithKind("Run"))}
			if err := k8s.Create(ctx, squatter); err != nil {
				t.Fatalf("creating the squatting ExecutorTask: %v", err)
			}
			updateRun(t, ns, name, func(r *rsv1.Run) { r.Spec.Suspend = ptr.To(false) })

			eventually(t, 30*time.Second, "task t final", func() (bool, error) {
				return taskStatus(getRun(t, ns, name), "t").Phase.IsFinal(), nil
			})
			if ownedBy == run {
				// An ExecutorTask of the run keeps it from finishing until its executor ends it.
				report(t, ns, squatter.Name, rsv1.TaskPhaseSuccess, "")
			}
			run = waitRunPhase(t, ns, name, rsv1.RunPhaseFinished)
			got := taskStatus(run, "t")
			if got.Phase != rsv1.TaskPhaseFailed || !strings.Contains(got.Message, squatter.Name) || !strings.Contains(got.Message, c.says) {
				t.Fatalf("task t: %s %q, want Failed naming %s and saying %s", got.Phase, got.Message, squatter.Name, c.says)
			}
			if run.Status.Result != rsv1.RunResultFailed || got.ExecutorTask == squatter.Name {
				t.Errorf("run result %s, task on %q: want Failed, not on the squatter", run.Status.Result, got.ExecutorTask)
			}
			after := &rsv1.ExecutorTask{}
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(squatter), after); err != nil {
				t.Fatal(err)
			}
			if after.Spec.Stop || after.Spec.RunName != ownedBy.Name || !metav1.IsControlledBy(after, ownedBy) {
				t.Errorf("the squatting ExecutorTask was touched: %+v %v", after.Spec, after.OwnerReferences)
			}
		})
	}
}

func suspended(run *rsv1.Run) *rsv1.Run {
	run.Spec.Suspend = ptr.To(true)
	return run
}

// expectedExecutorTaskName is the name the manager gives the ExecutorTask of run's task.
func expectedExecutorTaskName(run *rsv1.Run, task string) string {
	return rsv1.ExecutorTaskName(run.Name, run.UID, task)
}

// checkIdentity checks that et is named and labelled after its run's uid, which it records.
func checkIdentity(t *testing.T, et *rsv1.ExecutorTask, run *rsv1.Run, task string) {
	t.Helper()
	if want := expectedExecutorTaskName(run, task); et.Name != want {
		t.Errorf("ExecutorTask %s, want %s", et.Name, want)
	}
	if et.Labels[rsv1.LabelRunUID] != string(run.UID) || et.Spec.RunUID != string(run.UID) {
		t.Errorf("ExecutorTask %s: label %s=%q, spec.runUID %q, want the run's uid %s", et.Name, rsv1.LabelRunUID, et.Labels[rsv1.LabelRunUID], et.Spec.RunUID, run.UID)
	}
}
