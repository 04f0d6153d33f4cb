// Package dag owns the pure logic of a Run's task graph: checking that a RunSpec is a valid DAG
// (Validate), ordering a task's ancestors for workspace restores (Ancestors), and computing the next
// RunStatus from the spec, the current status and the observed ExecutorTasks (Advance), together with
// the ExecutorTasks to create and to stop.
//
// Nothing here talks to the apiserver: every function is a deterministic function of its inputs, so the
// run controller stays a thin layer that gathers inputs, calls Advance and applies its Output. The
// semantics mirror the agola run service scheduler.
package dag
