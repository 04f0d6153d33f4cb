package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// DependCondition says which final phase of a parent task lets a child task run.
// +kubebuilder:validation:Enum=OnSuccess;OnFailure;OnSkipped
type DependCondition string

const (
	DependOnSuccess DependCondition = "OnSuccess"
	DependOnFailure DependCondition = "OnFailure"
	DependOnSkipped DependCondition = "OnSkipped"
)

// RunSpec is what a client submits: a DAG of tasks. Its schema has no CEL rule (the apiserver would
// evaluate them on every write of the run, status included): the Run webhook refuses the changes the
// fields marked immutable may not have, and the steps and resources a Task may not (dag.Validate).
type RunSpec struct {
	// changeGroups are the ChangeGroups of the run's namespace the run belongs to; a group that does
	// not exist yet is created on first use. Immutable.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	ChangeGroups []string `json:"changeGroups,omitempty"`

	// suspend keeps the run Queued until a client sets it to false.
	// +optional
	Suspend *bool `json:"suspend,omitempty"`

	// stop stops the run: running tasks are stopped, tasks not started are cancelled, and the run's
	// result is Stopped. It cannot be undone.
	// +optional
	Stop *bool `json:"stop,omitempty"`

	// approvedTasks approves the tasks, named here, that have needsApproval.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=63
	ApprovedTasks []string `json:"approvedTasks,omitempty"`

	// environment is given to every task, before the task's and the step's own.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=128
	Environment []EnvVar `json:"environment,omitempty"`

	// tasks are the nodes of the run's graph. Immutable; their names are unique (checked at
	// admission).
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	Tasks []Task `json:"tasks"`
	// restartFrom makes the run a restart of an earlier run of the namespace that has ended (live
	// or archived). The run's own tasks are its graph, usually the restarted run's. Immutable.
	// +optional
	RestartFrom *RunRestart `json:"restartFrom,omitempty"`
}

// RunRestart names the run a run restarts.
type RunRestart struct {
	// run is the name of the restarted run, in the run's namespace. It must have ended.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Run string `json:"run"`
	// uid of the restarted run. Admission sets it, when it is empty, to the uid of the run of that
	// name: the live one, else the newest archived one.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=36
	UID types.UID `json:"uid,omitempty"`
	// failedTasksOnly keeps what succeeded: a task that ended Success in the restarted run, with the
	// same definition and all its ancestors kept too, is not executed again. It is Success with the
	// restarted run's times, executor and logs, and its saved workspace serves its children. Every
	// other task runs again. False restarts from scratch: the whole graph runs again.
	// +optional
	FailedTasksOnly bool `json:"failedTasksOnly,omitempty"`
}

// RunReference names a run of the same namespace, by name and uid.
type RunReference struct {
	// name of the run.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// uid of the run.
	// +required
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=36
	UID types.UID `json:"uid"`
}

// Task is one node of a run's graph.
type Task struct {
	// name of the task, unique in the run.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// containers of the task: the first runs the steps, the others are services sharing its network.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	Containers []Container `json:"containers"`

	// arch the task needs (GOARCH names, like amd64 or arm64).
	// +optional
	// +kubebuilder:validation:Enum=386;amd64;arm;arm64;ppc64le;s390x;riscv64
	Arch *string `json:"arch,omitempty"`

	// executorSelector selects, by their labels, the Executors the task may run on.
	// +optional
	ExecutorSelector *metav1.LabelSelector `json:"executorSelector,omitempty"`

	// workingDir of the steps; defaults to the image's.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	WorkingDir *string `json:"workingDir,omitempty"`

	// timeoutSeconds bounds the task's run time; the task fails when it is exceeded.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=604800
	TimeoutSeconds *int64 `json:"timeoutSeconds,omitempty"`

	// ignoreFailure keeps a failure of this task from failing the run.
	// +optional
	IgnoreFailure *bool `json:"ignoreFailure,omitempty"`

	// needsApproval holds the task, once its parents allow it to run, until its name is in
	// spec.approvedTasks.
	// +optional
	NeedsApproval *bool `json:"needsApproval,omitempty"`

	// depends lists the parent tasks and the conditions under which this task runs.
	// +optional
	// +listType=map
	// +listMapKey=task
	// +kubebuilder:validation:MaxItems=256
	Depends []TaskDependency `json:"depends,omitempty"`

	// steps run in order in the first container.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	Steps []Step `json:"steps"`
}

// IsIgnoreFailure reports whether a failure of the task leaves the run's result alone.
func (t *Task) IsIgnoreFailure() bool { return t.IgnoreFailure != nil && *t.IgnoreFailure }

// IsNeedsApproval reports whether the task waits for approval.
func (t *Task) IsNeedsApproval() bool { return t.NeedsApproval != nil && *t.NeedsApproval }

// Container is an image a task runs.
type Container struct {
	// image to run, as the executor's container runtime names it.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=512
	Image string `json:"image"`

	// command overrides the image's entrypoint; only for service containers (the first container
	// runs the steps).
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Command []string `json:"command,omitempty"`

	// env of the container, after the run's and the task's environment.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=128
	Env []EnvVar `json:"env,omitempty"`

	// user (name or uid[:gid]) the container runs as.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	User *string `json:"user,omitempty"`

	// privileged asks for a privileged container; only executors that allow it accept the task.
	// +optional
	Privileged *bool `json:"privileged,omitempty"`

	// resources are the container's compute resources (cpu, memory): requests and limits of the pod's
	// container with the Kubernetes driver, limits of the container with the Docker driver.
	// +optional
	Resources *ContainerResources `json:"resources,omitempty"`
}

// ContainerResources are a container's compute resources.
type ContainerResources struct {
	// requests are what the container is guaranteed.
	// +optional
	// +kubebuilder:validation:MaxProperties=2
	Requests corev1.ResourceList `json:"requests,omitempty"`

	// limits are the most the container may use.
	// +optional
	// +kubebuilder:validation:MaxProperties=2
	Limits corev1.ResourceList `json:"limits,omitempty"`
}

// IsPrivileged reports whether the container asks to be privileged.
func (c *Container) IsPrivileged() bool { return c.Privileged != nil && *c.Privileged }

// TaskDependency is an edge from a parent task.
type TaskDependency struct {
	// task is the name of the parent task.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Task string `json:"task"`

	// conditions under which the child runs: any one matching the parent's final phase is enough.
	// Defaults to [OnSuccess]. A parent matching none makes the child Skipped.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=3
	Conditions []DependCondition `json:"conditions,omitempty"`
}

// Step is one step of a task: exactly one of its fields is set (dag.Validate).
type Step struct {
	// run runs a command.
	// +optional
	Run *RunStep `json:"run,omitempty"`

	// saveToWorkspace archives paths for the tasks that depend on this one.
	// +optional
	SaveToWorkspace *SaveToWorkspaceStep `json:"saveToWorkspace,omitempty"`

	// restoreWorkspace restores the archives of the parent tasks.
	// +optional
	RestoreWorkspace *RestoreWorkspaceStep `json:"restoreWorkspace,omitempty"`
}

// Kinds are the names of the step's fields that are set: exactly one for a valid step.
func (s *Step) Kinds() []string {
	var kinds []string
	if s.Run != nil {
		kinds = append(kinds, "run")
	}
	if s.SaveToWorkspace != nil {
		kinds = append(kinds, "saveToWorkspace")
	}
	if s.RestoreWorkspace != nil {
		kinds = append(kinds, "restoreWorkspace")
	}
	return kinds
}

// RunStep runs a command with a shell.
type RunStep struct {
	// name of the step, shown in status and logs.
	// +optional
	// +kubebuilder:validation:MaxLength=128
	Name *string `json:"name,omitempty"`

	// command run by the shell.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=65536
	Command string `json:"command"`

	// shell that runs the command; defaults to /bin/sh -e.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Shell *string `json:"shell,omitempty"`

	// env of the step, after the run's, the task's and the container's.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=128
	Env []EnvVar `json:"env,omitempty"`
}

// SaveToWorkspaceStep archives files for the child tasks.
type SaveToWorkspaceStep struct {
	// contents to archive.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	Contents []SaveContent `json:"contents"`
}

// SaveContent selects files to archive.
type SaveContent struct {
	// sourceDir the paths are relative to.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	SourceDir string `json:"sourceDir"`

	// destDir, relative to the workspace root, where the files land.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	DestDir string `json:"destDir"`

	// paths are glob patterns relative to sourceDir.
	// +required
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=4096
	Paths []string `json:"paths"`
}

// RestoreWorkspaceStep restores the parent tasks' archives.
type RestoreWorkspaceStep struct {
	// destDir where the workspace is restored.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	DestDir string `json:"destDir"`
}

// RunPhase is where a run is in its life.
// +kubebuilder:validation:Enum=Queued;Running;Finished;SetupError;Cancelled
type RunPhase string

const (
	RunPhaseQueued     RunPhase = "Queued"
	RunPhaseRunning    RunPhase = "Running"
	RunPhaseFinished   RunPhase = "Finished"
	RunPhaseSetupError RunPhase = "SetupError"
	RunPhaseCancelled  RunPhase = "Cancelled"
)

// IsFinal reports whether the run will not change any more.
func (p RunPhase) IsFinal() bool {
	return p == RunPhaseFinished || p == RunPhaseSetupError || p == RunPhaseCancelled
}

// RunResult is the outcome of a run; it can be known before the run is Finished.
// +kubebuilder:validation:Enum=Unknown;Success;Failed;Stopped
type RunResult string

const (
	RunResultUnknown RunResult = "Unknown"
	RunResultSuccess RunResult = "Success"
	RunResultFailed  RunResult = "Failed"
	RunResultStopped RunResult = "Stopped"
)

// TaskPhase is where a task of a run is.
// +kubebuilder:validation:Enum=NotStarted;Skipped;Cancelled;Running;Stopped;Success;Failed
type TaskPhase string

const (
	TaskPhaseNotStarted TaskPhase = "NotStarted"
	TaskPhaseSkipped    TaskPhase = "Skipped"
	TaskPhaseCancelled  TaskPhase = "Cancelled"
	TaskPhaseRunning    TaskPhase = "Running"
	TaskPhaseStopped    TaskPhase = "Stopped"
	TaskPhaseSuccess    TaskPhase = "Success"
	TaskPhaseFailed     TaskPhase = "Failed"
)

// IsFinal reports whether a task in this phase will not change any more.
func (p TaskPhase) IsFinal() bool {
	switch p {
	case TaskPhaseSkipped, TaskPhaseCancelled, TaskPhaseStopped, TaskPhaseSuccess, TaskPhaseFailed:
		return true
	}
	return false
}

// Reasons recorded on task statuses and conditions.
const (
	ReasonExecutorRemoved   = "ExecutorRemoved"
	ReasonParentsNotMatched = "ParentsNotMatched"
	ReasonRunStopped        = "RunStopped"
	ReasonNoExecutor        = "NoExecutorAvailable"
	ReasonInvalidGraph      = "InvalidGraph"
	// ReasonWorkspaceMissing fails a task that restores a workspace one of whose archives will never
	// be in the object store (its executor left first, or did not have it): it never runs on an
	// empty workspace.
	ReasonWorkspaceMissing = "WorkspaceMissing"
	// ReasonExecutorTaskNameTaken fails a task whose ExecutorTask name is held by an ExecutorTask of
	// another run or another task: it is never adopted, and the task never runs on it.
	ReasonExecutorTaskNameTaken = "ExecutorTaskNameTaken"
	// ReasonRestartedRunGone ends a restart (spec.restartFrom) as SetupError when the run it
	// restarts is neither live nor archived any more: there is nothing to keep or restore from.
	ReasonRestartedRunGone = "RestartedRunGone"
)

// Reasons of the fetcher's events on ExecutorTasks.
const (
	// ReasonEndpointRefused: the executor's endpoint resolves to an address the manager may not
	// dial (loopback, link-local, ... not allowed by --executor-endpoint-allow).
	ReasonEndpointRefused = "EndpointRefused"
	// ReasonFetchFailed: fetching from the executor failed or timed out; it is tried again later.
	ReasonFetchFailed = "FetchFailed"
)

// RunStatus is what the manager observed of a run. Only the manager writes it, so it is one field
// for the run's managed fields (atomic), which the apiserver stores and recomputes at every write.
// +structType=atomic
type RunStatus struct {
	// phase of the run.
	// +optional
	Phase RunPhase `json:"phase,omitempty"`

	// result of the run; set as soon as it is known, possibly before the run is Finished.
	// +optional
	Result RunResult `json:"result,omitempty"`

	// progress is "done/total" tasks, for kubectl.
	// +optional
	Progress string `json:"progress,omitempty"`

	// queueTime is when the run was queued.
	// +optional
	QueueTime *metav1.Time `json:"queueTime,omitempty"`

	// startTime is when the run started.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// endTime is when the run finished.
	// +optional
	EndTime *metav1.Time `json:"endTime,omitempty"`

	// observedGeneration is the spec generation this status reflects.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions of the run.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// tasks has one entry per task of the spec.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=256
	Tasks []TaskStatus `json:"tasks,omitempty"`
	// restartedFrom is the run this run restarts (spec.restartFrom), as the manager found it.
	// +optional
	RestartedFrom *RunReference `json:"restartedFrom,omitempty"`
}

// TaskStatus is the state of one task of a run.
type TaskStatus struct {
	// name of the task.
	// +required
	Name string `json:"name"`

	// phase of the task.
	// +required
	Phase TaskPhase `json:"phase"`

	// waitingApproval is true while the task could run but waits for approval.
	// +optional
	WaitingApproval bool `json:"waitingApproval,omitempty"`

	// executor the task was scheduled on.
	// +optional
	Executor string `json:"executor,omitempty"`

	// executorTask is the name of the ExecutorTask that runs the task.
	// +optional
	ExecutorTask string `json:"executorTask,omitempty"`

	// startTime is when the task started running.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// endTime is when the task became final.
	// +optional
	EndTime *metav1.Time `json:"endTime,omitempty"`

	// reason is a CamelCase word for why the task is in its phase.
	// +optional
	Reason string `json:"reason,omitempty"`

	// message says, for people, why the task is in its phase.
	// +optional
	Message string `json:"message,omitempty"`

	// steps reported by the executor.
	// +optional
	// +listType=atomic
	Steps []StepStatus `json:"steps,omitempty"`
	// fromRun names the run whose result this task keeps: it was not executed again, and its
	// executor, executorTask, times and step logs are that run's. It is the restarted run
	// (status.restartedFrom), or, for a task that run had kept in turn, the run it first ran in.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	FromRun string `json:"fromRun,omitempty"`
	// fromRunUID is the uid of fromRun, under which its logs and workspace archives are kept.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=36
	FromRunUID types.UID `json:"fromRunUID,omitempty"`
	// fetched says that the manager is done copying the step logs and workspace archives of
	// executorTask from its executor into the object store: the time of a complete fetch, "lost"
	// (its executor was gone first: nothing stored), or "archives-missing:<i>[,<j>...]" (the logs
	// are stored, the executor had no archive for those saveToWorkspace steps). Only once this is
	// recorded does the manager tell the executor that its copy may go.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Fetched string `json:"fetched,omitempty"`
}

// Fetched is what s records of the fetch of ExecutorTask et ("" when nothing): the fetched field
// of the task et runs, or, for a task fetched by a manager from before that field, et's
// AnnotationFetched. A task a restart kept has no ExecutorTask of this run and is not et's.
func (s *RunStatus) Fetched(et *ExecutorTask) string {
	if v := s.RecordedFetch(et); v != "" {
		return v
	}
	return et.Annotations[AnnotationFetched]
}

// RecordedFetch is status.tasks[].fetched of the task ExecutorTask et runs, "" when none.
func (s *RunStatus) RecordedFetch(et *ExecutorTask) string {
	for i := range s.Tasks {
		if ts := &s.Tasks[i]; ts.Name == et.Spec.TaskName {
			if ts.ExecutorTask == et.Name && ts.FromRun == "" {
				return ts.Fetched
			}
			return ""
		}
	}
	return ""
}

// StepPhase is where a step is.
// +kubebuilder:validation:Enum=NotStarted;Running;Success;Failed;Stopped;Skipped
type StepPhase string

const (
	StepPhaseNotStarted StepPhase = "NotStarted"
	StepPhaseRunning    StepPhase = "Running"
	StepPhaseSuccess    StepPhase = "Success"
	StepPhaseFailed     StepPhase = "Failed"
	StepPhaseStopped    StepPhase = "Stopped"
	StepPhaseSkipped    StepPhase = "Skipped"
)

// StepStatus is the state of one step of a task.
type StepStatus struct {
	// name of the step.
	// +required
	Name string `json:"name"`

	// phase of the step.
	// +required
	Phase StepPhase `json:"phase"`

	// exitCode of the step's command, once it exited.
	// +optional
	ExitCode *int32 `json:"exitCode,omitempty"`

	// startTime of the step.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// endTime of the step.
	// +optional
	EndTime *metav1.Time `json:"endTime,omitempty"`

	// logKey is where the step's log is in the object store, once fetched.
	// +optional
	LogKey string `json:"logKey,omitempty"`
}

// Run is a graph of tasks to execute.
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=rn,categories=runservice
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Result",type=string,JSONPath=`.status.result`
// +kubebuilder:printcolumn:name="Tasks",type=string,JSONPath=`.status.progress`
// +kubebuilder:printcolumn:name="ChangeGroups",type=string,JSONPath=`.spec.changeGroups`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Started",type=date,JSONPath=`.status.startTime`,priority=1
// +kubebuilder:printcolumn:name="Ended",type=date,JSONPath=`.status.endTime`,priority=1
// +kubebuilder:printcolumn:name="Restarts",type=string,JSONPath=`.spec.restartFrom.run`,priority=1
type Run struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the run's graph.
	// +required
	Spec RunSpec `json:"spec"`

	// status is what the manager observed.
	// +optional
	Status RunStatus `json:"status,omitempty"`
}

// IsSuspended reports whether the run is held Queued.
func (r *Run) IsSuspended() bool { return r.Spec.Suspend != nil && *r.Spec.Suspend }

// IsStopped reports whether stop was asked.
func (r *Run) IsStopped() bool { return r.Spec.Stop != nil && *r.Spec.Stop }

// RunList is a list of Runs.
// +kubebuilder:object:root=true
type RunList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Run `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Run{}, &RunList{})
}
