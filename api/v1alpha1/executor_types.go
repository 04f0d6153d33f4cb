package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ExecutorDriver is how an executor runs tasks.
// +kubebuilder:validation:Enum=Docker;Kubernetes
type ExecutorDriver string

const (
	DriverDocker     ExecutorDriver = "Docker"
	DriverKubernetes ExecutorDriver = "Kubernetes"
)

// ExecutorSpec is what an executor registers.
type ExecutorSpec struct {
	// driver the executor runs tasks with.
	// +required
	Driver ExecutorDriver `json:"driver"`

	// permanent executors stay registered until they are deleted; dynamic ones are removed by
	// their group when their Lease expires.
	// +optional
	Permanent bool `json:"permanent,omitempty"`

	// group of dynamic executors sharing a namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Group string `json:"group,omitempty"`

	// archs the executor runs (GOARCH names).
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=8
	Archs []string `json:"archs,omitempty"`

	// activeTasksLimit is the most tasks the executor runs at once; 0 means no limit.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ActiveTasksLimit int32 `json:"activeTasksLimit,omitempty"`

	// allowPrivilegedContainers lets tasks with privileged containers run here.
	// +optional
	AllowPrivilegedContainers bool `json:"allowPrivilegedContainers,omitempty"`

	// endpoint is the URL where the manager fetches logs and workspace archives: http or https,
	// with a host; the request paths are appended to it. Which addresses the manager dials is its
	// own policy (--executor-endpoint-allow), checked when it connects.
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self == '' || (isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != '' && !self.contains('?') && !self.contains('#'))",message="must be an http or https URL with a host and no query or fragment, like http://10.0.0.7:8090"
	Endpoint string `json:"endpoint,omitempty"`

	// unschedulable keeps new tasks off the executor while its running tasks go on. A dynamic
	// executor sets it while it drains on shutdown; an administrator may set it to cordon one (until
	// the executor registers again).
	// +optional
	Unschedulable bool `json:"unschedulable,omitempty"`
}

// ExecutorStatus is what the manager observed of an executor.
type ExecutorStatus struct {
	// activeTasks is the number of unfinished ExecutorTasks scheduled on the executor.
	// +optional
	ActiveTasks int32 `json:"activeTasks"`

	// lastHeartbeatTime is the last renewal of the executor's Lease.
	// +optional
	LastHeartbeatTime *metav1.Time `json:"lastHeartbeatTime,omitempty"`

	// conditions of the executor; Ready is true while its Lease is renewed.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Executor is a process that executes tasks. Its liveness is the coordination.k8s.io Lease of the
// same name and namespace.
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ex,categories=runservice
// +kubebuilder:printcolumn:name="Driver",type=string,JSONPath=`.spec.driver`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Active",type=integer,JSONPath=`.status.activeTasks`
// +kubebuilder:printcolumn:name="Limit",type=integer,JSONPath=`.spec.activeTasksLimit`
// +kubebuilder:printcolumn:name="Unschedulable",type=boolean,JSONPath=`.spec.unschedulable`,priority=1
// +kubebuilder:printcolumn:name="Permanent",type=boolean,JSONPath=`.spec.permanent`,priority=1
// +kubebuilder:printcolumn:name="Group",type=string,JSONPath=`.spec.group`,priority=1
// +kubebuilder:printcolumn:name="Heartbeat",type=date,JSONPath=`.status.lastHeartbeatTime`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Executor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what the executor registered.
	// +required
	Spec ExecutorSpec `json:"spec"`

	// status is what the manager observed.
	// +optional
	Status ExecutorStatus `json:"status,omitempty"`
}

// ExecutorList is a list of Executors.
// +kubebuilder:object:root=true
type ExecutorList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Executor `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Executor{}, &ExecutorList{})
}
