package runops_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/runops"
	"runservice.dev/runservice/internal/testenv"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

var (
	env *testenv.Env
	k8s client.Client
	cs  versioned.Interface // what runctl and the web view pass to runops
)

func TestMain(m *testing.M) {
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	klog.SetLogger(logf.Log) // the archive API's generic server logs, at the same level
	code, err := setUp(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

// setUp starts the control plane and a manager that archives (runs that ask for it right away) and
// serves the archive API, so that restarts of archived runs are tested too.
func setUp(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "runops-test-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(dir)
	if env, err = testenv.Start(); err != nil {
		return 1, err
	}
	defer env.Stop()
	if k8s, err = client.New(env.Config, client.Options{Scheme: manager.Scheme()}); err != nil {
		return 1, err
	}
	if cs, err = versioned.NewForConfig(env.Config); err != nil {
		return 1, err
	}
	// The manager archives runs that ask for it at once, and serves the archive API.
	archiving, _, err := env.Archiving(context.Background(), dir)
	if err != nil {
		return 1, err
	}
	stop, err := env.StartManager(archiving)
	if err != nil {
		return 1, err
	}
	defer stop()
	return m.Run(), nil
}

func newNamespace(t *testing.T) string {
	t.Helper()
	ns := e2e.NewNamespace(t, k8s, "runops")
	testenv.StartFakeExecutor(t, k8s, ns, "docker-1")
	return ns
}

func task(name string, needsApproval bool, parents ...string) rsv1.Task {
	t := rsv1.Task{
		Name:       name,
		Containers: []rsv1.Container{{Image: "busybox:1.36"}},
		Steps:      []rsv1.Step{{Run: &rsv1.RunStep{Command: "echo " + name}}},
	}
	if needsApproval {
		t.NeedsApproval = ptr.To(true)
	}
	for _, p := range parents {
		t.Depends = append(t.Depends, rsv1.TaskDependency{Task: p})
	}
	return t
}

func create(t *testing.T, run *rsv1.Run) *rsv1.Run {
	t.Helper()
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatalf("creating run %s: %v", run.Name, err)
	}
	return run
}

func newRun(ns, name string, tasks ...rsv1.Task) *rsv1.Run {
	return &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: rsv1.RunSpec{Tasks: tasks}}
}

func get(t *testing.T, ns, name string) *rsv1.Run {
	t.Helper()
	run := &rsv1.Run{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, run); err != nil {
		t.Fatalf("reading run %s: %v", name, err)
	}
	return run
}

// until polls cond for up to 30 s.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	e2e.Eventually(t, 30*time.Second, what, cond)
}

func succeeded(from, to int) rsv1.ExecutorTaskStatus {
	start, end := metav1.NewTime(time.Now().Add(time.Duration(from)*time.Second)), metav1.NewTime(time.Now().Add(time.Duration(to)*time.Second))
	return rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseSuccess, StartTime: &start, EndTime: &end}
}

func wantErr(t *testing.T, what string, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: %v, want an error with %q", what, err, want)
	}
}

// TestApprove: approving adds to spec.approvedTasks, several at once; a task the run does not
// have, one that needs no approval, one already approved, and a run that is not there are errors
// that say so, and nothing is written then (not even the valid tasks of the same call).
func TestApprove(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	create(t, newRun(ns, "release", task("build", false), task("eu", true, "build"), task("us", true, "build")))

	_, err := runops.Approve(ctx, cs, ns, "release", "eu", "asia")
	wantErr(t, "an unknown task", err, `run release has no task "asia" (its tasks: build, eu, us)`)
	_, err = runops.Approve(ctx, cs, ns, "release", "build")
	wantErr(t, "a task without needsApproval", err, `task "build" of run release does not need approval (tasks that do: eu, us)`)
	_, err = runops.Approve(ctx, cs, ns, "release")
	wantErr(t, "no task", err, "name the tasks to approve")
	_, err = runops.Approve(ctx, cs, ns, "nosuch", "eu")
	if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), "in namespace "+ns) {
		t.Errorf("a run not there: %v, want NotFound naming namespace %s", err, ns)
	}
	if got := get(t, ns, "release").Spec.ApprovedTasks; len(got) != 0 {
		t.Fatalf("refused approvals wrote %v", got)
	}

	run, err := runops.Approve(ctx, cs, ns, "release", "eu", "us")
	if err != nil || !slices.Equal(run.Spec.ApprovedTasks, []string{"eu", "us"}) {
		t.Fatalf("approve eu us: %v, %v", err, run)
	}
	if got := get(t, ns, "release").Spec.ApprovedTasks; !slices.Equal(got, []string{"eu", "us"}) {
		t.Fatalf("stored approvedTasks %v", got)
	}
	_, err = runops.Approve(ctx, cs, ns, "release", "us")
	wantErr(t, "approving twice", err, `task "us" of run release is already approved`)
}

// TestStop: stop sets spec.stop and the manager stops the run; stopping it again while it stops
// writes nothing; stopping a run that has ended is refused, naming its phase and result.
func TestStop(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	create(t, newRun(ns, "long", task("a", false)))
	running := succeeded(0, 0)
	running.Phase, running.EndTime = rsv1.TaskPhaseRunning, nil
	testenv.ReportTask(t, k8s, ns, "long", "a", running)
	until(t, "long running", func() bool { return get(t, ns, "long").Status.Phase == rsv1.RunPhaseRunning })

	run, err := runops.Stop(ctx, cs, ns, "long")
	if err != nil || !run.IsStopped() {
		t.Fatalf("stop: %v, %v", err, run)
	}
	generation := get(t, ns, "long").Generation
	if _, err := runops.Stop(ctx, cs, ns, "long"); err != nil {
		t.Fatalf("stopping a run that stops: %v", err)
	}
	if g := get(t, ns, "long").Generation; g != generation {
		t.Errorf("stopping again wrote the spec (generation %d -> %d)", generation, g)
	}
	stopped := succeeded(0, 1)
	stopped.Phase = rsv1.TaskPhaseStopped
	testenv.ReportTask(t, k8s, ns, "long", "a", stopped) // the executor stopped it
	until(t, "long stopped", func() bool { return get(t, ns, "long").Status.Phase == rsv1.RunPhaseFinished })
	_, err = runops.Stop(ctx, cs, ns, "long")
	wantErr(t, "stopping an ended run", err, "run long has ended (Finished, Stopped): there is nothing to stop")
	_, err = runops.Stop(ctx, cs, ns, "nosuch")
	if !apierrors.IsNotFound(err) {
		t.Errorf("stopping a run not there: %v", err)
	}
}

// TestRestart: the new run has the restarted run's graph, environment, change groups and the
// user's labels and annotations (not runservice's, not kubectl's last applied configuration), a
// name generated from the original's, and spec.restartFrom naming it by name and uid. A run that
// has not ended is refused, saying what to do; a run not there says so with its namespace.
func TestRestart(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	orig := newRun(ns, "nightly", task("a", false), task("b", false, "a"))
	orig.Spec.ChangeGroups = []string{"main"}
	orig.Spec.Environment = []rsv1.EnvVar{{Name: "CI", Value: "true"}}
	orig.Labels = map[string]string{"team": "infra"}
	orig.Annotations = map[string]string{"owner": "ana", corev1.LastAppliedConfigAnnotation: "{}"}
	create(t, orig)

	_, err := runops.Restart(ctx, cs, ns, "nightly", runops.RestartOptions{})
	wantErr(t, "a run not ended", err, ": stop it first (runctl stop nightly) or wait for its end (runctl wait nightly)")
	_, err = runops.Restart(ctx, cs, ns, "nosuch", runops.RestartOptions{})
	if !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), "run nosuch is neither live nor archived in namespace "+ns) {
		t.Errorf("a run not there: %v", err)
	}

	testenv.ReportTask(t, k8s, ns, "nightly", "a", succeeded(-2, -1))
	failed := succeeded(-1, 0)
	failed.Phase = rsv1.TaskPhaseFailed
	testenv.ReportTask(t, k8s, ns, "nightly", "b", failed)
	until(t, "nightly finished", func() bool { return get(t, ns, "nightly").Status.Phase == rsv1.RunPhaseFinished })
	orig = get(t, ns, "nightly")

	run, err := runops.Restart(ctx, cs, ns, "nightly", runops.RestartOptions{FailedTasksOnly: true})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	run = get(t, ns, run.Name)
	if !strings.HasPrefix(run.Name, "nightly-") || len(run.Name) != len("nightly-")+5 {
		t.Errorf("restart's name %q", run.Name)
	}
	if rf := run.Spec.RestartFrom; rf == nil || rf.Run != "nightly" || rf.UID != orig.UID || !rf.FailedTasksOnly {
		t.Errorf("restartFrom %+v, want nightly %s failedTasksOnly", run.Spec.RestartFrom, orig.UID)
	}
	if !slices.Equal(run.Spec.ChangeGroups, orig.Spec.ChangeGroups) || !slices.Equal(run.Spec.Environment, orig.Spec.Environment) || len(run.Spec.Tasks) != 2 || run.Spec.Tasks[1].Depends[0].Task != "a" {
		t.Errorf("restart's spec %+v, want the graph, groups and environment of %+v", run.Spec, orig.Spec)
	}
	if run.Labels["team"] != "infra" || run.Annotations["owner"] != "ana" {
		t.Errorf("the user's labels and annotations were not kept: %v %v", run.Labels, run.Annotations)
	}
	if _, ok := run.Annotations[corev1.LastAppliedConfigAnnotation]; ok {
		t.Errorf("the restart kept kubectl's last applied configuration of the original")
	}
	for k, v := range run.Labels { // the group label is the defaulter's, for the restart's own groups
		if k != "team" && k != "changegroup.runservice.dev/main" && k != rsv1.LabelRestartedFrom {
			t.Errorf("the restart has label %s=%s", k, v)
		}
	}
}

// TestRestartWithAStaleTokenConflicts: a restart into a change group carries the update token as
// any create: a stale one is refused with 409 Conflict naming the group; the current one succeeds.
func TestRestartWithAStaleTokenConflicts(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	held := newRun(ns, "held", task("a", false))
	held.Spec.ChangeGroups, held.Spec.Suspend = []string{"main"}, ptr.To(true)
	create(t, held)
	group := &rsv1.ChangeGroup{}
	until(t, "the group", func() bool {
		return k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "main"}, group) == nil
	})
	stale := group.ResourceVersion
	if _, err := runops.Stop(ctx, cs, ns, "held"); err != nil {
		t.Fatal(err)
	}
	until(t, "held cancelled and the group's ledger written", func() bool {
		_ = k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "main"}, group)
		return get(t, ns, "held").Status.Phase == rsv1.RunPhaseCancelled && group.ResourceVersion != stale
	})
	_, err := runops.Restart(ctx, cs, ns, "held", runops.RestartOptions{UpdateToken: stale})
	if !apierrors.IsConflict(err) || !strings.Contains(err.Error(), `change group "main"`) {
		t.Fatalf("a stale token: %v, want 409 Conflict naming the group", err)
	}
	until(t, "a restart with the current token", func() bool {
		_ = k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "main"}, group)
		_, err := runops.Restart(ctx, cs, ns, "held", runops.RestartOptions{UpdateToken: group.ResourceVersion})
		return err == nil
	})
}

// TestRestartAnArchivedRun: a run archived and gone from etcd is restarted from its archived
// document, with its uid; Get reads it as archived.
func TestRestartAnArchivedRun(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	orig := newRun(ns, "old", task("a", false))
	orig.Annotations = map[string]string{rsv1.AnnotationArchiveAfter: "0s"}
	create(t, orig)
	testenv.ReportTask(t, k8s, ns, "old", "a", succeeded(-1, 0))
	uid := get(t, ns, "old").UID
	until(t, "old archived and gone", func() bool {
		err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "old"}, &rsv1.Run{})
		return apierrors.IsNotFound(err)
	})
	var got *rsv1.Run
	until(t, "the archived run served", func() bool {
		var archived bool
		var err error
		got, archived, err = runops.Get(ctx, cs, ns, "old")
		return err == nil && archived
	})
	if got.UID != uid || got.Status.Result != rsv1.RunResultSuccess {
		t.Errorf("archived run %s %s, want %s Success", got.UID, got.Status.Result, uid)
	}
	run, err := runops.Restart(ctx, cs, ns, "old", runops.RestartOptions{})
	if err != nil {
		t.Fatalf("restarting an archived run: %v", err)
	}
	if rf := run.Spec.RestartFrom; rf == nil || rf.Run != "old" || rf.UID != uid || rf.FailedTasksOnly {
		t.Errorf("restartFrom %+v", run.Spec.RestartFrom)
	}
	if _, ok := run.Annotations[rsv1.AnnotationArchiveAfter]; ok {
		t.Errorf("the restart kept runservice's annotation %s", rsv1.AnnotationArchiveAfter)
	}
}
