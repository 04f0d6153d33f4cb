package toolbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"runservice.dev/runservice/api/v1alpha1"
)

// pollInterval is how often the toolbox looks for the start and stop files.
const pollInterval = 50 * time.Millisecond

// killGrace is how long a stopped step's processes get between SIGTERM and SIGKILL. A variable so
// tests need not wait for it.
var killGrace = 5 * time.Second

// defaultPath is searched for a shell given without a slash when the environment has no PATH.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

var errStopFile = errors.New("stop requested by the executor")

// outcome is how a step ended.
type outcome struct {
	phase    v1alpha1.StepPhase
	exitCode *int32
	message  string
}

func failed(format string, args ...any) outcome {
	return outcome{phase: v1alpha1.StepPhaseFailed, message: fmt.Sprintf(format, args...)}
}

func stopped(ctx context.Context) outcome {
	return outcome{phase: v1alpha1.StepPhaseStopped, message: "stopped: " + context.Cause(ctx).Error()}
}

// runner runs the steps of one task file.
type runner struct {
	dir     string // absolute shared directory
	workDir string // absolute working directory of the steps
	tf      *TaskFile
	log     *slog.Logger
	// results are the last results written, nil for steps not started; they make the
	// termination message.
	results []*StepResult
	// frames and tail are nil unless the toolbox streams.
	frames *frameWriter
	tail   *tailer
}

// An Option changes how Run runs.
type Option func(*runOptions)

type runOptions struct {
	taskFile       string
	stream         io.Writer
	terminationLog string
}

// WithTaskFile reads the TaskFile from path instead of task.json in the shared directory: in a
// pod it comes from a Secret, which cannot be mounted into a writable directory.
func WithTaskFile(path string) Option {
	return func(o *runOptions) { o.taskFile = path }
}

// WithStream is the toolbox of a pod, whose executor shares no directory with it: the steps start
// at once (the start file is not waited for, services are already running) and everything written
// to steps/ and archives/ is also written to w as frames (see Demux). Nothing else goes to w.
func WithStream(w io.Writer) Option {
	return func(o *runOptions) { o.stream = w }
}

// WithTerminationLog writes the termination message (see ParseTermination) to path when Run
// returns, however it ends.
func WithTerminationLog(path string) Option {
	return func(o *runOptions) { o.terminationLog = path }
}

// Run is the toolbox: it reads dir/task.json, waits for dir/start, runs the steps in order and
// reports each through dir/steps/. Cancelling ctx stops it like the stop file does (cmd/toolbox
// cancels it on SIGTERM and SIGINT). It returns the toolbox's exit code: ExitSuccess, ExitFailed,
// ExitStopped or ExitSetup. In a pod, opts change where the task comes from and how the toolbox
// reports (WithTaskFile, WithStream, WithTerminationLog).
func Run(ctx context.Context, dir string, opts ...Option) (exitCode int) {
	var o runOptions
	for _, opt := range opts {
		opt(&o)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	r := &runner{log: log}
	if o.terminationLog != "" {
		// Registered first so that it runs last, once the results are final.
		defer r.writeTermination(o.terminationLog)
	}

	absDir, err := filepath.Abs(dir)
	if err != nil {
		log.Error("resolving the shared directory", "dir", dir, "err", err)
		return ExitSetup
	}
	taskPath := filepath.Join(absDir, TaskFileName)
	if o.taskFile != "" {
		taskPath = o.taskFile
	}
	tf, err := readTaskFile(taskPath)
	if err != nil {
		log.Error("reading the task", "file", taskPath, "err", err)
		return ExitSetup
	}
	r.dir, r.tf, r.results = absDir, tf, make([]*StepResult, len(tf.Steps))
	for _, d := range []string{StepsDir, ArchivesDir} {
		if err := os.MkdirAll(filepath.Join(absDir, d), 0o755); err != nil {
			log.Error("preparing the shared directory", "dir", absDir, "err", err)
			return ExitSetup
		}
	}
	if o.stream != nil {
		r.frames = &frameWriter{w: o.stream, log: log}
		r.tail = newTailer(r.frames)
		defer r.frames.close()
		defer r.tail.close()
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go watchStopFile(ctx, cancel, filepath.Join(absDir, StopFile))

	if o.stream == nil && !waitForStart(ctx, filepath.Join(absDir, StartFile)) {
		log.Info("stopped before start", "reason", context.Cause(ctx))
		return ExitStopped
	}

	if err := r.prepareWorkDir(); err != nil {
		log.Error("preparing the working directory", "err", err)
		if len(tf.Steps) == 0 {
			return ExitFailed
		}
		// Blame the first step: step statuses are what people look at, and its log says why.
		code, _ := r.report(ctx, 0, tf.Steps[0], func(context.Context, io.Writer) outcome {
			return failed("%v", err)
		})
		return code
	}

	for i, s := range tf.Steps {
		if ctx.Err() != nil {
			log.Info("stopped", "reason", context.Cause(ctx), "stepsRun", i)
			return ExitStopped
		}
		code, ok := r.report(ctx, i, s, func(ctx context.Context, w io.Writer) outcome {
			return r.runStep(ctx, i, s, w)
		})
		if !ok {
			return code
		}
	}
	return ExitSuccess
}

// report writes the Running result of step i, runs it with its log open, writes the final result
// and logs a summary. ok is false when the toolbox must exit with code.
func (r *runner) report(ctx context.Context, i int, s Step, run func(context.Context, io.Writer) outcome) (code int, ok bool) {
	res := &StepResult{Phase: v1alpha1.StepPhaseRunning, StartTime: time.Now()}
	if err := r.writeResult(i, res); err != nil {
		r.log.Error("reporting a step", "step", i, "err", err)
		return ExitSetup, false
	}
	logFile, err := os.OpenFile(StepLogPath(r.dir, i), os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		r.log.Error("creating a step log", "step", i, "err", err)
		return ExitSetup, false
	}
	if err := r.tail.add(i, StepLogPath(r.dir, i)); err != nil {
		_ = logFile.Close()
		r.log.Error("following a step log", "step", i, "err", err)
		return ExitSetup, false
	}
	out := run(ctx, logFile)
	if out.phase == v1alpha1.StepPhaseSuccess && s.Kind == StepKindSaveToWorkspace && r.frames != nil {
		// Before the final result, so that whoever sees Success has the whole archive.
		if err := r.streamArchive(i); err != nil {
			out = failed("streaming the archive: %v", err)
		}
	}
	if out.message != "" {
		// Step statuses carry no message: the log is where people will see it.
		fmt.Fprintln(logFile, out.message)
	}
	_ = logFile.Close()
	// Everything the step wrote before it ended is in the stream before its final result; what
	// processes it left behind write later still follows.
	r.tail.drain(i)

	res.Phase, res.ExitCode, res.Message = out.phase, out.exitCode, out.message
	res.EndTime = time.Now()
	if err := r.writeResult(i, res); err != nil {
		r.log.Error("reporting a step", "step", i, "err", err)
		return ExitSetup, false
	}

	attrs := []any{"step", i, "name", s.Name, "kind", s.Kind, "phase", out.phase}
	if out.exitCode != nil {
		attrs = append(attrs, "exitCode", *out.exitCode)
	}
	attrs = append(attrs, "duration", res.EndTime.Sub(res.StartTime).Round(time.Millisecond))
	if out.message != "" {
		attrs = append(attrs, "message", out.message)
	}
	r.log.Info("step finished", attrs...)

	switch out.phase {
	case v1alpha1.StepPhaseSuccess:
		return ExitSuccess, true
	case v1alpha1.StepPhaseStopped:
		return ExitStopped, false
	default:
		return ExitFailed, false
	}
}

// writeResult writes steps/<i>.json, remembers it for the termination message and streams it.
func (r *runner) writeResult(i int, res *StepResult) error {
	snapshot := *res
	r.results[i] = &snapshot
	data, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("encoding result of step %d: %w", i, err)
	}
	if err := writeFileAtomic(StepResultPath(r.dir, i), data); err != nil {
		return err
	}
	r.frames.write(frame{T: FrameResult, I: &i, R: data})
	return nil
}

func (r *runner) runStep(ctx context.Context, i int, s Step, w io.Writer) outcome {
	switch s.Kind {
	case StepKindRun:
		return r.runCommand(ctx, i, s, w)
	case StepKindSaveToWorkspace:
		return r.saveWorkspace(ctx, i, s, w)
	case StepKindRestoreWorkspace:
		return r.restoreWorkspace(ctx, s, w)
	default:
		return failed("unknown step kind %q", s.Kind)
	}
}

// prepareWorkDir resolves and creates the working directory. The process does not chdir: the
// steps get it as their directory and relative workspace paths are resolved against it, which
// keeps Run usable in-process.
func (r *runner) prepareWorkDir() error {
	cwd, err := os.Getwd()
	if err != nil {
		return fmt.Errorf("getting the working directory: %w", err)
	}
	r.workDir = cwd
	if r.tf.WorkingDir == "" {
		return nil
	}
	wd := r.tf.WorkingDir
	if !filepath.IsAbs(wd) {
		wd = filepath.Join(cwd, wd)
	}
	if err := os.MkdirAll(wd, 0o755); err != nil {
		return fmt.Errorf("creating working directory %s: %w", r.tf.WorkingDir, err)
	}
	r.workDir = wd
	return nil
}

// abs resolves p against the working directory.
func (r *runner) abs(p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(r.workDir, p)
}

func (r *runner) runCommand(ctx context.Context, i int, s Step, w io.Writer) outcome {
	script := filepath.Join(r.dir, StepsDir, strconv.Itoa(i)+".sh")
	if err := os.WriteFile(script, []byte(s.Command), 0o644); err != nil {
		return failed("writing the command: %v", err)
	}
	shell := s.Shell
	if strings.TrimSpace(shell) == "" {
		shell = DefaultShell
	}
	argv := strings.Fields(shell)
	env := mergeEnv(os.Environ(), s.Env)

	path, code, msg := r.lookShell(argv[0], env)
	if msg != "" {
		return outcome{phase: v1alpha1.StepPhaseFailed, exitCode: &code, message: msg}
	}
	cmd := &exec.Cmd{
		Path:   path,
		Args:   append(argv, script),
		Env:    env,
		Dir:    r.workDir,
		Stdout: w,
		Stderr: w,
		// Its own process group, so a stop reaches whatever the step started.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if err := cmd.Start(); err != nil {
		// execve fails with ENOENT when a script's interpreter or an ELF loader is missing.
		code := int32(126)
		if errors.Is(err, fs.ErrNotExist) {
			code = 127
		}
		return outcome{phase: v1alpha1.StepPhaseFailed, exitCode: &code, message: fmt.Sprintf("starting shell %q: %v", argv[0], err)}
	}

	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // the exit status is read from ProcessState
		close(done)
	}()
	select {
	case <-done:
		code, msg := exitStatus(cmd.ProcessState)
		phase := v1alpha1.StepPhaseSuccess
		if code != 0 {
			phase = v1alpha1.StepPhaseFailed
		}
		return outcome{phase: phase, exitCode: &code, message: msg}
	case <-ctx.Done():
	}

	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	timer := time.NewTimer(killGrace)
	select {
	case <-done:
	case <-timer.C:
	}
	timer.Stop()
	// Also reaches processes of the group that outlived the shell.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-done
	code, _ = exitStatus(cmd.ProcessState)
	out := stopped(ctx)
	out.exitCode = &code
	return out
}

// lookShell finds the shell like execvp would, in the step's PATH. A non-empty msg means the step
// fails with exit code code, as a shell would for a missing or non-executable command.
func (r *runner) lookShell(name string, env []string) (path string, code int32, msg string) {
	notFound := fmt.Sprintf("shell %q not found in the image", name)
	if strings.Contains(name, "/") {
		path = name
		if !filepath.IsAbs(path) {
			path = filepath.Join(r.workDir, path)
		}
		fi, err := os.Stat(path)
		switch {
		case err != nil:
			return "", 127, notFound
		case fi.IsDir() || fi.Mode().Perm()&0o111 == 0:
			return "", 126, fmt.Sprintf("shell %q is not executable", name)
		}
		return path, 0, ""
	}
	pathVar := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathVar = v // the last one wins, as in mergeEnv
		}
	}
	for _, d := range filepath.SplitList(pathVar) {
		if !filepath.IsAbs(d) {
			continue
		}
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode().Perm()&0o111 != 0 {
			return p, 0, ""
		}
	}
	return "", 127, notFound
}

// exitStatus is the shell's exit code, or 128+n when signal n killed it.
func exitStatus(ps *os.ProcessState) (int32, string) {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return int32(128 + int(ws.Signal())), "killed by signal " + ws.Signal().String()
	}
	return int32(ps.ExitCode()), ""
}

// mergeEnv returns base with env set on top of it: a step's variable replaces the process's.
func mergeEnv(base []string, env []v1alpha1.EnvVar) []string {
	override := make(map[string]bool, len(env))
	for _, e := range env {
		override[e.Name] = true
	}
	out := make([]string, 0, len(base)+len(env))
	for _, kv := range base {
		name, _, _ := strings.Cut(kv, "=")
		if !override[name] {
			out = append(out, kv)
		}
	}
	seen := make(map[string]int, len(env))
	for _, e := range env {
		kv := e.Name + "=" + e.Value
		if j, ok := seen[e.Name]; ok {
			out[j] = kv
			continue
		}
		seen[e.Name] = len(out)
		out = append(out, kv)
	}
	return out
}

// waitForStart polls for the start file; false when ctx ends first.
func waitForStart(ctx context.Context, path string) bool {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		if exists(path) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// watchStopFile cancels ctx once the stop file appears.
func watchStopFile(ctx context.Context, cancel context.CancelCauseFunc, path string) {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		if exists(path) {
			cancel(errStopFile)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
