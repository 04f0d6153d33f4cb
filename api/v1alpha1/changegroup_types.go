package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ChangeGroupSpec configures a change group.
type ChangeGroupSpec struct {
	// maxActiveRuns, when set, makes the manager start queued runs of the group, oldest first,
	// while fewer than this many are active. Unset, clients start runs themselves (suspend: false,
	// with the update token).
	// +optional
	// +kubebuilder:validation:Minimum=1
	MaxActiveRuns *int32 `json:"maxActiveRuns,omitempty"`
}

// ChangeGroupStatus is the group's admission ledger. Its resourceVersion is the update token: every
// start, finish and deletion of a run of the group writes here.
type ChangeGroupStatus struct {
	// activeRuns are the names of the started, unfinished runs of the group.
	// +optional
	// +listType=set
	ActiveRuns []string `json:"activeRuns,omitempty"`

	// active is the number of activeRuns, for kubectl.
	// +optional
	Active int32 `json:"active"`

	// queuedRuns is the number of runs of the group waiting to start.
	// +optional
	QueuedRuns int32 `json:"queuedRuns"`

	// finished counts the group's runs that left its active runs for good, by result: a run is
	// counted once, in the same write that removes it from activeRuns (so counting costs no write
	// and no change of the token of its own). A run that never became active (cancelled or deleted
	// while queued, or refused at setup while queued) is not counted. Archiving a run does not
	// change the counts.
	// +optional
	Finished FinishedRuns `json:"finished"`

	// sequence grows with every write of the ledger, so that each write gives a new token.
	// +optional
	Sequence int64 `json:"sequence,omitempty"`

	// recentSwaps are the last compare-and-swaps at update tokens, newest last (at most 8): the
	// token each spent and the change it admitted. The apiserver may ask the admission webhook twice
	// about one request (when the run changed between its read and its write, it applies the request
	// again to the newer run and asks again); the webhook finds its own swap here and admits the
	// request again, instead of refusing the token the first ask spent.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=8
	RecentSwaps []TokenSwap `json:"recentSwaps,omitempty"`
}

// TokenSwap is one compare-and-swap of a change group at an update token.
type TokenSwap struct {
	// resourceVersion is the group's version the swap was made at: the token it spent (empty when
	// the swap created the group).
	// +optional
	ResourceVersion string `json:"resourceVersion"`

	// run is the name of the run whose request made the swap.
	Run string `json:"run"`

	// change is a digest of what the request asked for: the run's uid and spec, as admitted. A
	// request that asks for exactly the same change of the same run with the same token is the same
	// request to the ledger.
	Change string `json:"change"`
}

// FinishedRuns counts runs by their result.
type FinishedRuns struct {
	// success is the number of runs that ended with result Success.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Success int64 `json:"success"`

	// failed is the number of runs that ended with result Failed (SetupError included).
	// +optional
	// +kubebuilder:validation:Minimum=0
	Failed int64 `json:"failed"`

	// stopped is the number of runs that ended with result Stopped: stopped, cancelled after they
	// were admitted, or deleted before they ended.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Stopped int64 `json:"stopped"`
}

// ChangeGroup groups runs for admission control and optimistic locking.
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=cg,categories=runservice
// +kubebuilder:printcolumn:name="Queued",type=integer,JSONPath=`.status.queuedRuns`
// +kubebuilder:printcolumn:name="Active",type=integer,JSONPath=`.status.active`
// +kubebuilder:printcolumn:name="Max",type=integer,JSONPath=`.spec.maxActiveRuns`
// +kubebuilder:printcolumn:name="Succeeded",type=integer,JSONPath=`.status.finished.success`
// +kubebuilder:printcolumn:name="Failed",type=integer,JSONPath=`.status.finished.failed`
// +kubebuilder:printcolumn:name="Stopped",type=integer,JSONPath=`.status.finished.stopped`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ChangeGroup struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec configures the group.
	// +optional
	Spec ChangeGroupSpec `json:"spec,omitempty"`

	// status is the admission ledger.
	// +optional
	Status ChangeGroupStatus `json:"status,omitempty"`
}

// ChangeGroupList is a list of ChangeGroups.
// +kubebuilder:object:root=true
type ChangeGroupList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ChangeGroup `json:"items"`
}

func init() {
	SchemeBuilder.Register(&ChangeGroup{}, &ChangeGroupList{})
}
