package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	ctrl "sigs.k8s.io/controller-runtime"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor/toolbox"
	"runservice.dev/runservice/internal/objectstore"
)

// runner follows one task from start to final status.
type runner struct {
	e *Executor
	// et is the runner's copy of the task, replaced whole by each status write: only the runner's
	// own goroutine reads it. id and name are what the goroutines it starts (wait, mirror, stop) use.
	et       *rsv1.ExecutorTask
	id       types.UID
	name     string
	dir      string
	cancel   context.CancelFunc
	stopOnce sync.Once
	stopped  chan struct{}
	// startedSeen is when the runner first saw the main container started.
	startedSeen time.Time
	// stepsLook is what report last saw of the steps' directory.
	stepsLook dirLook
	// refused is what the executor refused of the task while it ran (a link planted at the stop
	// file, frames past its bounds), for its final status.
	refused error
	// ended is set once the task's final status is written: what is left is the removal of its
	// containers, which a deletion of the task does not need to repeat.
	ended atomic.Bool
}

// startRunner starts following a task in the background; fresh starts its containers first.
func (e *Executor) startRunner(et *rsv1.ExecutorTask, fresh bool) {
	// The runner outlives the reconcile that started it, not the executor: when the executor stops,
	// its runners stop following and leave the containers running, to be adopted after a restart.
	// It logs with the executor's logger (its lines name the task): the reconcile's, with the
	// values of that reconcile, would be a copy of the logger's encoder kept per task in flight.
	rctx, cancel := context.WithCancel(e.baseCtx)
	r := &runner{e: e, et: et.DeepCopy(), id: et.UID, name: et.Name, dir: e.taskDir(et.UID), cancel: cancel, stopped: make(chan struct{})}
	e.mu.Lock()
	e.runners[et.UID] = r
	e.names[et.Name] = et.UID
	e.mu.Unlock()
	if et.Spec.Stop {
		r.stop()
	}
	go func() {
		defer func() {
			cancel()
			e.mu.Lock()
			delete(e.runners, et.UID)
			delete(e.names, et.Name) // its containers are gone or followed again by a new runner
			e.mu.Unlock()
			e.wakeWaiting(e.baseCtx) // its slot is free
		}()
		if err := r.run(rctx, fresh); err != nil && rctx.Err() == nil {
			ctrl.LoggerFrom(rctx).Error(err, "running task", "executorTask", et.Name)
		}
	}()
}

func (r *runner) stop() { r.stopOnce.Do(func() { close(r.stopped) }) }

func (r *runner) uid() string { return string(r.id) }

func (r *runner) run(ctx context.Context, fresh bool) error {
	if fresh {
		if err := r.prepare(ctx); err != nil {
			return r.e.finish(ctx, r.et, rsv1.TaskPhaseFailed, "preparing the task: "+err.Error(), nil)
		}
		cred, err := r.e.creds.taskCredential(ctx, r.et.UID)
		if err != nil {
			return r.e.finish(ctx, r.et, rsv1.TaskPhaseFailed, "not started: "+err.Error(), nil)
		}
		var ca []byte
		if r.e.cert != nil {
			ca = r.e.cert.caBundle()
		}
		// Last, right before the containers are created: nothing that may wait on the apiserver
		// comes between the check and the create.
		if why := r.e.gate.shut(); why != "" {
			// The Lease lapsed since the reconcile checked it: creating its containers now could race
			// a sibling removing this executor's. Recorded, never started.
			return r.e.finish(ctx, r.et, rsv1.TaskPhaseFailed, "not started: "+why, nil)
		}
		err = r.e.driver.Start(ctx, &Task{
			WorkspaceCredential: cred,
			WorkspaceCA:         ca,
			ExecutorTask:        r.et,
			Dir:                 r.dir,
			Toolbox:             r.e.opts.Toolbox,
			Labels:              r.labels(),
			Env:                 r.env(),
			Builtin:             []string{"RUNSERVICE_RUN=" + r.et.Spec.RunName, "RUNSERVICE_TASK=" + r.et.Spec.TaskName},
			Started:             func() error { return toolbox.Start(r.dir) },
		})
		switch {
		case errors.Is(err, ErrExists):
			// Created by an earlier process of this executor that stopped before recording anything,
			// and whose directory is gone (else the reconcile would have adopted them): followed, not
			// started again.
			ctrl.LoggerFrom(ctx).Info("the task's containers exist already: adopting them", "executorTask", r.name, "detail", err.Error())
			if err := r.release(ctx); err != nil {
				return err
			}
		case err != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			_ = r.e.driver.Remove(ctx, r.uid())
			return r.e.finish(ctx, r.et, rsv1.TaskPhaseFailed, err.Error(), nil)
		}
	} else if err := r.release(ctx); err != nil {
		return err
	}

	return r.follow(ctx)
}

// follow follows the task, woken by its driver (a Follower's events; Wait's return and a look for
// the container's start every lookEvery otherwise): it looks at the main container when it
// changed (or when the driver asks to, by time), records Running once the container has run for
// the delay, looks at the steps' directory while it runs, and ends the task once its container
// ended and what it reported is in its directory (copyWait at most).
func (r *runner) follow(ctx context.Context) error {
	var f Following
	if fr, ok := r.e.driver.(Follower); ok {
		f = fr.Follow(ctx, r.uid(), r.dir, len(r.et.Spec.Task.Steps), r.e.opts.Limits)
	} else {
		f = waitFor(ctx, r.e.driver, r.uid())
	}
	defer f.Close()
	timeout, stopTimeout := r.deadline()
	defer stopTimeout()
	wake := time.NewTimer(0) // the first look, at once
	defer wake.Stop()
	var (
		stopRequested, timedOut = r.stopped, false
		lookAgain               = lookRetry // after a look that failed
		endedAt                 time.Time   // when the container was first seen ended, its copy not done
		reportAt                time.Time   // the next report, once the container started
		quietLooked             bool        // a report looked at the steps since the driver's copy last wrote them
	)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-stopRequested:
			stopRequested = nil
			r.halt(ctx)
			continue
		case <-timeout:
			timeout, timedOut = nil, true
			r.halt(ctx)
			continue
		case <-f.Changed():
		case <-wake.C:
		}
		seen, err := f.Look(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		stopped := stopRequested == nil && !timedOut
		if err != nil && !errors.Is(err, ErrNotFound) {
			// The driver could not look (its live pod List cut off, the apiserver restarting):
			// not the containers' end, which only ErrNotFound says. Looked at again.
			ctrl.LoggerFrom(ctx).Error(err, "looking at the task's containers", "executorTask", r.name)
			wake.Stop()
			wake.Reset(lookAgain.Step())
			continue
		}
		lookAgain = lookRetry
		if err != nil {
			// The containers are gone: a read of their reports still under way is stopped first.
			r.copied(ctx, f.Cut())
			return r.end(ctx, nil, err, stopped, timedOut)
		}
		st, now := seen.State, time.Now()
		if !st.Running && endedAt.IsZero() {
			endedAt = now
		}
		if !st.Running && !seen.Done && now.Sub(endedAt) >= copyWait {
			ctrl.LoggerFrom(ctx).Info("the task's reports are still incomplete; ending it with what arrived", "executorTask", r.name)
			seen.Done, seen.Copied = true, f.Cut()
		}
		r.copied(ctx, seen.Copied)
		if seen.Done {
			return r.end(ctx, st, nil, stopped, timedOut)
		}
		next := seen.At
		quietLooked = quietLooked && seen.Quiet
		switch {
		case !st.Running:
			next = earliest(next, endedAt.Add(copyWait))
		case !st.Started:
		case quietLooked && r.et.Status.Phase == rsv1.TaskPhaseRunning:
			// Recorded Running, and nothing wrote the steps since they were looked at.
		default:
			if r.startedSeen.IsZero() {
				r.startedSeen, reportAt = now, now.Add(r.e.opts.RunningStatusDelay)
			}
			if !now.Before(reportAt) {
				err := r.report(ctx)
				if err != nil && ctx.Err() == nil {
					ctrl.LoggerFrom(ctx).Error(err, "reporting progress", "executorTask", r.name)
				}
				reportAt = now.Add(max(r.stepsLook.every, lookEvery))
				quietLooked = seen.Quiet && err == nil
			}
			next = earliest(next, reportAt)
		}
		wake.Stop()
		if !next.IsZero() {
			wake.Reset(time.Until(next))
		}
	}
}

// copied records what the copy of the task's reports could not do (Seen.Copied).
func (r *runner) copied(ctx context.Context, err error) {
	if errors.Is(err, toolbox.ErrRefused) {
		r.refused = err
	} else if err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "copying the task's reports", "executorTask", r.name)
	}
}

// waiting follows a task of a driver that is no Follower: a goroutine blocks in its Wait, and the
// main container's start is looked for every lookEvery until it started (the driver shares the
// task's directory: there is no copy to wait for).
type waiting struct {
	ctx     context.Context
	d       Driver
	uid     string
	done    chan struct{} // closed when Wait returned st and err
	st      *State
	err     error
	started bool
	cancel  context.CancelFunc
}

func waitFor(ctx context.Context, d Driver, uid string) *waiting {
	ctx, cancel := context.WithCancel(ctx)
	w := &waiting{ctx: ctx, d: d, uid: uid, cancel: cancel}
	w.wait()
	return w
}

// wait waits for the task in a goroutine of its own, which closes done once Wait returned.
func (w *waiting) wait() {
	done := make(chan struct{})
	w.done = done
	go func() {
		defer close(done)
		w.st, w.err = w.d.Wait(w.ctx, w.uid)
	}()
}

func (w *waiting) Changed() <-chan struct{} { return w.done }

func (w *waiting) Close() { w.cancel() }

// Cut implements Following: the driver shares the task's directory, nothing is copied.
func (w *waiting) Cut() error { return nil }

func (w *waiting) Look(ctx context.Context) (Seen, error) {
	select {
	case <-w.done:
		if err := w.err; err != nil && !errors.Is(err, ErrNotFound) && w.ctx.Err() == nil {
			// Wait failed for a moment (the daemon restarting): waited for again, and the
			// runner looks again after its backoff.
			w.wait()
			return Seen{}, err
		}
		return Seen{State: w.st, Done: w.err == nil}, w.err
	default:
	}
	if !w.started {
		st, err := w.d.Inspect(ctx, w.uid)
		w.started = err == nil && st.Started
	}
	if w.started {
		return Seen{State: &State{Running: true, Started: true}}, nil
	}
	return Seen{State: &State{Running: true}, At: time.Now().Add(lookEvery)}, nil
}

// lookRetry spaces the looks at a task after one failed: 500ms, doubling up to 30s.
var lookRetry = wait.Backoff{Duration: lookEvery, Factor: 2, Steps: 16, Cap: 30 * time.Second}

// copyWait bounds how long a task whose container ended waits for the copy of what it reported
// (a variable for the tests).
var copyWait = 30 * time.Second

// deadline is the task's timeout, if it has one, counted from its start, and the func that
// releases its timer.
func (r *runner) deadline() (<-chan time.Time, func()) {
	t := r.et.Spec.Task.TimeoutSeconds
	if t == nil || r.et.Status.StartTime == nil {
		return nil, func() {}
	}
	timer := time.NewTimer(time.Until(r.et.Status.StartTime.Add(time.Duration(*t) * time.Second)))
	return timer.C, func() { timer.Stop() }
}

// earliest of two times, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// release lets the toolbox of an adopted task begin when the executor died after starting its
// containers and before letting it: no step has run (the toolbox waits for the start file before the
// first), so the steps run now, once. A main container that is not running never saw the start file
// either; its driver reports it (Docker: created, never started) and the task fails.
func (r *runner) release(ctx context.Context) error {
	if _, err := os.Lstat(filepath.Join(r.dir, toolbox.StartFile)); err == nil || !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	st, err := r.e.driver.Inspect(ctx, r.uid())
	if err != nil || !st.Running {
		return nil // Wait and end tell what happened
	}
	ctrl.LoggerFrom(ctx).Info("the executor stopped before letting the adopted task begin: releasing its steps now", "executorTask", r.name)
	if err := toolbox.Start(r.dir); err != nil {
		return fmt.Errorf("releasing the adopted task's steps: %w", err)
	}
	return nil
}

// halt asks the toolbox to stop, then stops the containers.
func (r *runner) halt(ctx context.Context) {
	if err := toolbox.Stop(r.dir); errors.Is(err, toolbox.ErrRefused) {
		r.refused = err // the containers are stopped all the same
	} else if err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "asking the toolbox to stop", "executorTask", r.name)
	}
	go func() {
		if err := r.e.driver.Stop(ctx, r.uid(), r.e.opts.StopGrace); err != nil && ctx.Err() == nil {
			ctrl.LoggerFrom(ctx).Error(err, "stopping task", "executorTask", r.name)
		}
	}()
}

// end writes the final status from the steps' results and the container's exit, then removes the
// containers (logs and archives stay in the task's directory until the manager fetched them).
func (r *runner) end(ctx context.Context, st *State, waitErr error, stopped, timedOut bool) error {
	phase, msg, steps, err := r.outcome(st, waitErr, stopped, timedOut)
	if err != nil {
		return err
	}
	if err := r.e.finish(ctx, r.et, phase, msg, steps); err != nil {
		return err
	}
	r.ended.Store(true)
	ctrl.LoggerFrom(ctx).Info("task ended", "executorTask", r.name, "phase", phase, "message", msg)
	if er, ok := r.e.driver.(EndedRemover); ok {
		return er.RemoveEnded(ctx, r.uid())
	}
	return r.e.driver.Remove(ctx, r.uid())
}

// outcome decides the task's final phase, message and steps from what its directory holds and how
// its container ended.
func (r *runner) outcome(st *State, waitErr error, stopped, timedOut bool) (rsv1.TaskPhase, string, []rsv1.StepStatus, error) {
	steps := r.steps()
	refused := r.refusal(steps)
	phase, msg := rsv1.TaskPhaseSuccess, ""
	// The step that was cut short: still Running (the container was killed), or Stopped by a
	// signal the executor did not send (the daemon stopping, someone's docker stop).
	running := -1
	for i, s := range steps {
		if s.Phase == rsv1.StepPhaseRunning || s.Phase == rsv1.StepPhaseStopped {
			running = i
		}
	}
	failedStep := func() string {
		for i, s := range steps {
			if s.Phase == rsv1.StepPhaseFailed {
				res, _ := toolbox.ReadResult(r.dir, i)
				m := fmt.Sprintf("step %q failed", s.Name)
				if s.ExitCode != nil {
					m += fmt.Sprintf(" with exit code %d", *s.ExitCode)
				}
				if res != nil && res.Message != "" {
					m += ": " + res.Message
				}
				return m
			}
		}
		return ""
	}
	now := metav1.Now()
	endRunning := func(p rsv1.StepPhase) {
		if running >= 0 {
			steps[running].Phase = p
			steps[running].EndTime = &now
		}
	}
	switch {
	case errors.Is(waitErr, ErrNotFound) && stopped:
		// Stopped before it ran anywhere (a pod not yet on a node is simply removed).
		phase, msg = rsv1.TaskPhaseStopped, "stopped"
		endRunning(rsv1.StepPhaseStopped)
	case errors.Is(waitErr, ErrNotFound):
		phase, msg = rsv1.TaskPhaseFailed, "container lost: the task's container disappeared while it ran"
		endRunning(rsv1.StepPhaseFailed)
	case waitErr != nil:
		return "", "", nil, waitErr
	case refused != "":
		// Whatever its steps said: the task tampered with what the executor reads and keeps.
		phase, msg = rsv1.TaskPhaseFailed, refused
		endRunning(rsv1.StepPhaseFailed)
	case timedOut:
		phase, msg = rsv1.TaskPhaseFailed, fmt.Sprintf("timed out after %ds", *r.et.Spec.Task.TimeoutSeconds)
		endRunning(rsv1.StepPhaseFailed)
	case stopped:
		phase, msg = rsv1.TaskPhaseStopped, "stopped"
		endRunning(rsv1.StepPhaseStopped)
	case failedStep() != "":
		phase, msg = rsv1.TaskPhaseFailed, failedStep()
	case st.ExitCode < 0 && st.Message != "":
		// The main container never ran (its image, its pod): the driver says why.
		phase, msg = rsv1.TaskPhaseFailed, st.Message
	case st.ExitCode != 0 || running >= 0 || st.Message != "":
		phase = rsv1.TaskPhaseFailed
		msg = fmt.Sprintf("the task's container exited with code %d", st.ExitCode)
		if running >= 0 {
			msg = fmt.Sprintf("the task's container was stopped or killed from outside the executor (exit code %d) while step %q ran", st.ExitCode, steps[running].Name)
		}
		if st.Message != "" {
			msg += ": " + st.Message
		} else if st.ExitCode == toolbox.ExitSetup {
			msg += ": the toolbox could not set the task up (see the container's log)"
		}
		endRunning(rsv1.StepPhaseFailed)
	}
	if m := r.failUnarrivedSaves(steps); m != "" && phase == rsv1.TaskPhaseSuccess {
		phase, msg = rsv1.TaskPhaseFailed, m
	}
	return phase, msg, steps, nil
}

// failUnarrivedSaves turns Failed the save steps reported Success whose archive is not in the task's
// directory, and describes the first. A streaming driver's copy drops an archive that did not arrive
// whole (the pod's log cut short, the mirror timed out): its step saved nothing the manager can
// fetch, and a descendant must not restore a workspace without it.
func (r *runner) failUnarrivedSaves(steps []rsv1.StepStatus) string {
	msg := ""
	for i, s := range r.et.Spec.Task.Steps {
		if s.SaveToWorkspace == nil || i >= len(steps) || steps[i].Phase != rsv1.StepPhaseSuccess {
			continue
		}
		if toolbox.CheckFile(r.dir, toolbox.ArchiveFile(i), i, "archive", r.e.opts.Limits.Archive) == nil {
			continue
		}
		steps[i].Phase = rsv1.StepPhaseFailed
		if msg == "" {
			msg = fmt.Sprintf("step %d (%s) reported Success, but its workspace archive did not arrive whole at the executor", i, steps[i].Name)
		}
	}
	return msg
}

// refusal says why the executor refused the task's files, or "" (see toolbox.OpenFile).
func (r *runner) refusal(steps []rsv1.StepStatus) string {
	names := make([]string, len(steps))
	for i, s := range steps {
		names[i] = s.Name
	}
	err := r.refused
	if err == nil {
		err = toolbox.Audit(r.dir, names, r.e.opts.Limits)
	}
	var re *toolbox.RefusedError
	if errors.As(err, &re) {
		return re.Explain(names)
	}
	return ""
}

// report writes the task's progress: Running, with its start time and steps, once it has run for
// RunningStatusDelay (a task that ends sooner gets only its final status, which carries them),
// then its steps whenever they changed.
//
// The runner calls it once the main container has run for the delay, then every lookEvery to
// quietLookEvery while it runs, so it looks at what it needs only: whether the steps' directory
// changed since it last looked; the steps' results are read only when they may differ from what
// was recorded.
func (r *runner) report(ctx context.Context) error {
	recorded := r.et.Status.Phase == rsv1.TaskPhaseRunning
	if !recorded && !r.runFor(r.e.opts.RunningStatusDelay) {
		return nil
	}
	if recorded && !r.stepsLook.changed(r.dir) {
		r.stepsLook.every = min(2*max(r.stepsLook.every, lookEvery), quietLookEvery)
		return nil
	}
	r.stepsLook.every = lookEvery
	steps := r.steps()
	if recorded && equality.Semantic.DeepEqual(steps, r.et.Status.Steps) {
		return nil
	}
	start := r.et.Status.StartTime
	err := r.e.updateStatus(ctx, r.et, func(st *rsv1.ExecutorTaskStatus) {
		if st.Phase.IsFinal() {
			return
		}
		st.Phase = rsv1.TaskPhaseRunning
		if st.StartTime == nil {
			st.StartTime = start
		}
		st.Steps = steps
	})
	if err != nil {
		r.stepsLook = dirLook{} // what this look saw is not recorded: the next one reads the steps again
	}
	return err
}

// runFor says whether the task's main container has run for d, counted from when the runner first
// saw it started (the executor's clock: a node's may differ). A task waiting for a node or an image
// is not Running yet, however long it waits.
func (r *runner) runFor(d time.Duration) bool {
	return !r.startedSeen.IsZero() && time.Since(r.startedSeen) >= d
}

// dirLook tells whether the steps' directory may have changed since the last look, from its
// modification time: the toolbox and the mirror write each step's result by a rename into it
// (toolbox.writeFileAtomic), which sets that time. A change within racyLook of a look may leave the
// time as it was (the file system's clock is coarse), so a directory changed that recently counts as
// changed until a look comes later than racyLook after its time, as git treats a racily clean index
// entry. Anything but a directory counts as changed: reading the steps says what is wrong.
//
// every is when the runner looks next: lookEvery, doubling up to quietLookEvery while a Running
// task's steps stay as they were (a step's progress is then shown up to that late), so that a
// thousand long tasks in flight do not wake the executor two thousand times a second.
type dirLook struct {
	mtime, at time.Time // the directory's time at the last look, and when that look was
	every     time.Duration
}

const (
	racyLook       = time.Second
	lookEvery      = 500 * time.Millisecond
	quietLookEvery = 2 * time.Second
)

func (l *dirLook) changed(dir string) bool {
	now := time.Now()
	fi, err := os.Lstat(filepath.Join(dir, toolbox.StepsDir))
	if err != nil || !fi.IsDir() {
		*l = dirLook{}
		return true
	}
	same := !l.at.IsZero() && fi.ModTime().Equal(l.mtime) && l.at.Sub(l.mtime) > racyLook
	l.mtime, l.at = fi.ModTime(), now
	return !same
}

// steps reads the steps' results from the task's directory.
func (r *runner) steps() []rsv1.StepStatus {
	steps := initialSteps(r.et)
	for i := range steps {
		res, err := toolbox.ReadResult(r.dir, i)
		if err != nil {
			continue
		}
		steps[i].Phase = res.Phase
		steps[i].ExitCode = res.ExitCode
		start := metav1.NewTime(res.StartTime)
		steps[i].StartTime = &start
		if !res.EndTime.IsZero() {
			end := metav1.NewTime(res.EndTime)
			steps[i].EndTime = &end
		}
	}
	return steps
}

// labels go on every container of the task, so that a restarted executor finds them again.
func (r *runner) labels() map[string]string {
	return map[string]string{
		rsv1.LabelExecutor:        r.e.opts.Name,
		rsv1.LabelRun:             r.et.Labels[rsv1.LabelRun],
		rsv1.LabelTask:            r.et.Spec.TaskName,
		rsv1.LabelExecutorTaskUID: r.uid(),
	}
}

// env is the main container's environment: the run's, then the container's.
func (r *runner) env() []string {
	var env []string
	for _, e := range r.et.Spec.Environment {
		env = append(env, e.Name+"="+e.Value)
	}
	for _, e := range r.et.Spec.Task.Containers[0].Env {
		env = append(env, e.Name+"="+e.Value)
	}
	return env
}

// prepare writes the task's directory: task.json and the parents' workspace archives.
func (r *runner) prepare(ctx context.Context) error {
	tf := &toolbox.TaskFile{Steps: toolbox.StepsFromTask(&r.et.Spec.Task), WorkspaceSources: r.et.Spec.WorkspaceSources}
	if r.et.Spec.Task.WorkingDir != nil {
		tf.WorkingDir = *r.et.Spec.Task.WorkingDir
	}
	if err := toolbox.WriteTaskFile(r.dir, tf); err != nil {
		return err
	}
	if !needsWorkspace(tf) || len(tf.WorkspaceSources) == 0 {
		return nil
	}
	if r.e.store == nil {
		return errors.New("the task restores a workspace but the executor has no object store configured")
	}
	for _, src := range tf.WorkspaceSources {
		if err := r.downloadWorkspace(ctx, src); err != nil {
			return err
		}
	}
	return nil
}

// downloadWorkspace downloads the archives a workspace source saved: exactly those its ExecutorTask
// reports saved, so that one missing from the object store fails the task, naming it, rather than
// restoring a workspace with a hole (the manager does not schedule such a task; this is the
// defense in depth). A source without an ExecutorTask (skipped, or deleted since) tells nothing of
// what it saved: what its prefix lists is taken, under this run's uid, so never another run's. A
// source that is another run's ExecutorTask is refused: its workspace is not this run's to restore,
// unless the manager named it in spec.keptSources (a task a restart kept from the run it restarts).
func (r *runner) downloadWorkspace(ctx context.Context, src string) error {
	if i := slices.IndexFunc(r.et.Spec.KeptSources, func(k rsv1.KeptWorkspaceSource) bool { return k.ExecutorTask == src }); i >= 0 {
		return r.downloadKept(ctx, &r.et.Spec.KeptSources[i])
	}
	parent := &rsv1.ExecutorTask{}
	err := r.e.reader.Get(ctx, types.NamespacedName{Namespace: r.et.Namespace, Name: src}, parent)
	if apierrors.IsNotFound(err) {
		return r.downloadListed(ctx, objectstore.TaskOf(r.et).Sibling(src))
	}
	if err != nil {
		return fmt.Errorf("reading workspace source %s: %w", src, err)
	}
	if !sameRun(parent, r.et) {
		return fmt.Errorf("workspace source %s is an ExecutorTask of run %q, not of this task's run %q: refused", src, parent.Spec.RunName, r.et.Spec.RunName)
	}
	// The parent's own layout: one scheduled before run uids were recorded kept its data by run name.
	stored := objectstore.TaskOf(parent)
	for _, i := range parent.SavedArchives() {
		err := r.download(ctx, stored.ArchiveKey(i), toolbox.WorkspaceArchivePath(r.dir, src, i))
		if errors.Is(err, objectstore.ErrNotFound) {
			return fmt.Errorf("workspace of task %q step %d (%s) is missing from the object store", parent.Spec.TaskName, i, parent.Status.Steps[i].Name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// downloadKept downloads the archives of a source a restart kept: an ExecutorTask of the run it
// restarts, which the manager named with that run (ExecutorTask specs are the manager's alone), its
// archives kept under that run's uid.
func (r *runner) downloadKept(ctx context.Context, k *rsv1.KeptWorkspaceSource) error {
	stored := objectstore.Task{Namespace: r.et.Namespace, Run: k.Run.Name, RunUID: string(k.Run.UID), ExecutorTask: k.ExecutorTask}
	for _, i := range k.Archives {
		err := r.download(ctx, stored.ArchiveKey(int(i)), toolbox.WorkspaceArchivePath(r.dir, k.ExecutorTask, int(i)))
		if errors.Is(err, objectstore.ErrNotFound) {
			return fmt.Errorf("workspace of %s step %d, kept from run %s, is missing from the object store (removed by the archive's retention?)", k.ExecutorTask, i, k.Run.Name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// sameRun says whether two ExecutorTasks are of the same run: the same controlling Run uid, which
// only the manager writes (executors may not change an ExecutorTask's metadata).
func sameRun(a, b *rsv1.ExecutorTask) bool {
	ra, rb := metav1.GetControllerOf(a), metav1.GetControllerOf(b)
	return ra != nil && rb != nil && ra.UID == rb.UID
}

// downloadListed downloads the archives listed under a workspace source's prefix.
func (r *runner) downloadListed(ctx context.Context, src objectstore.Task) error {
	prefix := src.Prefix() + "archives/"
	keys, err := r.e.store.List(ctx, prefix)
	if err != nil {
		return err
	}
	for _, key := range keys {
		i, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(key, prefix), ".tar"))
		if err != nil {
			continue
		}
		if err := r.download(ctx, key, toolbox.WorkspaceArchivePath(r.dir, src.ExecutorTask, i)); err != nil {
			return err
		}
	}
	return nil
}

func needsWorkspace(tf *toolbox.TaskFile) bool {
	for _, s := range tf.Steps {
		if s.Kind == toolbox.StepKindRestoreWorkspace {
			return true
		}
	}
	return false
}

func (r *runner) download(ctx context.Context, key, path string) error {
	rc, err := r.e.store.Get(ctx, key)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, rc); err != nil {
		_ = f.Close()
		return fmt.Errorf("downloading %s: %w", key, err)
	}
	return f.Close()
}
