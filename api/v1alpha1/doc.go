// Package v1alpha1 holds the runservice.dev/v1alpha1 API: Run, ChangeGroup, Executor and ExecutorTask.
// +kubebuilder:object:generate=true
// +groupName=runservice.dev
// +k8s:openapi-gen=true
// +k8s:openapi-model-package=dev.runservice.v1alpha1
package v1alpha1
