// Package executor is the executor process: it registers an Executor, keeps its Lease renewed,
// and executes the ExecutorTasks scheduled on it through a Driver, at most once: a task's containers
// have names deterministic per task (a second create fails), the executor prepares the task's
// directory before it creates them, and after a restart it follows the containers it finds by label
// instead of starting anything again. A task's status is first written once it has run for a short
// delay, or with its end. It serves the steps' logs and
// workspace archives over HTTP until the manager has fetched them.
package executor
