package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

var (
	// GroupVersion is the API group and version of ArchivedRun.
	GroupVersion = schema.GroupVersion{Group: "archive.runservice.dev", Version: "v1alpha1"}

	// SchemeGroupVersion is GroupVersion under the name client-go's generated code expects.
	SchemeGroupVersion = GroupVersion

	// SchemeBuilder registers the kinds of this package.
	SchemeBuilder = runtime.NewSchemeBuilder(func(s *runtime.Scheme) error {
		s.AddKnownTypes(GroupVersion, &ArchivedRun{}, &ArchivedRunList{})
		metav1.AddToGroupVersion(s, GroupVersion)
		return nil
	})

	// AddToScheme adds the kinds of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// Resource takes an unqualified resource and returns it qualified with this API group.
func Resource(resource string) schema.GroupResource {
	return GroupVersion.WithResource(resource).GroupResource()
}

// Labels that live Runs and ArchivedRuns carry alike, so that one selector finds both.
const (
	// LabelChangeGroupPrefix starts a label per change group of the run:
	// changegroup.runservice.dev/<group>: "" (select with -l changegroup.runservice.dev/<group>).
	LabelChangeGroupPrefix = "changegroup.runservice.dev/"
	// LabelPhase is the run's final phase (Finished, Cancelled, SetupError), set when it ends.
	LabelPhase = "runservice.dev/phase"
	// LabelResult is the run's result (Success, Failed, Stopped), set when it ends.
	LabelResult = "runservice.dev/result"
)

// ArchivedRun is a finished Run and the statuses of its ExecutorTasks, as archived: immutable.
// +genclient
// +genclient:onlyVerbs=get,list
// +kubebuilder:object:root=true
type ArchivedRun struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the Run's (name, namespace, uid, labels, annotations, creationTimestamp), without
	// what only a live object has (resourceVersion, finalizers, managedFields).
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the Run's spec.
	Spec rsv1.RunSpec `json:"spec"`

	// status is the Run's last status, with its ExecutorTasks' and when it was archived.
	Status ArchivedRunStatus `json:"status,omitempty"`
}

// ArchivedRunStatus is a Run's last status and its ExecutorTasks'.
type ArchivedRunStatus struct {
	rsv1.RunStatus `json:",inline"`

	// archiveTime is when the run was archived.
	ArchiveTime metav1.Time `json:"archiveTime"`

	// executorTasks are the run's ExecutorTasks as they were when the run was archived.
	// +optional
	// +listType=map
	// +listMapKey=name
	ExecutorTasks []ArchivedExecutorTask `json:"executorTasks,omitempty"`
}

// ArchivedExecutorTask is one ExecutorTask of an archived run.
type ArchivedExecutorTask struct {
	// name of the ExecutorTask (its logs and archives are kept under it in the object store).
	Name string `json:"name"`
	// uid of the ExecutorTask.
	UID types.UID `json:"uid,omitempty"`
	// task is the name of the run's task it executed.
	Task string `json:"task"`
	// executor is the Executor it was scheduled on.
	Executor string `json:"executor,omitempty"`
	// fetched is what the run's status.tasks[].fetched recorded of its fetch (the
	// runservice.dev/fetched annotation before that field): when its logs and archives were
	// stored, or why some are not (lost, archives-missing:…).
	// +optional
	Fetched string `json:"fetched,omitempty"`
	// status is the ExecutorTask's status, as its executor last wrote it.
	Status rsv1.ExecutorTaskStatus `json:"status"`
}

// ArchivedRunList is a list of ArchivedRuns.
// +kubebuilder:object:root=true
type ArchivedRunList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ArchivedRun `json:"items"`
}
