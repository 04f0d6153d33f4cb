package controllers

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// SlimExecutorTask is the manager cache's transform of ExecutorTasks: a live run costs the
// manager its three or so ExecutorTasks beside the Run, and most of what they hold the manager
// never reads of its cached copies.
//   - Of the task's definition (spec.task, spec.environment, spec.workspaceSources,
//     spec.keptSources: written once by the manager, from the Run's spec, immutable after) it keeps
//     which steps save their workspace: fetching a task's logs and archives reads the steps' count
//     and those steps (SavedArchives). The executor and the restart's live document read the
//     whole object from the apiserver; the archive reads of it its names and status.
//   - The strings the apiserver sends several times in one object (the run's name and uid, the
//     executor's and the task's names in the labels, the spec and the owner reference) share one
//     copy, and the owner's apiVersion and kind and the phases are the package's constants.
//
// A cached copy's task definition is thus incomplete: code of the manager that needs more of it
// reads the ExecutorTask from the apiserver, or the task from its Run's spec. Every write of the
// manager to an ExecutorTask is a patch of what it changed (its stop, its shard label), so a slim
// copy never writes its missing parts back as empty; an update from one would be refused, as the
// spec is immutable but for stop (config/crd/executortask_policy.yaml), and a server-side apply of
// the spec, atomic, would replace it whole: neither may be built from a cached copy.
// TestTheCacheKeepsExecutorTasksSlim proves the patch and the refusal. It returns other objects as
// they are, and is idempotent, as a cache transform must be (client-go may apply it twice).
func SlimExecutorTask(o any) (any, error) {
	et, ok := o.(*rsv1.ExecutorTask)
	if !ok {
		return o, nil
	}
	s := &et.Spec
	keepSaves(s.Task.Steps)
	s.Task = rsv1.Task{Name: s.TaskName, Steps: s.Task.Steps}
	s.Environment, s.WorkspaceSources, s.KeptSources = nil, nil, nil

	for k, v := range et.Labels { // values changed in place: the map is not grown
		switch k {
		case rsv1.LabelRun:
			et.Labels[k] = same(v, s.RunName)
		case rsv1.LabelRunUID:
			et.Labels[k] = same(v, s.RunUID)
		case rsv1.LabelExecutor:
			et.Labels[k] = same(v, s.Executor)
		case rsv1.LabelTask:
			et.Labels[k] = same(v, s.TaskName)
		}
	}
	for i := range et.OwnerReferences {
		ref := &et.OwnerReferences[i]
		if ref.APIVersion == runAPIVersion && ref.Kind == "Run" {
			ref.APIVersion, ref.Kind = runAPIVersion, "Run"
			ref.Name = same(ref.Name, s.RunName)
			ref.UID = types.UID(same(string(ref.UID), s.RunUID))
		}
	}
	et.Status.Phase = rsv1.TaskPhase(knownPhase(string(et.Status.Phase)))
	for i := range et.Status.Steps {
		et.Status.Steps[i].Phase = rsv1.StepPhase(knownPhase(string(et.Status.Steps[i].Phase)))
	}
	return et, nil
}

// SlimRun is the manager cache's transform of Runs: what a live run costs the manager grows with
// its definition (commands, scripts, containers, environment) and, for a run submitted with kubectl
// apply, with kubectl's copy of it (its last-applied-configuration annotation), while the manager
// reads a task's definition only to schedule it. Once the run has a status (validated, its restart
// resolved, from its whole spec) it keeps:
//   - of each task its status shows decided (an ExecutorTask named, or a phase other than
//     NotStarted: never scheduled again, as the ExecutorTasks are the lock of at most once), and of
//     every task of a final run, the graph (name, depends, the flags) and which steps save their
//     workspace (what fetching and a restart's kept sources read), without its containers and its
//     steps' commands;
//   - the environment while a task is left to schedule, which its ExecutorTask carries;
//   - every annotation but kubectl's copy.
//
// A task the status does not show decided keeps its definition: one scheduled by a write the cache
// does not show yet, or lost, is decided again from it. The archiver reads the run from the
// apiserver to archive it whole; restarts and the webhooks read runs from the apiserver too. Every
// write of the manager to a Run is a patch of what it changed (its status, finalizers, labels), so a
// slim copy never writes its missing parts back. No update of a Run may be built from a cached copy:
// one whose tasks lack their definitions is refused (the schema requires a task's containers, the
// Run webhook keeps the tasks immutable), but one from a copy that lacks only kubectl's annotation
// would be accepted and drop it.
// TestTheCacheKeepsRunsSlim proves what is kept, the patches and the refusal. It returns other
// objects as they are, and is idempotent.
func SlimRun(o any) (any, error) {
	run, ok := o.(*rsv1.Run)
	if !ok || run.Status.Phase == "" {
		return o, nil
	}
	delete(run.Annotations, corev1.LastAppliedConfigAnnotation)
	final := run.Status.Phase.IsFinal() // a SetupError run's status has no tasks
	decided := make(map[string]bool, len(run.Status.Tasks))
	for _, ts := range run.Status.Tasks {
		decided[ts.Name] = ts.ExecutorTask != "" || (ts.Phase != "" && ts.Phase != rsv1.TaskPhaseNotStarted)
	}
	pending := false
	for i := range run.Spec.Tasks {
		t := &run.Spec.Tasks[i]
		if !final && !decided[t.Name] {
			pending = true
			continue
		}
		t.Containers = nil
		keepSaves(t.Steps)
	}
	if !pending {
		run.Spec.Environment = nil
	}
	return run, nil
}

// keepSaves keeps of each step, in place, only whether and what it saves to the workspace.
func keepSaves(steps []rsv1.Step) {
	for i := range steps {
		steps[i] = rsv1.Step{SaveToWorkspace: steps[i].SaveToWorkspace}
	}
}

// runAPIVersion is the owner references' apiVersion, one string for all.
var runAPIVersion = rsv1.GroupVersion.String()

// same is s, as the string want when they are equal: one copy of the value for both.
func same(s, want string) string {
	if s == want {
		return want
	}
	return s
}

// phases are the phases of tasks and steps, as the package's constants.
var phases = []string{
	string(rsv1.TaskPhaseNotStarted), string(rsv1.TaskPhaseRunning), string(rsv1.TaskPhaseSuccess), string(rsv1.TaskPhaseFailed),
	string(rsv1.TaskPhaseStopped), string(rsv1.TaskPhaseSkipped), string(rsv1.TaskPhaseCancelled),
}

// knownPhase is p as the package's constant when it is a phase of a task or a step.
func knownPhase(p string) string {
	for _, k := range phases {
		if p == k {
			return k
		}
	}
	return p
}
