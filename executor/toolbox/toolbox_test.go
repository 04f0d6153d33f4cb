package toolbox

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"runservice.dev/runservice/api/v1alpha1"
)

// newTaskDir writes tf into a fresh shared directory, started unless told otherwise.
func newTaskDir(t *testing.T, tf TaskFile, start bool) string {
	t.Helper()
	dir := t.TempDir()
	if err := WriteTaskFile(dir, &tf); err != nil {
		t.Fatal(err)
	}
	if start {
		if err := Start(dir); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func runToolbox(t *testing.T, dir string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	return Run(ctx, dir)
}

// runAsync runs the toolbox in the background; the channel yields its exit code.
func runAsync(ctx context.Context, dir string) <-chan int {
	done := make(chan int, 1)
	go func() { done <- Run(ctx, dir) }()
	return done
}

func run(name, command string, env ...v1alpha1.EnvVar) Step {
	return Step{Name: name, Kind: StepKindRun, Command: command, Env: env}
}

func stepLog(t *testing.T, dir string, i int) string {
	t.Helper()
	data, err := os.ReadFile(StepLogPath(dir, i))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type wantStep struct {
	phase    v1alpha1.StepPhase
	exitCode *int32 // nil: not checked
	log      string // substring of the log
	notInLog string
	message  string // substring of the message
}

func code(c int32) *int32 { return &c }

func checkSteps(t *testing.T, dir string, nSteps int, want []wantStep) {
	t.Helper()
	var prevEnd time.Time
	for i := range nSteps {
		got, err := ReadResult(dir, i)
		if i >= len(want) {
			if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("step %d: got result %+v, err %v; want none", i, got, err)
			}
			if _, err := os.Stat(StepLogPath(dir, i)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("step %d: log exists, want none", i)
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		w := want[i]
		if got.Phase != w.phase {
			t.Errorf("step %d: phase %s, want %s (message %q)", i, got.Phase, w.phase, got.Message)
		}
		if w.exitCode != nil && (got.ExitCode == nil || *got.ExitCode != *w.exitCode) {
			t.Errorf("step %d: exit code %v, want %d", i, fmtCode(got.ExitCode), *w.exitCode)
		}
		if !strings.Contains(got.Message, w.message) {
			t.Errorf("step %d: message %q, want it to contain %q", i, got.Message, w.message)
		}
		if got.StartTime.IsZero() || got.EndTime.Before(got.StartTime) {
			t.Errorf("step %d: start %v, end %v", i, got.StartTime, got.EndTime)
		}
		if got.StartTime.Before(prevEnd) {
			t.Errorf("step %d started at %v, before the previous step ended at %v", i, got.StartTime, prevEnd)
		}
		prevEnd = got.EndTime
		log := stepLog(t, dir, i)
		if !strings.Contains(log, w.log) {
			t.Errorf("step %d: log %q, want it to contain %q", i, log, w.log)
		}
		if w.notInLog != "" && strings.Contains(log, w.notInLog) {
			t.Errorf("step %d: log %q contains %q", i, log, w.notInLog)
		}
	}
}

func fmtCode(c *int32) any {
	if c == nil {
		return "<nil>"
	}
	return *c
}

func TestRunSteps(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		steps    []Step
		wantExit int
		want     []wantStep
	}{{
		name: "steps run in order with their logs and exit codes",
		steps: []Step{
			run("one", "echo one >> order; echo out"),
			run("two", "echo two >> order; echo err >&2; cat order"),
		},
		wantExit: ExitSuccess,
		want: []wantStep{
			{phase: v1alpha1.StepPhaseSuccess, exitCode: code(0), log: "out\n"},
			{phase: v1alpha1.StepPhaseSuccess, exitCode: code(0), log: "err\none\ntwo\n"},
		},
	}, {
		name: "a failing step stops the rest",
		steps: []Step{
			run("ok", "echo ok"),
			run("fails", "echo failing; exit 3"),
			run("never", "echo never"),
		},
		wantExit: ExitFailed,
		want: []wantStep{
			{phase: v1alpha1.StepPhaseSuccess, exitCode: code(0), log: "ok"},
			{phase: v1alpha1.StepPhaseFailed, exitCode: code(3), log: "failing"},
		},
	}, {
		name:     "the default shell stops at the first failing command",
		steps:    []Step{run("e", "false\necho after")},
		wantExit: ExitFailed,
		want:     []wantStep{{phase: v1alpha1.StepPhaseFailed, exitCode: code(1), notInLog: "after"}},
	}, {
		name:     "a shell is looked up in PATH and given its arguments",
		steps:    []Step{{Name: "x", Kind: StepKindRun, Shell: "sh -x", Command: "echo hi"}},
		wantExit: ExitSuccess,
		want:     []wantStep{{phase: v1alpha1.StepPhaseSuccess, exitCode: code(0), log: "+ echo hi\nhi\n"}},
	}, {
		name: "a missing shell fails with 127",
		steps: []Step{
			{Name: "bash", Kind: StepKindRun, Shell: "/nonexistent/bash -e", Command: "echo hi"},
			run("never", "echo never"),
		},
		wantExit: ExitFailed,
		want: []wantStep{{
			phase: v1alpha1.StepPhaseFailed, exitCode: code(127),
			message: `shell "/nonexistent/bash" not found in the image`,
			log:     `shell "/nonexistent/bash" not found in the image`,
		}},
	}, {
		name:     "a missing shell in PATH fails with 127",
		steps:    []Step{{Name: "nope", Kind: StepKindRun, Shell: "no-such-shell-here", Command: "echo hi"}},
		wantExit: ExitFailed,
		want: []wantStep{{
			phase: v1alpha1.StepPhaseFailed, exitCode: code(127), message: `shell "no-such-shell-here" not found in the image`,
		}},
	}, {
		name:     "a step killed by a signal reports 128+n",
		steps:    []Step{run("kill", "kill -9 $$")},
		wantExit: ExitFailed,
		want:     []wantStep{{phase: v1alpha1.StepPhaseFailed, exitCode: code(137), message: "killed"}},
	}, {
		name:     "an unknown kind fails",
		steps:    []Step{{Name: "what", Kind: "teleport"}},
		wantExit: ExitFailed,
		want:     []wantStep{{phase: v1alpha1.StepPhaseFailed, message: `unknown step kind "teleport"`}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := newTaskDir(t, TaskFile{Steps: tt.steps, WorkingDir: t.TempDir()}, true)
			if got := runToolbox(t, dir); got != tt.wantExit {
				t.Errorf("exit code %d, want %d", got, tt.wantExit)
			}
			checkSteps(t, dir, len(tt.steps), tt.want)
		})
	}
}

// Not parallel: t.Setenv.
func TestRunEnvPrecedence(t *testing.T) {
	t.Setenv("TOOLBOX_TEST_A", "process")
	t.Setenv("TOOLBOX_TEST_B", "process")
	dir := newTaskDir(t, TaskFile{Steps: []Step{
		run("env", `echo "A=$TOOLBOX_TEST_A B=$TOOLBOX_TEST_B C=$TOOLBOX_TEST_C"`,
			v1alpha1.EnvVar{Name: "TOOLBOX_TEST_A", Value: "step"},
			v1alpha1.EnvVar{Name: "TOOLBOX_TEST_C", Value: "first"},
			v1alpha1.EnvVar{Name: "TOOLBOX_TEST_C", Value: "last"}),
	}}, true)
	if got := runToolbox(t, dir); got != ExitSuccess {
		t.Fatalf("exit code %d", got)
	}
	if got, want := stepLog(t, dir, 0), "A=step B=process C=last\n"; got != want {
		t.Errorf("log %q, want %q", got, want)
	}
}

func TestMergeEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		base []string
		env  []v1alpha1.EnvVar
		want []string
	}{
		{"empty step env", []string{"A=1", "B=2"}, nil, []string{"A=1", "B=2"}},
		{"step wins", []string{"A=1", "B=2"}, []v1alpha1.EnvVar{{Name: "A", Value: "x"}}, []string{"B=2", "A=x"}},
		{"empty value overrides", []string{"A=1"}, []v1alpha1.EnvVar{{Name: "A"}}, []string{"A="}},
		{"last duplicate wins", nil, []v1alpha1.EnvVar{{Name: "A", Value: "1"}, {Name: "A", Value: "2"}}, []string{"A=2"}},
	}
	for _, tt := range tests {
		if got := mergeEnv(tt.base, tt.env); !slices.Equal(got, tt.want) {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestRunWorkingDir(t *testing.T) {
	t.Parallel()
	wd := filepath.Join(t.TempDir(), "a", "b", "c")
	dir := newTaskDir(t, TaskFile{WorkingDir: wd, Steps: []Step{run("pwd", "pwd")}}, true)
	if got := runToolbox(t, dir); got != ExitSuccess {
		t.Fatalf("exit code %d", got)
	}
	if fi, err := os.Stat(wd); err != nil || !fi.IsDir() {
		t.Fatalf("working dir not created: %v", err)
	}
	if got := stepLog(t, dir, 0); got != wd+"\n" {
		t.Errorf("pwd %q, want %q", got, wd)
	}
}

func TestRunWorkingDirFailsFirstStep(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	steps := []Step{run("one", "true"), run("two", "true")}
	dir := newTaskDir(t, TaskFile{WorkingDir: filepath.Join(file, "sub"), Steps: steps}, true)
	if got := runToolbox(t, dir); got != ExitFailed {
		t.Errorf("exit code %d, want %d", got, ExitFailed)
	}
	checkSteps(t, dir, len(steps), []wantStep{{phase: v1alpha1.StepPhaseFailed, message: "creating working directory", log: "creating working directory"}})
}

func TestRunSetupErrors(t *testing.T) {
	t.Parallel()
	if got := Run(t.Context(), t.TempDir()); got != ExitSetup {
		t.Errorf("missing task file: exit code %d, want %d", got, ExitSetup)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, TaskFileName), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := Run(t.Context(), dir); got != ExitSetup {
		t.Errorf("invalid task file: exit code %d, want %d", got, ExitSetup)
	}
}

func TestRunWaitsForStart(t *testing.T) {
	t.Parallel()
	dir := newTaskDir(t, TaskFile{Steps: []Step{run("one", "echo started")}}, false)
	done := runAsync(t.Context(), dir)

	// Nothing may happen before start, however long we look; a few polls are enough to tell.
	time.Sleep(5 * pollInterval)
	select {
	case code := <-done:
		t.Fatalf("toolbox exited with %d before start", code)
	default:
	}
	if _, err := ReadResult(dir, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("step result before start: %v", err)
	}

	if err := Start(dir); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != ExitSuccess {
			t.Fatalf("exit code %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("toolbox did not start")
	}
	checkSteps(t, dir, 1, []wantStep{{phase: v1alpha1.StepPhaseSuccess, exitCode: code(0), log: "started"}})
}

func TestRunStopBeforeStart(t *testing.T) {
	t.Parallel()
	dir := newTaskDir(t, TaskFile{Steps: []Step{run("one", "echo never")}}, false)
	done := runAsync(t.Context(), dir)
	if err := Stop(dir); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != ExitStopped {
			t.Errorf("exit code %d, want %d", code, ExitStopped)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("toolbox did not stop")
	}
	checkSteps(t, dir, 1, nil)
}

func TestRunStop(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		stop func(dir string, cancel context.CancelFunc)
		msg  string
	}{
		{"stop file", func(dir string, _ context.CancelFunc) { _ = Stop(dir) }, "stop requested by the executor"},
		{"context cancelled, as on SIGTERM", func(_ string, cancel context.CancelFunc) { cancel() }, "context canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			steps := []Step{run("ok", "true"), run("sleep", "echo sleeping; sleep 30"), run("never", "echo never")}
			dir := newTaskDir(t, TaskFile{Steps: steps}, true)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := runAsync(ctx, dir)

			eventually(t, 10*time.Second, "step 1 running", func() bool {
				r, err := ReadResult(dir, 1)
				log, _ := os.ReadFile(StepLogPath(dir, 1))
				return err == nil && r.Phase == v1alpha1.StepPhaseRunning && strings.Contains(string(log), "sleeping")
			})
			stoppedAt := time.Now()
			tt.stop(dir, cancel)
			select {
			case code := <-done:
				if code != ExitStopped {
					t.Errorf("exit code %d, want %d", code, ExitStopped)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("toolbox did not stop")
			}
			if d := time.Since(stoppedAt); d > 2*time.Second {
				t.Errorf("stopping took %v", d)
			}
			checkSteps(t, dir, len(steps), []wantStep{
				{phase: v1alpha1.StepPhaseSuccess, exitCode: code(0)},
				{phase: v1alpha1.StepPhaseStopped, exitCode: code(128 + 15), log: "sleeping", message: tt.msg},
			})
		})
	}
}

// Not parallel: changes killGrace, before the parallel tests resume.
func TestRunStopKillsAfterGrace(t *testing.T) {
	defer func(g time.Duration) { killGrace = g }(killGrace)
	killGrace = 200 * time.Millisecond

	// The ignored SIGTERM is inherited by sleep, so only SIGKILL ends the step.
	steps := []Step{run("stubborn", "trap '' TERM; echo trapped; sleep 30")}
	dir := newTaskDir(t, TaskFile{Steps: steps}, true)
	done := runAsync(t.Context(), dir)
	eventually(t, 10*time.Second, "the step's trap", func() bool {
		data, _ := os.ReadFile(StepLogPath(dir, 0))
		return strings.Contains(string(data), "trapped")
	})
	if err := Stop(dir); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != ExitStopped {
			t.Errorf("exit code %d, want %d", code, ExitStopped)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("toolbox did not stop")
	}
	checkSteps(t, dir, 1, []wantStep{{phase: v1alpha1.StepPhaseStopped, exitCode: code(128 + 9)}})
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWorkspaceFanIn saves workspaces in two parent tasks and restores both in a child.
func TestWorkspaceFanIn(t *testing.T) {
	t.Parallel()
	save := func(contents ...v1alpha1.SaveContent) Step {
		return Step{Name: "save-to-workspace", Kind: StepKindSaveToWorkspace, Contents: contents}
	}

	// Parent a: a tree with an executable, a symlink and an empty dir, plus a file from elsewhere.
	a := newTaskDir(t, TaskFile{WorkingDir: t.TempDir(), Steps: []Step{
		run("build", `mkdir -p out/bin out/empty && echo tool > out/bin/tool && chmod 750 out/bin/tool &&
ln -s tool out/bin/link && echo notes > notes.txt && echo ignored > other.md`),
		save(
			v1alpha1.SaveContent{SourceDir: "out", DestDir: "/", Paths: []string{"*"}},
			v1alpha1.SaveContent{SourceDir: ".", DestDir: "docs", Paths: []string{"*.txt", "*.none"}},
		),
	}}, true)
	// Parent b: a matched directory is added recursively; two archives, the later one wins.
	b := newTaskDir(t, TaskFile{WorkingDir: t.TempDir(), Steps: []Step{
		run("build", "mkdir -p lib/sub && echo b > lib/sub/b.so && chmod 600 lib/sub/b.so && echo first > v"),
		save(v1alpha1.SaveContent{SourceDir: ".", DestDir: ".", Paths: []string{"lib", "v"}}),
		run("again", "echo second > v"),
		save(v1alpha1.SaveContent{SourceDir: ".", DestDir: "", Paths: []string{"v"}}),
	}}, true)
	for _, dir := range []string{a, b} {
		if got := runToolbox(t, dir); got != ExitSuccess {
			t.Fatalf("parent %s: exit code %d; log: %s", dir, got, stepLog(t, dir, 1))
		}
	}
	if !strings.Contains(stepLog(t, a, 1), "saved 1 entries from . (*.txt *.none) to docs") {
		t.Errorf("save log: %q", stepLog(t, a, 1))
	}

	// The executor copies the archives; 2 and 10 make sure the order is numeric.
	childWD := t.TempDir()
	child := newTaskDir(t, TaskFile{
		WorkingDir:       childWD,
		WorkspaceSources: []string{"task-a", "task-b"},
		Steps: []Step{
			{Name: "restore-workspace", Kind: StepKindRestoreWorkspace, DestDir: "ws"},
			run("check", "cat ws/bin/tool ws/lib/sub/b.so ws/docs/notes.txt ws/v && readlink ws/bin/link && test -d ws/empty && test ! -e ws/docs/other.md"),
		},
	}, false)
	copyFile(t, ArchivePath(a, 1), WorkspaceArchivePath(child, "task-a", 1))
	copyFile(t, ArchivePath(b, 1), WorkspaceArchivePath(child, "task-b", 2))
	copyFile(t, ArchivePath(b, 3), WorkspaceArchivePath(child, "task-b", 10))
	if err := Start(child); err != nil {
		t.Fatal(err)
	}
	if got := runToolbox(t, child); got != ExitSuccess {
		t.Fatalf("child: exit code %d; logs: %q %q", got, stepLog(t, child, 0), stepLog(t, child, 1))
	}
	if got, want := stepLog(t, child, 1), "tool\nb\nnotes\nsecond\ntool\n"; got != want {
		t.Errorf("restored contents %q, want %q", got, want)
	}
	for name, want := range map[string]fs.FileMode{
		"ws/bin/tool":     0o750,
		"ws/lib/sub/b.so": 0o600,
		"ws/bin/link":     fs.ModeSymlink | 0o777,
	} {
		fi, err := os.Lstat(filepath.Join(childWD, name))
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), want)
		}
	}
}

func TestSaveWorkspaceFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		content v1alpha1.SaveContent
		message string
	}{
		{"no match", v1alpha1.SaveContent{SourceDir: ".", DestDir: ".", Paths: []string{"*.nothing", "missing/*"}},
			`no file in . matches "*.nothing", "missing/*"`},
		{"missing source dir", v1alpha1.SaveContent{SourceDir: "nowhere", DestDir: ".", Paths: []string{"*"}},
			`no file in nowhere matches "*"`},
		{"bad pattern", v1alpha1.SaveContent{SourceDir: ".", DestDir: ".", Paths: []string{"["}},
			`pattern "["`},
		{"outside the source dir", v1alpha1.SaveContent{SourceDir: "sub", DestDir: ".", Paths: []string{"../*"}},
			"is outside sourceDir sub"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			steps := []Step{
				run("files", "mkdir sub && echo x > file.txt"),
				{Name: "save", Kind: StepKindSaveToWorkspace, Contents: []v1alpha1.SaveContent{tt.content}},
			}
			dir := newTaskDir(t, TaskFile{WorkingDir: t.TempDir(), Steps: steps}, true)
			if got := runToolbox(t, dir); got != ExitFailed {
				t.Errorf("exit code %d, want %d", got, ExitFailed)
			}
			checkSteps(t, dir, len(steps), []wantStep{
				{phase: v1alpha1.StepPhaseSuccess},
				{phase: v1alpha1.StepPhaseFailed, message: tt.message, log: tt.message},
			})
			entries, err := os.ReadDir(filepath.Join(dir, ArchivesDir))
			if err != nil || len(entries) != 0 {
				t.Errorf("archives left: %v, %v", entries, err)
			}
		})
	}
}

type tarEntry struct {
	name     string
	typeflag byte
	linkname string
	body     string
}

func writeTar(t *testing.T, path string, entries []tarEntry) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typeflag, Linkname: e.linkname, Mode: 0o644, Size: int64(len(e.body))}
		if e.typeflag != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil && hdr.Size > 0 {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreWorkspaceRefusesEscapes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		entries func(outside string) []tarEntry
		message string
	}{
		{"dot-dot", func(string) []tarEntry {
			return []tarEntry{{name: "../escaped", typeflag: tar.TypeReg, body: "x"}}
		}, `entry "../escaped" escapes the destination directory`},
		{"dot-dot inside a path", func(string) []tarEntry {
			return []tarEntry{{name: "a/../../escaped", typeflag: tar.TypeReg, body: "x"}}
		}, "escapes the destination directory"},
		{"absolute", func(outside string) []tarEntry {
			return []tarEntry{{name: filepath.Join(outside, "escaped"), typeflag: tar.TypeReg, body: "x"}}
		}, "escapes the destination directory"},
		{"through a symlink", func(outside string) []tarEntry {
			return []tarEntry{
				{name: "link", typeflag: tar.TypeSymlink, linkname: outside},
				{name: "link/escaped", typeflag: tar.TypeReg, body: "x"},
			}
		}, "is a symlink"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			wd := t.TempDir()
			outside := wd // dest is wd/ws: its parent is outside it
			dir := newTaskDir(t, TaskFile{
				WorkingDir:       wd,
				WorkspaceSources: []string{"evil"},
				Steps: []Step{
					{Name: "restore", Kind: StepKindRestoreWorkspace, DestDir: "ws"},
					run("never", "echo never"),
				},
			}, true)
			writeTar(t, WorkspaceArchivePath(dir, "evil", 0), tt.entries(outside))
			if got := runToolbox(t, dir); got != ExitFailed {
				t.Errorf("exit code %d, want %d", got, ExitFailed)
			}
			checkSteps(t, dir, 2, []wantStep{{phase: v1alpha1.StepPhaseFailed, message: tt.message, log: tt.message}})
			if _, err := os.Lstat(filepath.Join(outside, "escaped")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a file escaped the destination: %v", err)
			}
		})
	}
}

func TestRestoreWorkspaceReplacesSymlinks(t *testing.T) {
	t.Parallel()
	wd := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("safe"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(wd, "ws"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A symlink already in the destination is replaced by the archived file, not written through.
	if err := os.Symlink(victim, filepath.Join(wd, "ws", "f")); err != nil {
		t.Fatal(err)
	}
	dir := newTaskDir(t, TaskFile{
		WorkingDir:       wd,
		WorkspaceSources: []string{"p"},
		Steps:            []Step{{Name: "restore", Kind: StepKindRestoreWorkspace, DestDir: "ws"}},
	}, true)
	writeTar(t, WorkspaceArchivePath(dir, "p", 0), []tarEntry{{name: "f", typeflag: tar.TypeReg, body: "new"}})
	if got := runToolbox(t, dir); got != ExitSuccess {
		t.Fatalf("exit code %d: %s", got, stepLog(t, dir, 0))
	}
	if data, _ := os.ReadFile(victim); string(data) != "safe" {
		t.Errorf("victim overwritten: %q", data)
	}
	if data, _ := os.ReadFile(filepath.Join(wd, "ws", "f")); string(data) != "new" {
		t.Errorf("restored file %q", data)
	}
}

func TestStepsFromTask(t *testing.T) {
	t.Parallel()
	name, shell := "build", "/bin/bash -e"
	long := strings.Repeat("x", 50)
	task := &v1alpha1.Task{Steps: []v1alpha1.Step{
		{Run: &v1alpha1.RunStep{Name: &name, Command: "make", Shell: &shell, Env: []v1alpha1.EnvVar{{Name: "A", Value: "1"}}}},
		{Run: &v1alpha1.RunStep{Command: "\n  go test ./...  \nmore"}},
		{Run: &v1alpha1.RunStep{Command: long}},
		{Run: &v1alpha1.RunStep{Command: " \n\t"}},
		{SaveToWorkspace: &v1alpha1.SaveToWorkspaceStep{Contents: []v1alpha1.SaveContent{{SourceDir: ".", DestDir: ".", Paths: []string{"*"}}}}},
		{RestoreWorkspace: &v1alpha1.RestoreWorkspaceStep{DestDir: "/ws"}},
	}}
	got := StepsFromTask(task)
	want := []struct{ name, kind, shell string }{
		{"build", StepKindRun, shell},
		{"go test ./...", StepKindRun, ""},
		{long[:40], StepKindRun, ""},
		{"run-3", StepKindRun, ""},
		{"save-to-workspace", StepKindSaveToWorkspace, ""},
		{"restore-workspace", StepKindRestoreWorkspace, ""},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d steps, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Name != w.name || got[i].Kind != w.kind || got[i].Shell != w.shell {
			t.Errorf("step %d: got %q %q %q, want %q %q %q", i, got[i].Name, got[i].Kind, got[i].Shell, w.name, w.kind, w.shell)
		}
	}
	if len(got[0].Env) != 1 || got[4].Contents[0].Paths[0] != "*" || got[5].DestDir != "/ws" {
		t.Errorf("fields not copied: %+v", got)
	}
}

func TestReadResultNotStarted(t *testing.T) {
	t.Parallel()
	if _, err := ReadResult(t.TempDir(), 0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v, want os.ErrNotExist", err)
	}
}
