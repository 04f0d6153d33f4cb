package v1alpha1

import (
	"fmt"
	"time"
)

// Well-known labels, annotations and finalizers.
const (
	// LabelRun names the Run an ExecutorTask (and its containers or pods) belongs to (hashed when
	// longer than a label value may be). Runs deleted and created again share it: select by
	// LabelRunUID to get one run's tasks exactly.
	LabelRun = "runservice.dev/run"
	// LabelRunUID is the uid of the Run an ExecutorTask belongs to.
	LabelRunUID = "runservice.dev/run-uid"
	// LabelTask names the task of the Run.
	LabelTask = "runservice.dev/task"
	// LabelExecutor names the Executor a task was scheduled on.
	LabelExecutor = "runservice.dev/executor"
	// LabelExecutorTaskUID carries the uid of the ExecutorTask on containers and pods.
	LabelExecutorTaskUID = "runservice.dev/executortask-uid"
	// LabelExecutorGroup names the group on the Leases of dynamic executors, so that a member reads
	// its siblings' Leases in one list.
	LabelExecutorGroup = "runservice.dev/executor-group"

	// LabelShard names the manager replica (a member of the shard ring, see internal/shard) that
	// owns a Run, and is copied to the Run's ExecutorTasks: each replica caches and reconciles only
	// the objects labelled with its name. `kubectl get runs -L runservice.dev/shard` shows who owns
	// what.
	LabelShard = "runservice.dev/shard"
	// LabelShardDrain on a Run asks the replica named by LabelShard to let the run go: it stops
	// acting on it and removes both labels, after which the run is assigned to its new owner.
	LabelShardDrain = "runservice.dev/shard-drain"

	// AnnotationUpdateToken carries a change-group update token on a mutating Run request.
	AnnotationUpdateToken = "runservice.dev/changegroups-update-token"

	// AnnotationFetched was set on an ExecutorTask by managers before the run's
	// status.tasks[].fetched (same values) recorded a fetch: it is still read, on ExecutorTasks
	// fetched before an upgrade (RunStatus.Fetched; an executor drops its copy of a task that has
	// it), and no longer written.
	AnnotationFetched = "runservice.dev/fetched"
	// FetchedLost: the task's executor was gone (or had no endpoint) before the fetch, so none of
	// the task's logs and archives are stored.
	FetchedLost = "lost"
	// FetchedArchivesMissing starts "archives-missing:<i>[,<j>...]": the logs are stored, but the
	// executor had no archive for these successful saveToWorkspace steps.
	FetchedArchivesMissing = "archives-missing:"

	// ExecutorTokenSecret is the Secret of a namespace holding, under ExecutorTokenKey, the bearer
	// token that guards its executors' HTTP endpoints (logs and archives: the manager and runctl),
	// and under ExecutorTaskKeyKey the key of the per-task credentials that let a task's pod
	// fetch its own workspace and nothing else. Executors re-read it when a request's token does
	// not match, so a rotated token works without restarts.
	ExecutorTokenSecret = "runservice-executor-token"
	ExecutorTokenKey    = "token"
	ExecutorTaskKeyKey  = "task-key"

	// ExecutorCASecret is the Secret of a namespace holding the CA its executors' serving
	// certificates are signed by (ca.crt, and ca-previous.crt while a renewed CA's predecessor is
	// valid): the manager, runctl and task pods trust it for that namespace's executors only.
	ExecutorCASecret = "runservice-executor-ca"

	// FinalizerChangeGroupLedger keeps a Run that is in change groups until the groups' ledgers
	// no longer count it.
	FinalizerChangeGroupLedger = "runservice.dev/changegroup-ledger"

	// LabelRestartedFrom names, on a Run that restarts another (spec.restartFrom), the restarted
	// run; set at admission, so `-l runservice.dev/restarted-from=NAME` lists a run's restarts.
	LabelRestartedFrom = "runservice.dev/restarted-from"

	// AnnotationArchiveAfter on a Run overrides the manager's --archive-after for it: a duration
	// (e.g. "0s", "30m", "168h") after its end when it is archived.
	AnnotationArchiveAfter = "runservice.dev/archive-after"

	// FinalizerArchive keeps a Run in etcd until the archiver has written it (its document and
	// index entry) into the object store. A run deleted before it ended is stopped first, then
	// archived; a user who wants a run gone without its archive removes the finalizer.
	FinalizerArchive = "runservice.dev/archive"

	// FinalizerExecutorTasks keeps a deleted Executor until its tasks' containers or pods are known
	// gone: the executor itself (or, for a dead member of a group, the sibling cleaning up after it)
	// removes them, confirms it, and only then releases it. Only then does the manager fail the
	// executor's unfinished tasks with ExecutorRemoved, so that a run never moves on while a task of
	// it may still run.
	FinalizerExecutorTasks = "runservice.dev/executor-tasks"

	// AnnotationForceRemove set to "true" on an Executor being deleted makes the manager release
	// FinalizerExecutorTasks without the executor's confirmation: for a host that will never come
	// back. Whoever sets it takes responsibility that the executor's containers are gone; the
	// manager records a Warning Event saying so.
	AnnotationForceRemove = "runservice.dev/force-remove"
	// AnnotationActiveTasks on an executor's Lease is the number of its active ExecutorTasks as the
	// executor counts them, written with each renewal: what a sharded manager's leader reports as
	// the Executor's status.activeTasks, since its own cache holds only its shard's tasks.
	AnnotationActiveTasks = "runservice.dev/active-tasks"

	// LeaseHolderCleanupPrefix starts the holder identity of a dead executor's Lease while a sibling
	// of its group removes what it left ("cleanup-by-<sibling>").
	LeaseHolderCleanupPrefix = "cleanup-by-"

	// ConditionReady is the Ready condition type of Executors and Runs' readiness to schedule.
	ConditionReady = "Ready"
)

// EnvVar is an environment variable given to a task's containers.
type EnvVar struct {
	// name of the variable.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_]*$`
	Name string `json:"name"`

	// value of the variable.
	// +optional
	// +kubebuilder:validation:MaxLength=32768
	Value string `json:"value,omitempty"`
}

// ParseArchiveAfter parses an AnnotationArchiveAfter value: nil when it is empty.
func ParseArchiveAfter(v string) (*time.Duration, error) {
	if v == "" {
		return nil, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return nil, fmt.Errorf("not a duration (e.g. 0s, 30m, 168h): %q", v)
	}
	if d < 0 {
		return nil, fmt.Errorf("must not be negative: %q", v)
	}
	return &d, nil
}
