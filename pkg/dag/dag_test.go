package dag

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"runservice.dev/runservice/api/v1alpha1"
)

var (
	now     = metav1.NewTime(time.Date(2025, 3, 4, 10, 0, 0, 0, time.UTC))
	later   = metav1.NewTime(now.Add(time.Minute))
	earlier = metav1.NewTime(now.Add(-time.Hour))
	started = metav1.NewTime(now.Add(-30 * time.Minute))
	ended   = metav1.NewTime(now.Add(-10 * time.Minute))
)

const (
	notStarted = v1alpha1.TaskPhaseNotStarted
	running    = v1alpha1.TaskPhaseRunning
	success    = v1alpha1.TaskPhaseSuccess
	failed     = v1alpha1.TaskPhaseFailed
	skipped    = v1alpha1.TaskPhaseSkipped
	cancelled  = v1alpha1.TaskPhaseCancelled
	stoppedT   = v1alpha1.TaskPhaseStopped

	onSuccess = v1alpha1.DependOnSuccess
	onFailure = v1alpha1.DependOnFailure
	onSkipped = v1alpha1.DependOnSkipped
)

// Builders for test objects.

type taskOpt func(*v1alpha1.Task)

func task(name string, opts ...taskOpt) v1alpha1.Task {
	t := v1alpha1.Task{
		Name:       name,
		Containers: []v1alpha1.Container{{Image: "busybox"}},
		Steps:      []v1alpha1.Step{{Run: &v1alpha1.RunStep{Command: "true"}}},
	}
	for _, o := range opts {
		o(&t)
	}
	return t
}

func dependsOn(parent string, conds ...v1alpha1.DependCondition) taskOpt {
	return func(t *v1alpha1.Task) {
		t.Depends = append(t.Depends, v1alpha1.TaskDependency{Task: parent, Conditions: conds})
	}
}

func ignoreFailure(t *v1alpha1.Task) { t.IgnoreFailure = ptr(true) }

func needsApproval(t *v1alpha1.Task) { t.NeedsApproval = ptr(true) }

func restoreWorkspace(t *v1alpha1.Task) {
	t.Steps = append(t.Steps, v1alpha1.Step{RestoreWorkspace: &v1alpha1.RestoreWorkspaceStep{DestDir: "/ws"}})
}

func ptr[T any](v T) *T { return &v }

type specOpt func(*v1alpha1.RunSpec)

func runSpec(tasks []v1alpha1.Task, opts ...specOpt) *v1alpha1.RunSpec {
	s := &v1alpha1.RunSpec{Tasks: tasks}
	for _, o := range opts {
		o(s)
	}
	return s
}

func tasks(ts ...v1alpha1.Task) []v1alpha1.Task { return ts }

func stop(s *v1alpha1.RunSpec) { s.Stop = ptr(true) }

func approved(names ...string) specOpt {
	return func(s *v1alpha1.RunSpec) { s.ApprovedTasks = names }
}

func ts(name string, phase v1alpha1.TaskPhase) v1alpha1.TaskStatus {
	t := v1alpha1.TaskStatus{Name: name, Phase: phase}
	if phase.IsFinal() {
		t.EndTime = ptr(ended)
	}
	return t
}

// keptTS is the status of a task a restart kept from run "orig".
func keptTS(name string) v1alpha1.TaskStatus {
	t := ts(name, success)
	t.StartTime, t.Executor, t.ExecutorTask, t.FromRun, t.FromRunUID = ptr(started), "ex", "orig-"+name, "orig", "uid-orig"
	return t
}

func queuedStatus(tasks ...v1alpha1.TaskStatus) *v1alpha1.RunStatus {
	return &v1alpha1.RunStatus{
		Phase:     v1alpha1.RunPhaseQueued,
		Result:    v1alpha1.RunResultUnknown,
		QueueTime: ptr(earlier),
		Tasks:     tasks,
	}
}

func runningStatus(tasks ...v1alpha1.TaskStatus) *v1alpha1.RunStatus {
	s := queuedStatus(tasks...)
	s.Phase = v1alpha1.RunPhaseRunning
	s.StartTime = ptr(earlier)
	return s
}

type etOpt func(*ExecutorTaskState)

func removed(e *ExecutorTaskState) { e.ExecutorRemoved = true }

func stopRequested(e *ExecutorTaskState) { e.StopRequested = true }

func fetched(e *ExecutorTaskState) { e.Fetched = true }

// missing says the fetcher is done and the archive of step i never arrived.
func missing(step int, name, why string) etOpt {
	return func(e *ExecutorTaskState) {
		e.Fetched = true
		e.MissingArchives = append(e.MissingArchives, MissingArchive{Step: step, StepName: name, Why: why})
	}
}

// et is the ExecutorTask of a task, named "et-<task>" on executor "exec-1".
func et(task string, phase v1alpha1.TaskPhase, opts ...etOpt) ExecutorTaskState {
	e := ExecutorTaskState{Name: "et-" + task, Executor: "exec-1", Status: v1alpha1.ExecutorTaskStatus{Phase: phase}}
	if phase == running || phase.IsFinal() {
		e.Status.StartTime = ptr(started)
		e.Status.Steps = []v1alpha1.StepStatus{{Name: "step-0", Phase: v1alpha1.StepPhaseRunning, StartTime: ptr(started)}}
	}
	if phase.IsFinal() {
		e.Status.EndTime = ptr(ended)
		e.Status.Steps[0].Phase = v1alpha1.StepPhaseSuccess
		if phase == failed {
			e.Status.Steps[0].Phase = v1alpha1.StepPhaseFailed
			e.Status.Message = "step step-0 exited with 1"
		}
	}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func ets(states ...ExecutorTaskState) map[string]ExecutorTaskState {
	m := make(map[string]ExecutorTaskState, len(states))
	for _, s := range states {
		m[strings.TrimPrefix(s.Name, "et-")] = s
	}
	return m
}

// want is what a test expects of an Output. Schedule and Stop are always compared (nil equals empty);
// the other fields only when set.
type want struct {
	phase    v1alpha1.RunPhase
	result   v1alpha1.RunResult
	progress string
	tasks    map[string]v1alpha1.TaskPhase
	schedule []string
	stop     []string
	check    func(t *testing.T, out Output)
}

func (w want) verify(t *testing.T, out Output) {
	t.Helper()
	if w.phase != "" && out.Status.Phase != w.phase {
		t.Errorf("phase = %q, want %q", out.Status.Phase, w.phase)
	}
	if w.result != "" && out.Status.Result != w.result {
		t.Errorf("result = %q, want %q", out.Status.Result, w.result)
	}
	if w.progress != "" && out.Status.Progress != w.progress {
		t.Errorf("progress = %q, want %q", out.Status.Progress, w.progress)
	}
	for name, phase := range w.tasks {
		got := taskStatus(out.Status, name)
		if got == nil {
			t.Errorf("task %q has no status", name)
			continue
		}
		if got.Phase != phase {
			t.Errorf("task %q phase = %q, want %q", name, got.Phase, phase)
		}
	}
	if !sameStrings(out.Schedule, w.schedule) {
		t.Errorf("schedule = %q, want %q", out.Schedule, w.schedule)
	}
	if !sameStrings(out.Stop, w.stop) {
		t.Errorf("stop = %q, want %q", out.Stop, w.stop)
	}
	if w.check != nil {
		w.check(t, out)
	}
}

func taskStatus(s v1alpha1.RunStatus, name string) *v1alpha1.TaskStatus {
	for i := range s.Tasks {
		if s.Tasks[i].Name == name {
			return &s.Tasks[i]
		}
	}
	return nil
}

func sameStrings(a, b []string) bool {
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	return reflect.DeepEqual(a, b)
}

func checkTask(name string, f func(t *testing.T, ts *v1alpha1.TaskStatus)) func(*testing.T, Output) {
	return func(t *testing.T, out Output) {
		t.Helper()
		got := taskStatus(out.Status, name)
		if got == nil {
			t.Fatalf("task %q has no status", name)
		}
		f(t, got)
	}
}

func checks(fs ...func(*testing.T, Output)) func(*testing.T, Output) {
	return func(t *testing.T, out Output) {
		t.Helper()
		for _, f := range fs {
			f(t, out)
		}
	}
}

func timeIs(t *testing.T, what string, got *metav1.Time, want metav1.Time) {
	t.Helper()
	if got == nil || !got.Equal(&want) {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func skippedBecause(name, message string) func(*testing.T, Output) {
	return checkTask(name, func(t *testing.T, ts *v1alpha1.TaskStatus) {
		if ts.Reason != v1alpha1.ReasonParentsNotMatched || ts.Message != message {
			t.Errorf("task %q reason/message = %q/%q, want %q/%q", name, ts.Reason, ts.Message,
				v1alpha1.ReasonParentsNotMatched, message)
		}
		timeIs(t, name+" endTime", ts.EndTime, now)
	})
}

func TestAdvance(t *testing.T) {
	ab := tasks(task("a"), task("b", dependsOn("a")))

	tests := []struct {
		name     string
		spec     *v1alpha1.RunSpec
		status   *v1alpha1.RunStatus
		admitted bool
		ets      map[string]ExecutorTaskState
		kept     []v1alpha1.TaskStatus
		want     want
	}{
		// Initialisation and the Queued phase.
		{
			name: "new run is initialised and stays queued until admitted",
			spec: runSpec(ab),
			want: want{
				phase: v1alpha1.RunPhaseQueued, result: v1alpha1.RunResultUnknown, progress: "0/2",
				tasks: map[string]v1alpha1.TaskPhase{"a": notStarted, "b": notStarted},
				check: func(t *testing.T, out Output) {
					timeIs(t, "queueTime", out.Status.QueueTime, now)
					if out.Status.StartTime != nil {
						t.Errorf("startTime = %v, want nil", out.Status.StartTime)
					}
					if got := []string{out.Status.Tasks[0].Name, out.Status.Tasks[1].Name}; !reflect.DeepEqual(got, []string{"a", "b"}) {
						t.Errorf("task order = %q, want spec order", got)
					}
				},
			},
		},
		{
			name:     "new run that is admitted starts in the same call",
			spec:     runSpec(tasks(task("a"), task("b", dependsOn("a")), task("c"))),
			status:   &v1alpha1.RunStatus{},
			admitted: true,
			want: want{
				phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultUnknown, progress: "0/3",
				schedule: []string{"a", "c"},
				check: func(t *testing.T, out Output) {
					timeIs(t, "queueTime", out.Status.QueueTime, now)
					timeIs(t, "startTime", out.Status.StartTime, now)
				},
			},
		},
		// A restart's kept tasks.
		{
			name:     "a restart's kept task enters the new run final and is not scheduled; its children are, restorers too",
			spec:     runSpec(tasks(task("a"), task("b", dependsOn("a"), restoreWorkspace), task("c"))),
			kept:     []v1alpha1.TaskStatus{keptTS("a")},
			admitted: true,
			want: want{
				phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultUnknown, progress: "1/3",
				tasks:    map[string]v1alpha1.TaskPhase{"a": success, "b": notStarted, "c": notStarted},
				schedule: []string{"b", "c"},
				check: func(t *testing.T, out Output) {
					if got, want := out.Status.Tasks[0], keptTS("a"); !reflect.DeepEqual(got, want) {
						t.Errorf("kept task status = %+v, want it as kept %+v", got, want)
					}
				},
			},
		},
		{
			name:   "kept tasks are seeded into a new run only",
			spec:   runSpec(ab),
			status: queuedStatus(ts("a", notStarted), ts("b", notStarted)),
			kept:   []v1alpha1.TaskStatus{keptTS("a")},
			want:   want{phase: v1alpha1.RunPhaseQueued, tasks: map[string]v1alpha1.TaskPhase{"a": notStarted, "b": notStarted}},
		},
		{
			name: "a kept task the spec does not have, or not final, is not seeded",
			spec: runSpec(tasks(task("a"))),
			kept: []v1alpha1.TaskStatus{keptTS("z"), ts("a", running)},
			want: want{phase: v1alpha1.RunPhaseQueued, progress: "0/1", tasks: map[string]v1alpha1.TaskPhase{"a": notStarted}},
		},
		{
			name:     "stop while queued leaves a kept task as it ended",
			spec:     runSpec(ab, stop),
			kept:     []v1alpha1.TaskStatus{keptTS("a")},
			admitted: true,
			want: want{
				phase: v1alpha1.RunPhaseCancelled, result: v1alpha1.RunResultStopped, progress: "2/2",
				tasks: map[string]v1alpha1.TaskPhase{"a": success, "b": cancelled},
			},
		},
		{
			name:   "queued run not admitted stays queued",
			spec:   runSpec(ab),
			status: queuedStatus(ts("a", notStarted), ts("b", notStarted)),
			want: want{
				phase: v1alpha1.RunPhaseQueued, result: v1alpha1.RunResultUnknown,
				check: func(t *testing.T, out Output) { timeIs(t, "queueTime", out.Status.QueueTime, earlier) },
			},
		},
		{
			name:     "admitted queued run starts and schedules its roots",
			spec:     runSpec(ab),
			status:   queuedStatus(ts("a", notStarted), ts("b", notStarted)),
			admitted: true,
			want: want{
				phase: v1alpha1.RunPhaseRunning, schedule: []string{"a"},
				check: func(t *testing.T, out Output) { timeIs(t, "startTime", out.Status.StartTime, now) },
			},
		},
		{
			name:     "stop while queued cancels the run and its tasks",
			spec:     runSpec(ab, stop),
			status:   queuedStatus(ts("a", notStarted), ts("b", notStarted)),
			admitted: true,
			want: want{
				phase: v1alpha1.RunPhaseCancelled, result: v1alpha1.RunResultStopped, progress: "2/2",
				tasks: map[string]v1alpha1.TaskPhase{"a": cancelled, "b": cancelled},
				check: func(t *testing.T, out Output) {
					timeIs(t, "endTime", out.Status.EndTime, now)
					if out.Status.StartTime != nil {
						t.Errorf("startTime = %v, want nil", out.Status.StartTime)
					}
					for _, ts := range out.Status.Tasks {
						if ts.Reason != v1alpha1.ReasonRunStopped {
							t.Errorf("task %q reason = %q, want %q", ts.Name, ts.Reason, v1alpha1.ReasonRunStopped)
						}
						timeIs(t, ts.Name+" endTime", ts.EndTime, now)
					}
				},
			},
		},
		{
			name: "stop on a new run cancels it in the first call",
			spec: runSpec(ab, stop),
			want: want{phase: v1alpha1.RunPhaseCancelled, result: v1alpha1.RunResultStopped, progress: "2/2"},
		},
		{
			name:     "missing task statuses are added in spec order",
			spec:     runSpec(tasks(task("a"), task("b"), task("c", dependsOn("a")))),
			status:   runningStatus(ts("c", notStarted), ts("a", success)),
			admitted: true,
			want: want{
				phase: v1alpha1.RunPhaseRunning, progress: "1/3", schedule: []string{"b", "c"},
				check: func(t *testing.T, out Output) {
					var names []string
					for _, ts := range out.Status.Tasks {
						names = append(names, ts.Name)
					}
					if !reflect.DeepEqual(names, []string{"a", "b", "c"}) {
						t.Errorf("tasks = %q, want [a b c]", names)
					}
				},
			},
		},

		// Dependency conditions.
		{
			name:   "OnSuccess matches a successful parent",
			spec:   runSpec(tasks(task("build"), task("test", dependsOn("build")))),
			status: runningStatus(ts("build", success), ts("test", notStarted)),
			want:   want{phase: v1alpha1.RunPhaseRunning, schedule: []string{"test"}},
		},
		{
			name:   "OnSuccess does not match a failed parent",
			spec:   runSpec(tasks(task("build"), task("test", dependsOn("build", onSuccess)))),
			status: runningStatus(ts("build", failed), ts("test", notStarted)),
			want: want{
				phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultFailed, progress: "2/2",
				tasks: map[string]v1alpha1.TaskPhase{"test": skipped},
				check: skippedBecause("test", `parent "build" is Failed, wanted OnSuccess`),
			},
		},
		{
			name:   "OnFailure matches a failed parent",
			spec:   runSpec(tasks(task("build"), task("notify", dependsOn("build", onFailure)))),
			status: runningStatus(ts("build", failed), ts("notify", notStarted)),
			want:   want{phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultFailed, schedule: []string{"notify"}},
		},
		{
			name:   "OnFailure does not match a successful parent",
			spec:   runSpec(tasks(task("build"), task("notify", dependsOn("build", onFailure)))),
			status: runningStatus(ts("build", success), ts("notify", notStarted)),
			want: want{
				phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultSuccess,
				tasks: map[string]v1alpha1.TaskPhase{"notify": skipped},
				check: skippedBecause("notify", `parent "build" is Success, wanted OnFailure`),
			},
		},
		{
			name:   "OnSkipped matches a skipped parent",
			spec:   runSpec(tasks(task("deploy"), task("report", dependsOn("deploy", onSkipped)))),
			status: runningStatus(ts("deploy", skipped), ts("report", notStarted)),
			want:   want{phase: v1alpha1.RunPhaseRunning, schedule: []string{"report"}},
		},
		{
			name:   "OnSkipped does not match a successful parent",
			spec:   runSpec(tasks(task("deploy"), task("report", dependsOn("deploy", onSkipped)))),
			status: runningStatus(ts("deploy", success), ts("report", notStarted)),
			want: want{
				tasks: map[string]v1alpha1.TaskPhase{"report": skipped},
				check: skippedBecause("report", `parent "deploy" is Success, wanted OnSkipped`),
			},
		},
		{
			name:   "any one of several conditions is enough",
			spec:   runSpec(tasks(task("build"), task("cleanup", dependsOn("build", onSuccess, onFailure)))),
			status: runningStatus(ts("build", failed), ts("cleanup", notStarted)),
			want:   want{schedule: []string{"cleanup"}},
		},
		{
			name:   "several conditions none matching",
			spec:   runSpec(tasks(task("build"), task("cleanup", dependsOn("build", onSuccess, onFailure)))),
			status: runningStatus(ts("build", skipped), ts("cleanup", notStarted)),
			want: want{
				tasks: map[string]v1alpha1.TaskPhase{"cleanup": skipped},
				check: skippedBecause("cleanup", `parent "build" is Skipped, wanted OnSuccess or OnFailure`),
			},
		},
		{
			name: "every dependency must match: one unmatched parent of several skips the child",
			spec: runSpec(tasks(task("a"), task("b"), task("c"),
				task("d", dependsOn("a"), dependsOn("b", onFailure), dependsOn("c")))),
			status: runningStatus(ts("a", success), ts("b", success), ts("c", failed), ts("d", notStarted)),
			want: want{
				tasks: map[string]v1alpha1.TaskPhase{"d": skipped},
				check: skippedBecause("d", `parent "b" is Success, wanted OnFailure`),
			},
		},
		{
			name: "cancelled and stopped parents match nothing",
			spec: runSpec(tasks(task("a"), task("b"),
				task("c", dependsOn("a", onSuccess, onFailure, onSkipped)),
				task("d", dependsOn("b", onSuccess, onFailure, onSkipped)))),
			status: runningStatus(ts("a", cancelled), ts("b", stoppedT), ts("c", notStarted), ts("d", notStarted)),
			want: want{
				tasks: map[string]v1alpha1.TaskPhase{"c": skipped, "d": skipped},
				check: skippedBecause("d", `parent "b" is Stopped, wanted OnSuccess or OnFailure or OnSkipped`),
			},
		},
		{
			name:   "a child waits while a parent is not final",
			spec:   runSpec(tasks(task("a"), task("b"), task("c", dependsOn("a"), dependsOn("b")))),
			status: runningStatus(ts("a", success), ts("b", running), ts("c", notStarted)),
			ets:    ets(et("a", success), et("b", running)),
			want:   want{phase: v1alpha1.RunPhaseRunning, tasks: map[string]v1alpha1.TaskPhase{"c": notStarted}},
		},
		{
			name: "a skip cascades down a chain in one call, whatever the spec order",
			spec: runSpec(tasks(task("d", dependsOn("c")), task("c", dependsOn("b")), task("b", dependsOn("a")),
				task("a"), task("e", dependsOn("c", onSkipped)))),
			status: runningStatus(ts("a", notStarted)),
			ets:    ets(et("a", failed)),
			want: want{
				phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultFailed, progress: "4/5",
				tasks:    map[string]v1alpha1.TaskPhase{"a": failed, "b": skipped, "c": skipped, "d": skipped},
				schedule: []string{"e"},
				check: checks(
					skippedBecause("b", `parent "a" is Failed, wanted OnSuccess`),
					skippedBecause("c", `parent "b" is Skipped, wanted OnSuccess`),
					skippedBecause("d", `parent "c" is Skipped, wanted OnSuccess`),
				),
			},
		},

		// Results.
		{
			name:   "ignoreFailure keeps the run successful but still skips OnSuccess children",
			spec:   runSpec(tasks(task("lint", ignoreFailure), task("publish", dependsOn("lint")), task("build"))),
			status: runningStatus(ts("lint", running), ts("publish", notStarted), ts("build", success)),
			ets:    ets(et("lint", failed), et("build", success)),
			want: want{
				phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultSuccess, progress: "3/3",
				tasks: map[string]v1alpha1.TaskPhase{"lint": failed, "publish": skipped, "build": success},
				check: func(t *testing.T, out Output) { timeIs(t, "endTime", out.Status.EndTime, now) },
			},
		},
		{
			name: "a failure sets the result at once and the run keeps scheduling ready tasks",
			spec: runSpec(tasks(task("a"), task("b"), task("c"), task("d", dependsOn("a", onFailure)),
				task("e", dependsOn("b")))),
			status: runningStatus(ts("a", running), ts("b", running), ts("c", notStarted), ts("d", notStarted),
				ts("e", notStarted)),
			ets: ets(et("a", failed), et("b", running)),
			want: want{
				phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultFailed, progress: "1/5",
				tasks:    map[string]v1alpha1.TaskPhase{"a": failed, "b": running, "e": notStarted},
				schedule: []string{"c", "d"},
			},
		},
		{
			name: "a known result is kept",
			spec: runSpec(tasks(task("a"), task("b")), stop),
			status: func() *v1alpha1.RunStatus {
				s := runningStatus(ts("a", failed))
				s.Result = v1alpha1.RunResultFailed
				return s
			}(),
			ets: ets(et("a", failed)),
			want: want{
				phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultFailed,
				tasks: map[string]v1alpha1.TaskPhase{"b": cancelled},
			},
		},

		// Approval.
		{
			name:   "a task needing approval waits",
			spec:   runSpec(tasks(task("build"), task("deploy", dependsOn("build"), needsApproval))),
			status: runningStatus(ts("build", success), ts("deploy", notStarted)),
			ets:    ets(et("build", success)),
			want: want{
				phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultUnknown,
				tasks: map[string]v1alpha1.TaskPhase{"deploy": notStarted},
				check: checkTask("deploy", func(t *testing.T, ts *v1alpha1.TaskStatus) {
					if !ts.WaitingApproval {
						t.Error("deploy is not waiting for approval")
					}
				}),
			},
		},
		{
			name: "an approved task is scheduled",
			spec: runSpec(tasks(task("build"), task("deploy", dependsOn("build"), needsApproval)), approved("deploy")),
			status: runningStatus(ts("build", success),
				v1alpha1.TaskStatus{Name: "deploy", Phase: notStarted, WaitingApproval: true}),
			ets: ets(et("build", success)),
			want: want{
				schedule: []string{"deploy"},
				check: checkTask("deploy", func(t *testing.T, ts *v1alpha1.TaskStatus) {
					if ts.WaitingApproval {
						t.Error("deploy still waits for approval")
					}
				}),
			},
		},
		{
			name:     "a root task needing approval waits from the start",
			spec:     runSpec(tasks(task("deploy", needsApproval), task("build"))),
			status:   queuedStatus(),
			admitted: true,
			want: want{
				schedule: []string{"build"},
				check: checkTask("deploy", func(t *testing.T, ts *v1alpha1.TaskStatus) {
					if !ts.WaitingApproval {
						t.Error("deploy is not waiting for approval")
					}
				}),
			},
		},

		// Stop while running.
		{
			name: "stop asks active executor tasks to stop and cancels the tasks not started",
			spec: runSpec(tasks(task("a"), task("b", dependsOn("a")), task("c"), task("d", needsApproval), task("e")), stop),
			status: runningStatus(ts("a", running), ts("b", notStarted), ts("c", notStarted),
				v1alpha1.TaskStatus{Name: "d", Phase: notStarted, WaitingApproval: true}, ts("e", success)),
			ets: ets(et("a", running), et("c", ""), et("e", success)),
			want: want{
				phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultStopped, progress: "3/5",
				tasks: map[string]v1alpha1.TaskPhase{"a": running, "b": cancelled, "c": notStarted, "d": cancelled, "e": success},
				stop:  []string{"et-a", "et-c"},
				check: checks(
					checkTask("b", func(t *testing.T, ts *v1alpha1.TaskStatus) {
						if ts.Reason != v1alpha1.ReasonRunStopped {
							t.Errorf("b reason = %q, want %q", ts.Reason, v1alpha1.ReasonRunStopped)
						}
						timeIs(t, "b endTime", ts.EndTime, now)
					}),
					checkTask("d", func(t *testing.T, ts *v1alpha1.TaskStatus) {
						if ts.WaitingApproval {
							t.Error("cancelled d still waits for approval")
						}
					}),
					func(t *testing.T, out Output) {
						if out.Status.EndTime != nil {
							t.Errorf("endTime = %v while tasks still run", out.Status.EndTime)
						}
					},
				),
			},
		},
		{
			name:   "stop is not asked twice",
			spec:   runSpec(tasks(task("a"), task("b")), stop),
			status: runningStatus(ts("a", running), ts("b", running)),
			ets:    ets(et("a", running, stopRequested), et("b", running)),
			want:   want{phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultStopped, stop: []string{"et-b"}},
		},
		{
			name:   "stop is not asked of a task whose executor is removed",
			spec:   runSpec(tasks(task("a")), stop),
			status: runningStatus(ts("a", running)),
			ets:    ets(et("a", running, removed)),
			want: want{
				phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultStopped,
				tasks: map[string]v1alpha1.TaskPhase{"a": failed},
			},
		},
		{
			name: "a stopped run finishes once its executor tasks are final",
			spec: runSpec(tasks(task("a"), task("b", dependsOn("a"))), stop),
			status: func() *v1alpha1.RunStatus {
				s := runningStatus(ts("a", running), ts("b", cancelled))
				s.Result = v1alpha1.RunResultStopped
				return s
			}(),
			ets: ets(et("a", stoppedT, stopRequested)),
			want: want{
				phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultStopped, progress: "2/2",
				tasks: map[string]v1alpha1.TaskPhase{"a": stoppedT, "b": cancelled},
				check: func(t *testing.T, out Output) { timeIs(t, "endTime", out.Status.EndTime, now) },
			},
		},
		{
			name: "all tasks final but an executor task still active keeps the run running",
			spec: runSpec(tasks(task("a")), stop),
			// The task was cancelled before its ExecutorTask showed up in the cache.
			status: func() *v1alpha1.RunStatus {
				s := runningStatus(v1alpha1.TaskStatus{Name: "a", Phase: cancelled, Reason: v1alpha1.ReasonRunStopped, EndTime: ptr(ended)})
				s.Result = v1alpha1.RunResultStopped
				return s
			}(),
			ets: ets(et("a", running)),
			want: want{
				phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultStopped, progress: "1/1",
				tasks: map[string]v1alpha1.TaskPhase{"a": cancelled},
				stop:  []string{"et-a"},
			},
		},

		// Folding ExecutorTask statuses.
		{
			name:   "a final executor task is copied into the task status",
			spec:   runSpec(tasks(task("a"), task("b"))),
			status: runningStatus(v1alpha1.TaskStatus{Name: "a", Phase: running, Reason: "Stale", StartTime: ptr(started)}, ts("b", running)),
			ets:    ets(et("a", failed), et("b", running)),
			want: want{
				phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultFailed,
				check: checkTask("a", func(t *testing.T, ts *v1alpha1.TaskStatus) {
					e := et("a", failed)
					if ts.Phase != failed || ts.Reason != "" || ts.Message != e.Status.Message ||
						ts.ExecutorTask != "et-a" || ts.Executor != "exec-1" ||
						!reflect.DeepEqual(ts.Steps, e.Status.Steps) {
						t.Errorf("task a = %+v, want the executor task status %+v", ts, e.Status)
					}
					timeIs(t, "a startTime", ts.StartTime, started)
					timeIs(t, "a endTime", ts.EndTime, ended)
				}),
			},
		},
		{
			name:   "a running executor task makes the task running",
			spec:   runSpec(tasks(task("a"))),
			status: runningStatus(ts("a", notStarted)),
			ets:    ets(et("a", running)),
			want: want{
				phase: v1alpha1.RunPhaseRunning, progress: "0/1",
				tasks: map[string]v1alpha1.TaskPhase{"a": running},
				check: checkTask("a", func(t *testing.T, ts *v1alpha1.TaskStatus) {
					timeIs(t, "a startTime", ts.StartTime, started)
					if len(ts.Steps) != 1 || ts.EndTime != nil {
						t.Errorf("task a = %+v, want one step and no end time", ts)
					}
				}),
			},
		},
		{
			name:   "a task whose executor task has not started is recorded and not scheduled again",
			spec:   runSpec(tasks(task("a"), task("b"))),
			status: runningStatus(ts("a", notStarted), ts("b", notStarted)),
			ets:    ets(et("a", "")),
			want: want{
				tasks:    map[string]v1alpha1.TaskPhase{"a": notStarted},
				schedule: []string{"b"},
				check: checkTask("a", func(t *testing.T, ts *v1alpha1.TaskStatus) {
					if ts.ExecutorTask != "et-a" || ts.Executor != "exec-1" {
						t.Errorf("task a executor = %q/%q, want et-a/exec-1", ts.ExecutorTask, ts.Executor)
					}
				}),
			},
		},
		{
			// b keeps the run going, so the second call checks that the end time does not move.
			name:   "a final executor task without an end time gets one, once",
			spec:   runSpec(tasks(task("a"), task("b"))),
			status: runningStatus(ts("a", running), ts("b", running)),
			ets: ets(et("b", running), func() ExecutorTaskState {
				e := et("a", success)
				e.Status.EndTime = nil
				return e
			}()),
			want: want{
				phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultUnknown,
				check: checkTask("a", func(t *testing.T, ts *v1alpha1.TaskStatus) { timeIs(t, "a endTime", ts.EndTime, now) }),
			},
		},
		{
			name:   "a removed executor fails its task and the run",
			spec:   runSpec(tasks(task("a"), task("b", dependsOn("a")))),
			status: runningStatus(ts("a", running), ts("b", notStarted)),
			ets:    ets(et("a", running, removed)),
			want: want{
				phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultFailed, progress: "2/2",
				tasks: map[string]v1alpha1.TaskPhase{"a": failed, "b": skipped},
				check: checkTask("a", func(t *testing.T, ts *v1alpha1.TaskStatus) {
					if ts.Reason != v1alpha1.ReasonExecutorRemoved || ts.Message != "executor exec-1 was removed" {
						t.Errorf("a reason/message = %q/%q", ts.Reason, ts.Message)
					}
					timeIs(t, "a endTime", ts.EndTime, now)
				}),
			},
		},
		{
			// Executors write nothing of a task before its containers exist (a short task's first
			// status is its final one): NotStarted says nothing of whether it ran.
			name:   "a removed executor fails a task it never reported on, and it is not scheduled again",
			spec:   runSpec(tasks(task("a"), task("b", dependsOn("a")))),
			status: runningStatus(v1alpha1.TaskStatus{Name: "a", Phase: notStarted, ExecutorTask: "et-a"}, ts("b", notStarted)),
			ets:    ets(et("a", notStarted, removed)),
			want: want{
				phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultFailed, progress: "2/2",
				tasks: map[string]v1alpha1.TaskPhase{"a": failed, "b": skipped},
				check: checkTask("a", func(t *testing.T, ts *v1alpha1.TaskStatus) {
					if ts.Reason != v1alpha1.ReasonExecutorRemoved {
						t.Errorf("a reason = %q, want %s", ts.Reason, v1alpha1.ReasonExecutorRemoved)
					}
				}),
			},
		},
		{
			name:   "a final report of a removed executor is still taken",
			spec:   runSpec(tasks(task("a"))),
			status: runningStatus(ts("a", running)),
			ets:    ets(et("a", success, removed)),
			want:   want{phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultSuccess},
		},
		{
			name: "manager decisions are not overridden by late executor reports",
			spec: runSpec(tasks(task("a"), task("b"), task("c"))),
			status: func() *v1alpha1.RunStatus {
				s := runningStatus(
					v1alpha1.TaskStatus{Name: "a", Phase: failed, Reason: v1alpha1.ReasonExecutorRemoved, EndTime: ptr(ended)},
					v1alpha1.TaskStatus{Name: "b", Phase: skipped, Reason: v1alpha1.ReasonParentsNotMatched, EndTime: ptr(ended)},
					v1alpha1.TaskStatus{Name: "c", Phase: cancelled, Reason: v1alpha1.ReasonRunStopped, EndTime: ptr(ended)},
				)
				s.Result = v1alpha1.RunResultFailed
				return s
			}(),
			ets: ets(et("a", success), et("b", success), et("c", success)),
			want: want{
				phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultFailed,
				tasks: map[string]v1alpha1.TaskPhase{"a": failed, "b": skipped, "c": cancelled},
				check: checkTask("a", func(t *testing.T, ts *v1alpha1.TaskStatus) {
					timeIs(t, "a endTime", ts.EndTime, ended)
					if ts.ExecutorTask != "et-a" {
						t.Errorf("a executorTask = %q, want et-a", ts.ExecutorTask)
					}
				}),
			},
		},

		// Workspaces: a task that restores one waits until its ancestors' archives are stored, and
		// fails, naming the ancestor and the step, when one never will be.
		{
			name:   "a restoring child waits until its parent is fetched",
			spec:   runSpec(tasks(task("a"), task("b", dependsOn("a"), restoreWorkspace))),
			status: runningStatus(ts("a", success), ts("b", notStarted)),
			ets:    ets(et("a", success)),
			want:   want{phase: v1alpha1.RunPhaseRunning, tasks: map[string]v1alpha1.TaskPhase{"b": notStarted}},
		},
		{
			name:   "a child that restores nothing does not wait for the fetch",
			spec:   runSpec(ab),
			status: runningStatus(ts("a", success), ts("b", notStarted)),
			ets:    ets(et("a", success)),
			want:   want{phase: v1alpha1.RunPhaseRunning, schedule: []string{"b"}},
		},
		{
			name:   "a restoring child is scheduled once every ancestor is fetched",
			spec:   runSpec(tasks(task("a"), task("s", dependsOn("a", onFailure)), task("b", dependsOn("a"), dependsOn("s", onSkipped), restoreWorkspace))),
			status: runningStatus(ts("a", success), ts("s", skipped), ts("b", notStarted)),
			ets:    ets(et("a", success, fetched)),
			want:   want{phase: v1alpha1.RunPhaseRunning, schedule: []string{"b"}},
		},
		{
			name:   "a grandparent's missing archive fails the restoring task without scheduling it",
			spec:   runSpec(tasks(task("a"), task("b", dependsOn("a")), task("c", dependsOn("b"), restoreWorkspace), task("d", dependsOn("c", onFailure)))),
			status: runningStatus(ts("a", success), ts("b", success), ts("c", notStarted), ts("d", notStarted)),
			ets:    ets(et("a", success, missing(1, "save-to-workspace", "its executor was removed before the archive was fetched")), et("b", success, fetched)),
			want: want{
				phase: v1alpha1.RunPhaseRunning, result: v1alpha1.RunResultFailed, schedule: []string{"d"},
				tasks: map[string]v1alpha1.TaskPhase{"c": failed},
				check: func(t *testing.T, out Output) {
					c := taskStatus(out.Status, "c")
					want := `workspace of task "a" step 1 (save-to-workspace) is missing: its executor was removed before the archive was fetched`
					if c.Reason != v1alpha1.ReasonWorkspaceMissing || c.Message != want {
						t.Errorf("c: reason %q message %q, want %q %q", c.Reason, c.Message, v1alpha1.ReasonWorkspaceMissing, want)
					}
					timeIs(t, "c endTime", c.EndTime, now)
				},
			},
		},
		{
			name:   "a missing archive fails a restoring task that waits for approval",
			spec:   runSpec(tasks(task("a"), task("b", dependsOn("a"), restoreWorkspace, needsApproval))),
			status: runningStatus(ts("a", success), ts("b", notStarted)),
			ets:    ets(et("a", success, missing(0, "step-0", "its executor did not have the archive when the manager fetched it"))),
			want: want{
				phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultFailed,
				tasks: map[string]v1alpha1.TaskPhase{"b": failed},
				check: func(t *testing.T, out Output) {
					if b := taskStatus(out.Status, "b"); b.WaitingApproval {
						t.Errorf("b is still waiting for approval")
					}
				},
			},
		},

		// Final runs.
		{
			name: "a finished run is left as it is",
			spec: runSpec(tasks(task("a"), task("b")), stop),
			status: &v1alpha1.RunStatus{
				Phase: v1alpha1.RunPhaseFinished, Result: v1alpha1.RunResultSuccess, Progress: "stale",
				Tasks: []v1alpha1.TaskStatus{ts("a", success), ts("b", notStarted)},
			},
			admitted: true,
			ets:      ets(et("a", running)),
			want: want{
				phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultSuccess, progress: "1/2",
				tasks: map[string]v1alpha1.TaskPhase{"a": success, "b": notStarted},
			},
		},
		{
			name:     "a cancelled run is left as it is",
			spec:     runSpec(tasks(task("a"))),
			status:   &v1alpha1.RunStatus{Phase: v1alpha1.RunPhaseCancelled, Result: v1alpha1.RunResultStopped},
			admitted: true,
			want:     want{phase: v1alpha1.RunPhaseCancelled, result: v1alpha1.RunResultStopped, progress: "0/1"},
		},
		{
			name:     "a run with a setup error is left as it is",
			spec:     runSpec(tasks(task("a", dependsOn("missing")))),
			status:   &v1alpha1.RunStatus{Phase: v1alpha1.RunPhaseSetupError},
			admitted: true,
			want:     want{phase: v1alpha1.RunPhaseSetupError, progress: "0/1"},
		},

		// Inputs the controller should never pass, which must not panic.
		{
			name:     "unknown, self and cyclic dependencies never become ready",
			spec:     runSpec(tasks(task("a", dependsOn("missing")), task("b", dependsOn("b")), task("c", dependsOn("d")), task("d", dependsOn("c")), task("e"))),
			admitted: true,
			want:     want{phase: v1alpha1.RunPhaseRunning, schedule: []string{"e"}, progress: "0/5"},
		},
		{
			name:   "duplicate task names and stray statuses and executor tasks",
			spec:   runSpec(tasks(task("a"), task("a", dependsOn("x")))),
			status: runningStatus(ts("zz", running), ts("a", notStarted), ts("a", success)),
			ets:    ets(et("zz", running)),
			want: want{
				phase: v1alpha1.RunPhaseRunning, progress: "0/1", schedule: []string{"a"},
				check: func(t *testing.T, out Output) {
					if len(out.Status.Tasks) != 1 {
						t.Errorf("tasks = %+v, want only a", out.Status.Tasks)
					}
				},
			},
		},
		{
			name:     "nil spec",
			admitted: true,
			want:     want{phase: v1alpha1.RunPhaseFinished, result: v1alpha1.RunResultSuccess, progress: "0/0"},
		},
		{
			name:   "unknown run phase is left alone",
			spec:   runSpec(tasks(task("a"))),
			status: &v1alpha1.RunStatus{Phase: "Paused"},
			want:   want{phase: "Paused", progress: "0/1"},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var statusBefore *v1alpha1.RunStatus
			if tt.status != nil {
				statusBefore = tt.status.DeepCopy()
			}
			var specBefore *v1alpha1.RunSpec
			if tt.spec != nil {
				specBefore = tt.spec.DeepCopy()
			}
			etsBefore := copyETs(tt.ets)

			in := Input{Spec: tt.spec, Status: tt.status, Admitted: tt.admitted, ExecutorTasks: tt.ets, Now: now, Kept: tt.kept}
			out := Advance(in)
			tt.want.verify(t, out)

			if !reflect.DeepEqual(tt.status, statusBefore) {
				t.Errorf("input status was modified:\n got %+v\nwant %+v", tt.status, statusBefore)
			}
			if !reflect.DeepEqual(tt.spec, specBefore) {
				t.Errorf("input spec was modified")
			}
			if !reflect.DeepEqual(tt.ets, etsBefore) {
				t.Errorf("input executor tasks were modified")
			}

			// Level-based: fed its own output later, with the same executor tasks, nothing moves.
			in.Status, in.Now = &out.Status, later
			again := Advance(in)
			if !reflect.DeepEqual(again.Status, out.Status) {
				t.Errorf("second call changed the status:\n got %+v\nwant %+v", again.Status, out.Status)
			}
			if !sameStrings(again.Schedule, out.Schedule) || !sameStrings(again.Stop, out.Stop) {
				t.Errorf("second call schedule/stop = %q/%q, want %q/%q", again.Schedule, again.Stop, out.Schedule, out.Stop)
			}
		})
	}
}

func copyETs(m map[string]ExecutorTaskState) map[string]ExecutorTaskState {
	if m == nil {
		return nil
	}
	out := make(map[string]ExecutorTaskState, len(m))
	for k, v := range m {
		v.Status = *v.Status.DeepCopy()
		out[k] = v
	}
	return out
}

func TestAdvanceOutputDoesNotAlias(t *testing.T) {
	spec := runSpec(tasks(task("a")))
	status := runningStatus(ts("a", running))
	in := ets(et("a", running))
	out := Advance(Input{Spec: spec, Status: status, ExecutorTasks: in, Now: now})

	out.Status.Tasks[0].Steps[0].Name = "changed"
	out.Status.Tasks[0].StartTime.Time = later.Time
	out.Status.StartTime.Time = later.Time
	if in["a"].Status.Steps[0].Name != "step-0" || !in["a"].Status.StartTime.Equal(&started) {
		t.Errorf("output shares memory with the executor task status: %+v", in["a"].Status)
	}
	if !status.StartTime.Equal(&earlier) {
		t.Errorf("output shares memory with the input status: %v", status.StartTime)
	}
}

// simStep is one reconcile of a simulated run: the executor task phases to report and the spec edit to
// make first, whether the run is held (not admitted), then what Advance must answer.
type simStep struct {
	report   map[string]v1alpha1.TaskPhase
	edit     specOpt
	hold     bool
	schedule []string
	stop     []string
	phase    v1alpha1.RunPhase
	result   v1alpha1.RunResult
	progress string
}

func TestAdvanceScenarios(t *testing.T) {
	const fan = 50
	mids := make([]string, fan)
	fanTasks := tasks(task("sink"))
	for i := range mids {
		mids[i] = fmt.Sprintf("mid-%02d", i)
		fanTasks = append(fanTasks, task(mids[i], dependsOn("root")))
		fanTasks[0].Depends = append(fanTasks[0].Depends, v1alpha1.TaskDependency{Task: mids[i]})
	}
	fanTasks = append(fanTasks, task("root"))
	phases := func(names []string, phase v1alpha1.TaskPhase) map[string]v1alpha1.TaskPhase {
		m := make(map[string]v1alpha1.TaskPhase, len(names))
		for _, n := range names {
			m[n] = phase
		}
		return m
	}

	const (
		queued   = v1alpha1.RunPhaseQueued
		runningR = v1alpha1.RunPhaseRunning
		finished = v1alpha1.RunPhaseFinished
		unknown  = v1alpha1.RunResultUnknown
	)

	tests := []struct {
		name  string
		spec  *v1alpha1.RunSpec
		steps []simStep
	}{
		{
			name: "diamond a -> b, c -> d",
			spec: runSpec(tasks(task("a"), task("b", dependsOn("a")), task("c", dependsOn("a")),
				task("d", dependsOn("b"), dependsOn("c")))),
			steps: []simStep{
				{schedule: []string{"a"}, phase: runningR, result: unknown, progress: "0/4"},
				{report: map[string]v1alpha1.TaskPhase{"a": ""}, phase: runningR, progress: "0/4"},
				{report: map[string]v1alpha1.TaskPhase{"a": running}, phase: runningR, progress: "0/4"},
				{report: map[string]v1alpha1.TaskPhase{"a": success}, schedule: []string{"b", "c"}, phase: runningR, progress: "1/4"},
				{report: map[string]v1alpha1.TaskPhase{"b": success, "c": running}, phase: runningR, progress: "2/4"},
				{report: map[string]v1alpha1.TaskPhase{"c": success}, schedule: []string{"d"}, phase: runningR, progress: "3/4"},
				{report: map[string]v1alpha1.TaskPhase{"d": success}, phase: finished, result: v1alpha1.RunResultSuccess, progress: "4/4"},
			},
		},
		{
			name: "diamond with a failing branch",
			spec: runSpec(tasks(task("a"), task("b", dependsOn("a")), task("c", dependsOn("a")),
				task("d", dependsOn("b"), dependsOn("c")))),
			steps: []simStep{
				{schedule: []string{"a"}, phase: runningR, result: unknown},
				{report: map[string]v1alpha1.TaskPhase{"a": success}, schedule: []string{"b", "c"}, phase: runningR},
				{report: map[string]v1alpha1.TaskPhase{"b": failed, "c": running}, phase: runningR, result: v1alpha1.RunResultFailed, progress: "2/4"},
				{report: map[string]v1alpha1.TaskPhase{"c": success}, phase: finished, result: v1alpha1.RunResultFailed, progress: "4/4"},
			},
		},
		{
			name: "fan-out 1 -> 50 -> 1",
			spec: runSpec(fanTasks),
			steps: []simStep{
				{schedule: []string{"root"}, phase: runningR, progress: "0/52"},
				{report: map[string]v1alpha1.TaskPhase{"root": success}, schedule: mids, phase: runningR, progress: "1/52"},
				{report: phases(mids, running), phase: runningR, progress: "1/52"},
				{report: phases(mids[:fan-1], success), phase: runningR, progress: "50/52"},
				{report: map[string]v1alpha1.TaskPhase{mids[fan-1]: success}, schedule: []string{"sink"}, phase: runningR, progress: "51/52"},
				{report: map[string]v1alpha1.TaskPhase{"sink": success}, phase: finished, result: v1alpha1.RunResultSuccess, progress: "52/52"},
			},
		},
		{
			name: "approval, then stop while running",
			spec: runSpec(tasks(task("a"), task("b", dependsOn("a"), needsApproval), task("c", dependsOn("a")))),
			steps: []simStep{
				{schedule: []string{"a"}, phase: runningR},
				{report: map[string]v1alpha1.TaskPhase{"a": success}, schedule: []string{"c"}, phase: runningR, result: unknown, progress: "1/3"},
				{report: map[string]v1alpha1.TaskPhase{"c": running}, phase: runningR, result: unknown, progress: "1/3"},
				{edit: approved("b"), schedule: []string{"b"}, phase: runningR, result: unknown, progress: "1/3"},
				{report: map[string]v1alpha1.TaskPhase{"b": running}, edit: stop, stop: []string{"et-b", "et-c"}, phase: runningR, result: v1alpha1.RunResultStopped},
				{report: map[string]v1alpha1.TaskPhase{"b": stoppedT}, phase: runningR, result: v1alpha1.RunResultStopped, progress: "2/3"},
				{report: map[string]v1alpha1.TaskPhase{"c": stoppedT}, phase: finished, result: v1alpha1.RunResultStopped, progress: "3/3"},
			},
		},
		{
			name: "queued until admitted",
			spec: runSpec(tasks(task("a"))),
			steps: []simStep{
				{hold: true, phase: queued, result: unknown, progress: "0/1"},
				{hold: true, phase: queued, result: unknown, progress: "0/1"},
				{schedule: []string{"a"}, phase: runningR, result: unknown, progress: "0/1"},
			},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var status *v1alpha1.RunStatus
			spec := tt.spec.DeepCopy()
			executorTasks := map[string]ExecutorTaskState{}
			for i, step := range tt.steps {
				for name, phase := range step.report {
					executorTasks[name] = et(name, phase)
				}
				if step.edit != nil {
					step.edit(spec)
				}
				out := Advance(Input{Spec: spec, Status: status, Admitted: !step.hold, ExecutorTasks: executorTasks, Now: now})
				if !sameStrings(out.Schedule, step.schedule) {
					t.Errorf("step %d: schedule = %q, want %q", i, out.Schedule, step.schedule)
				}
				if !sameStrings(out.Stop, step.stop) {
					t.Errorf("step %d: stop = %q, want %q", i, out.Stop, step.stop)
				}
				// The controller sets spec.stop on the ExecutorTasks it was told to stop.
				for _, name := range out.Stop {
					e := executorTasks[strings.TrimPrefix(name, "et-")]
					e.StopRequested = true
					executorTasks[strings.TrimPrefix(name, "et-")] = e
				}
				if out.Status.Phase != step.phase {
					t.Errorf("step %d: phase = %q, want %q", i, out.Status.Phase, step.phase)
				}
				if step.result != "" && out.Status.Result != step.result {
					t.Errorf("step %d: result = %q, want %q", i, out.Status.Result, step.result)
				}
				if step.progress != "" && out.Status.Progress != step.progress {
					t.Errorf("step %d: progress = %q, want %q", i, out.Status.Progress, step.progress)
				}
				status = &out.Status
			}
		})
	}
}
