// Package v1alpha1 holds the archive.runservice.dev/v1alpha1 API: ArchivedRun, a finished run that
// the manager archived out of etcd into the object store. The manager's aggregated API serves it
// read-only; the document kept in the object store is the ArchivedRun itself.
// +kubebuilder:object:generate=true
// +groupName=archive.runservice.dev
// +k8s:openapi-gen=true
// +k8s:openapi-model-package=dev.runservice.archive.v1alpha1
package v1alpha1
