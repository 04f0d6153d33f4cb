// Package controllers holds the manager's reconcilers, one per kind: runs (DAG scheduling and status),
// change groups (the admission ledger and maxActiveRuns) and executors (liveness from Leases).
// SetupWithManager wires them, with their indexes and the Run webhook, into a manager.
package controllers
