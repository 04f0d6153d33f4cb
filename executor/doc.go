// Package executor is the executor process: it registers an Executor, keeps its Lease renewed,
// and executes the ExecutorTasks scheduled on it through a Driver, at most once: the task's status
// records that it started before any container is created, and after a restart the executor follows
// the containers it finds by label instead of starting anything again. It serves the steps' logs and
// workspace archives over HTTP until the manager has fetched them.
package executor
