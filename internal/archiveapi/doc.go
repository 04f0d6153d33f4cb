// Package archiveapi serves archived runs through the Kubernetes API: an aggregated API server
// (k8s.io/apiserver) for archive.runservice.dev/v1alpha1, whose one resource, archivedruns, is
// namespaced and read-only (get and list; never watched, since an archived run never changes).
//
// Lists are answered by the archive's index (entries, newest first, one page at a time); the Table
// that kubectl prints is made from those entries alone, while full objects are the documents kept
// in the object store (archive.GetDocument), read in parallel for a page. Authentication and
// authorization are the cluster's (delegated to the kube-apiserver), and an archived run is
// authorized as its run: whoever may list runs in a namespace may list its archived runs, and no
// one else.
package archiveapi
