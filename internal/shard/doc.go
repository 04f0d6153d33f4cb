// Package shard owns the manager's shard ring: which replica of the manager owns which run.
//
// Every manager replica is a member of the ring (it holds a Lease of its own); a run belongs to the
// member that rendezvous hashing picks for the run's key ("namespace/name"), and the member's name
// is recorded on the run, and copied to its ExecutorTasks, as the label runservice.dev/shard, so
// that each replica caches only its own objects. A member joining or leaving moves only the keys
// that now pick another member: about 1/n of them.
//
// The ring is a pure function of the member names; what a replica knows of it (its own name and
// the members it sees live) is a View.
package shard
