package controllers

import (
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
	var steps []rsv1.Step
	if len(s.Task.Steps) > 0 {
		steps = make([]rsv1.Step, len(s.Task.Steps))
		for i, step := range s.Task.Steps {
			steps[i].SaveToWorkspace = step.SaveToWorkspace
		}
	}
	s.Task = rsv1.Task{Name: s.TaskName, Steps: steps}
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
