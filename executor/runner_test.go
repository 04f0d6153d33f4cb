package executor

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor/toolbox"
)

// stream is a streaming toolbox's log: a run step and a save step, both reported Success, and the
// save step's archive, whose end frame is left out when truncated (the log was cut short).
func stream(truncated bool) string {
	var b strings.Builder
	frame := func(f string, args ...any) { fmt.Fprintf(&b, toolbox.FramePrefix+f+"\n", args...) }
	ok := `{"phase":"Success","startTime":"2026-01-02T03:04:05Z","endTime":"2026-01-02T03:04:06Z"}`
	frame(`{"t":"result","i":0,"r":%s}`, ok)
	frame(`{"t":"archive","i":1,"d":%q}`, base64.StdEncoding.EncodeToString([]byte("tar")))
	if !truncated {
		frame(`{"t":"archive-end","i":1,"n":3}`)
	}
	frame(`{"t":"result","i":1,"r":%s}`, ok)
	return b.String()
}

// TestOutcomeOfAStreamedSave: a save step whose archive did not arrive whole from a streaming driver
// is Failed, and so is the task, though the toolbox reported the step Success.
func TestOutcomeOfAStreamedSave(t *testing.T) {
	for _, tt := range []struct {
		name      string
		truncated bool
		phase     rsv1.TaskPhase
		step      rsv1.StepPhase
		msg       string
	}{
		{"the whole archive arrived", false, rsv1.TaskPhaseSuccess, rsv1.StepPhaseSuccess, ""},
		{"the archive was cut short", true, rsv1.TaskPhaseFailed, rsv1.StepPhaseFailed,
			`step 1 (save-to-workspace) reported Success, but its workspace archive did not arrive whole at the executor`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			lim := toolbox.Limits{}.WithDefaults()
			if err := toolbox.Demux(strings.NewReader(stream(tt.truncated)), dir, 2, lim); err != nil {
				t.Fatal(err)
			}
			et := &rsv1.ExecutorTask{ObjectMeta: metav1.ObjectMeta{Name: "r-build"}, Spec: rsv1.ExecutorTaskSpec{Task: rsv1.Task{
				Steps: []rsv1.Step{
					{Run: &rsv1.RunStep{Command: "make"}},
					{SaveToWorkspace: &rsv1.SaveToWorkspaceStep{Contents: []rsv1.SaveContent{{SourceDir: ".", DestDir: ".", Paths: []string{"bin"}}}}},
				},
			}}}
			r := &runner{e: &Executor{opts: Options{Limits: lim}}, et: et, dir: dir}
			phase, msg, steps, err := r.outcome(&State{}, nil, false, false)
			if err != nil {
				t.Fatal(err)
			}
			if phase != tt.phase || msg != tt.msg || steps[1].Phase != tt.step {
				t.Fatalf("task %s %q, save step %s; want %s %q, %s", phase, msg, steps[1].Phase, tt.phase, tt.msg, tt.step)
			}
		})
	}
}

// TestStepsDirLook: report re-reads the steps' results only when their directory may have changed:
// a result written (by rename, as the toolbox and the mirror write them) is always seen, also
// within the file system's clock granularity of the last look; an old, unchanged directory is not
// read again.
func TestStepsDirLook(t *testing.T) {
	dir := t.TempDir()
	steps := filepath.Join(dir, toolbox.StepsDir)
	var l dirLook
	if !l.changed(dir) {
		t.Fatal("no steps directory: want changed (reading the steps says what is wrong)")
	}
	if err := os.Mkdir(steps, 0o755); err != nil {
		t.Fatal(err)
	}
	if !l.changed(dir) || !l.changed(dir) {
		t.Fatal("a directory changed a moment ago: want changed until a look comes well after its time")
	}
	old := time.Now().Add(-2 * racyLook)
	if err := os.Chtimes(steps, old, old); err != nil {
		t.Fatal(err)
	}
	if !l.changed(dir) {
		t.Fatal("the directory's time moved: want changed")
	}
	if l.changed(dir) || l.changed(dir) {
		t.Fatal("an old directory unchanged since the last look: want unchanged")
	}
	write := func(i int) {
		t.Helper()
		tmp := toolbox.StepResultPath(dir, i) + ".tmp"
		if err := os.WriteFile(tmp, []byte(`{"phase":"Running"}`), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, toolbox.StepResultPath(dir, i)); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	if !l.changed(dir) {
		t.Fatal("a result was written: want changed")
	}
	// Within the clock's granularity of that look: the time may not move, the look must not trust it.
	write(1)
	if !l.changed(dir) {
		t.Fatal("a second result written right after a look: want changed")
	}
	if err := os.Remove(steps + "/0.json"); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(steps); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(steps, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if !l.changed(dir) {
		t.Fatal("the steps directory replaced by a file: want changed")
	}
}

// TestAQuietRunningTaskIsLookedAtLessOften: a Running task whose steps' directory stays as it was is
// looked at every 500ms, then 1s, then 2s at most; a change brings it back to 500ms.
func TestAQuietRunningTaskIsLookedAtLessOften(t *testing.T) {
	dir := t.TempDir()
	steps := filepath.Join(dir, toolbox.StepsDir)
	if err := os.Mkdir(steps, 0o755); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * racyLook)
	if err := os.Chtimes(steps, old, old); err != nil {
		t.Fatal(err)
	}
	r := &runner{dir: dir, et: &rsv1.ExecutorTask{Status: rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseRunning}}}
	r.stepsLook.mtime, r.stepsLook.at = old, time.Now() // the look that recorded Running
	var got []time.Duration
	for range 4 {
		if err := r.report(t.Context()); err != nil {
			t.Fatal(err)
		}
		got = append(got, r.stepsLook.every)
	}
	if want := []time.Duration{time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second}; !slices.Equal(got, want) {
		t.Fatalf("next looks %v, want %v", got, want)
	}
	if err := os.WriteFile(filepath.Join(steps, "0.log"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The directory changed; its steps read the same as recorded (none), so nothing is written.
	r.et.Status.Steps = initialSteps(r.et)
	if err := r.report(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r.stepsLook.every != lookEvery {
		t.Fatalf("after a change the next look is in %v, want %v", r.stepsLook.every, lookEvery)
	}
}

// TestAProgressWriteThatFailsIsTriedAgain: a look that saw a step's result, and whose status write
// then failed (the apiserver out of reach), does not count as recorded: the next look reads the
// steps and writes again, though the steps' directory has not changed since.
func TestAProgressWriteThatFailsIsTriedAgain(t *testing.T) {
	dir := t.TempDir()
	steps := filepath.Join(dir, toolbox.StepsDir)
	if err := os.Mkdir(steps, 0o755); err != nil {
		t.Fatal(err)
	}
	res := `{"phase":"Running","startTime":"2026-01-02T03:04:05Z"}`
	if err := os.WriteFile(toolbox.StepResultPath(dir, 0), []byte(res), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * racyLook)
	if err := os.Chtimes(steps, old, old); err != nil {
		t.Fatal(err)
	}
	// A client of an address nothing listens on: each write fails as a dropped connection does.
	c, err := client.New(&rest.Config{Host: "https://127.0.0.1:1", Timeout: time.Second}, client.Options{Scheme: Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	et := &rsv1.ExecutorTask{
		ObjectMeta: metav1.ObjectMeta{Name: "t", Namespace: "ns"},
		Spec:       rsv1.ExecutorTaskSpec{Task: rsv1.Task{Steps: []rsv1.Step{{Run: &rsv1.RunStep{Command: "true"}}}}},
		Status:     rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseRunning},
	}
	r := &runner{e: &Executor{client: c, reader: c}, dir: dir, et: et}
	for i := range 2 {
		if err := r.report(t.Context()); err == nil {
			t.Fatalf("look %d: no write tried, the step's result taken for recorded (recorded steps: %v)", i+1, r.et.Status.Steps)
		}
	}
}
