package executor

import (
	"context"
	"errors"
	"time"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor/toolbox"
)

// Driver runs the containers of tasks on one container runtime. The executor owns the task's life
// (at most once, status, timeouts); a driver only creates, follows, stops and removes containers,
// found again by the labels it puts on them.
type Driver interface {
	// Archs are the architectures (GOARCH names) the runtime runs.
	Archs(ctx context.Context) ([]string, error)
	// Start creates and starts the task's containers. Their names are deterministic per task, so
	// that a create finds them if they exist: then Start returns an error wrapping ErrExists (an
	// earlier process of the executor started them) and changes nothing.
	Start(ctx context.Context, t *Task) error
	// Inspect returns the state of the task's main container; ErrNotFound when it does not exist.
	Inspect(ctx context.Context, uid string) (*State, error)
	// Wait blocks until the task's main container is no longer running.
	Wait(ctx context.Context, uid string) (*State, error)
	// Stop stops the task's containers, killing them after grace.
	Stop(ctx context.Context, uid string, grace time.Duration) error
	// Remove removes the task's containers.
	Remove(ctx context.Context, uid string) error
	// Tasks lists the uids of the ExecutorTasks that have containers here.
	Tasks(ctx context.Context) ([]string, error)
}

// ErrNotFound says that a task has no containers.
var ErrNotFound = errors.New("task containers not found")

// ErrExists says that a task's containers exist already.
var ErrExists = errors.New("task containers exist already")

// Task is what a driver needs to start a task.
type Task struct {
	// ExecutorTask is the task to run.
	ExecutorTask *rsv1.ExecutorTask
	// Dir is the host directory shared with the toolbox, mounted at toolbox.DefaultDir.
	Dir string
	// Toolbox is the host path of the toolbox binary, mounted at toolbox.DefaultDir/toolbox.
	Toolbox string
	// Labels go on every container of the task.
	Labels map[string]string
	// Env is the main container's environment: the run's, then the task container's.
	Env []string
	// Builtin is what the executor adds after Env (RUNSERVICE_RUN, RUNSERVICE_TASK): not the user's.
	Builtin []string
	// WorkspaceCredential lets the task's pod fetch its own workspace from the executor, and
	// nothing else (drivers without a shared directory); WorkspaceCA is what the pod trusts for
	// the executor's https endpoint (nil: plain http).
	WorkspaceCredential string
	WorkspaceCA         []byte
	// Started is called once the containers run, so the toolbox may begin.
	Started func() error
}

// State is the state of a task's main container.
type State struct {
	Running bool
	// Started says that the main container has started (it runs, or ran): a task waiting for a node
	// or an image has not.
	Started  bool
	ExitCode int
	// Message says what went wrong with the container itself (OOM killed, runtime error).
	Message string
}

// GroupRemover is implemented by drivers whose executors form a group: RemoveExecutor removes
// every container of another executor of the group, and returns once they are gone.
type GroupRemover interface {
	RemoveExecutor(ctx context.Context, name string) error
}

// EndedRemover is implemented by drivers that remove the containers of ended tasks more cheaply
// together than one by one: RemoveEnded removes a task's containers once its final status is
// written, waiting a moment for other tasks' to remove them in one request, and returns once they
// are removed (or ctx ends). Remove stays what callers that remove many tasks in a row use.
type EndedRemover interface {
	RemoveEnded(ctx context.Context, uid string) error
}

// Follower is implemented by drivers whose containers share no directory with the executor, and
// whose containers' changes come as events: the runner follows its task on its own goroutine,
// woken by them (issue 10: a goroutine blocked in Wait and another following the log beside each
// runner, and ticks that looked at every task twice a second, waiting for a node or not, made the
// executor's memory and CPU per task grow with the tasks in flight). Follow begins following task
// uid: it copies the toolbox's reports of a task of steps steps into dir while it runs, within lim.
type Follower interface {
	Follow(ctx context.Context, uid, dir string, steps int, lim toolbox.Limits) Following
}

// Following is one task a runner follows (Follower). Its methods are called from that runner's
// goroutine only.
type Following interface {
	// Changed receives when the task's containers changed, or its copy moved on: time to Look.
	Changed() <-chan struct{}
	// Look looks at the task's main container and moves the copy of its reports on, waiting on
	// nothing but local files. An error wrapping ErrNotFound says the containers are gone; any
	// other is taken for a moment's (the runner looks again after a backoff).
	Look(ctx context.Context) (Seen, error)
	// Cut ends the copy of a task whose main container ended, when the runner waits no longer for
	// it (copyWait), or whose containers are gone: a read under way is stopped and waited for, so that nothing writes the task's
	// directory once its final status is written, and what else the container's end reported
	// (a termination message) fills in what the copy did not bring. It returns what the copy
	// could not do, as Seen.Copied.
	Cut() error
	// Close ends the following: a copy under way is cut.
	Close()
}

// Seen is what a look of a Following saw.
type Seen struct {
	// State is the main container's.
	State *State
	// Done says that the container ended and everything it reported is in the task's directory.
	Done bool
	// Copied, once Done, says what the copy could not do; wrapping toolbox.ErrRefused, what the
	// task reported past its steps or its bounds (and was dropped).
	Copied error
	// At is when to look again by at the latest (zero: at the next Changed only).
	At time.Time
	// Quiet says that nothing writes the task's directory until the next Changed (no copy is
	// under way): once looked at, its steps need no look meanwhile.
	Quiet bool
}
