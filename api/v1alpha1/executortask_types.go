package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ExecutorTaskSpec is one scheduled task, written by the manager. Only stop changes later.
// Everything but stop is immutable: an executor runs what was scheduled, and a task restores exactly the
// workspaces it was given (an optional list may not appear or disappear either). The admission policy
// of config/crd/executortask_policy.yaml says so on updates of the ExecutorTask itself, not in the
// schema, whose CEL rules the apiserver would evaluate on every status write too. It is one field
// for the objects' managed fields (atomic), as only the manager writes it.
// +structType=atomic
type ExecutorTaskSpec struct {
	// runName is the Run the task belongs to.
	// +required
	RunName string `json:"runName"`

	// runUID is the uid of the Run: where the task's logs and archives are kept, so that a run
	// created again under the same name never reads or overwrites an earlier one's. ExecutorTasks
	// scheduled before it was recorded have none; theirs are kept by run name.
	// +optional
	// +kubebuilder:validation:MaxLength=36
	RunUID string `json:"runUID,omitempty"`

	// taskName is the task of the Run.
	// +required
	TaskName string `json:"taskName"`

	// executor the task is scheduled on.
	// +required
	Executor string `json:"executor"`

	// executorUID is the uid of the Executor when the task was scheduled: an executor registered
	// anew under the same name does not own the task.
	// +required
	ExecutorUID string `json:"executorUID"`

	// task is the task's definition, copied from the Run.
	// +required
	Task Task `json:"task"`

	// environment is the run's environment.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=128
	Environment []EnvVar `json:"environment,omitempty"`

	// workspaceSources are the ExecutorTasks, parents first, whose workspace archives a
	// restoreWorkspace step restores.
	// +optional
	// +listType=atomic
	WorkspaceSources []string `json:"workspaceSources,omitempty"`

	// keptSources are the workspace sources that are not this run's ExecutorTasks but the
	// restarted run's (spec.restartFrom of the Run): tasks the restart kept, not executed again,
	// whose archives are kept under that run in the object store.
	// +optional
	// +listType=map
	// +listMapKey=executorTask
	// +kubebuilder:validation:MaxItems=256
	KeptSources []KeptWorkspaceSource `json:"keptSources,omitempty"`

	// stop asks the executor to stop the task.
	// +optional
	Stop bool `json:"stop,omitempty"`
}

// KeptWorkspaceSource is a workspace source a restart kept: an ExecutorTask of the restarted run.
type KeptWorkspaceSource struct {
	// executorTask is the source's name in workspaceSources: the restarted run's ExecutorTask.
	// +required
	// +kubebuilder:validation:MaxLength=253
	ExecutorTask string `json:"executorTask"`
	// run is the restarted run, under whose uid the source's archives are kept.
	// +required
	Run RunReference `json:"run"`
	// archives are the indexes of the source's saveToWorkspace steps whose archives are stored:
	// exactly those are restored, so that one missing fails the task, naming it.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=64
	Archives []int32 `json:"archives,omitempty"`
}

// ExecutorTaskStatus is written only by the task's executor: one field for the object's managed
// fields (atomic), which the apiserver stores and recomputes at every write.
// +structType=atomic
type ExecutorTaskStatus struct {
	// phase of the task on the executor.
	// +optional
	Phase TaskPhase `json:"phase,omitempty"`

	// startTime is when the executor started the task.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// endTime is when the task ended.
	// +optional
	EndTime *metav1.Time `json:"endTime,omitempty"`

	// message says why the task failed.
	// +optional
	Message string `json:"message,omitempty"`

	// steps of the task.
	// +optional
	// +listType=atomic
	Steps []StepStatus `json:"steps,omitempty"`
}

// IsActive reports whether the executor may still be running the task.
func (s *ExecutorTaskStatus) IsActive() bool { return !s.Phase.IsFinal() }

// SavedArchives are the indexes of the task's saveToWorkspace steps that succeeded: each wrote an
// archive (a save that matches nothing fails), which the task's descendants restore.
func (et *ExecutorTask) SavedArchives() []int {
	var out []int
	for i, s := range et.Spec.Task.Steps {
		if s.SaveToWorkspace != nil && i < len(et.Status.Steps) && et.Status.Steps[i].Phase == StepPhaseSuccess {
			out = append(out, i)
		}
	}
	return out
}

// ExecutorTask is a task scheduled on an executor.
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=et,categories=runservice
// +kubebuilder:printcolumn:name="Run",type=string,JSONPath=`.spec.runName`
// +kubebuilder:printcolumn:name="Task",type=string,JSONPath=`.spec.taskName`
// +kubebuilder:printcolumn:name="Executor",type=string,JSONPath=`.spec.executor`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ExecutorTask struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is written by the manager.
	// +required
	Spec ExecutorTaskSpec `json:"spec"`

	// status is written by the executor.
	// +optional
	Status ExecutorTaskStatus `json:"status,omitempty"`
}

// ExecutorTaskList is a list of ExecutorTasks.
// +kubebuilder:object:root=true
type ExecutorTaskList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ExecutorTask `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ExecutorTask{}, &ExecutorTaskList{})
}
