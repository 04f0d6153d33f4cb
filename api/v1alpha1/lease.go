package v1alpha1

import "strings"

// An executor process holds its Lease (coordination.k8s.io, named after the Executor) under the
// identity "<executor>/<instance>": the Executor's name, which as an object name has no "/", and
// an instance the process makes up at start. The manager reads the name (is the executor live?);
// the executor reads the instance too (is it this process?), so that a second process started
// under the same name sees that another one renews the Lease and refuses to run.

// LeaseHolder is the holder identity of an executor process's Lease.
func LeaseHolder(executor, instance string) string { return executor + "/" + instance }

// ParseLeaseHolder splits a holder identity. One without "/" (an executor from before instances,
// a sibling's cleanup claim) is all executor name, with no instance.
func ParseLeaseHolder(holder string) (executor, instance string) {
	executor, instance, _ = strings.Cut(holder, "/")
	return executor, instance
}
