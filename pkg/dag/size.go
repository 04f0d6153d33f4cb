package dag

import (
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/util/validation/field"

	"runservice.dev/runservice/api/v1alpha1"
)

// Upper bounds, in bytes of JSON, of what a run's status holds besides the names the spec gives:
// field names, phases, times, exit codes, the executor's name, a truncated message.
const (
	statusBaseBytes = 8 << 10 // phase, result, times, progress, conditions with truncated messages
	// A task's fetched is at most 256 bytes (the schema's bound): archives-missing of 64 steps.
	taskStatusBytes = 640 + 253 + v1alpha1.MaxMessageLength + len(`,"fetched":""`) + 256
	stepStatusBytes = 224
	// uidBytes is the length of a uid, which the object store's keys carry (objectstore.Task).
	uidBytes = len("00000000-0000-0000-0000-000000000000")
)

// StatusBound is the most bytes of JSON the status of run can take: per task its name, its
// ExecutorTask's name, an executor's name and a truncated message; per step its name and log key.
func StatusBound(run *v1alpha1.Run) int {
	n := statusBaseBytes
	for _, t := range run.Spec.Tasks {
		et := ExecutorTaskNameBound(run.Name, t.Name)
		n += taskStatusBytes + len(t.Name) + et
		logKey := LogKeyBound(run.Namespace, run.Name, et)
		for _, s := range t.Steps {
			n += stepStatusBytes + logKey
			if s.Run != nil && s.Run.Name != nil {
				n += len(*s.Run.Name)
			} else {
				n += 40 // default step names are cut to 40 characters (executor/toolbox)
			}
		}
	}
	return n
}

// ExecutorTaskNameBound is the length of the name of the ExecutorTask of a run's task: it depends on
// the lengths of the names only, not on the run's uid.
func ExecutorTaskNameBound(run, task string) int {
	return len(v1alpha1.ExecutorTaskName(run, "", task))
}

// LogKeyBound is the longest key of a step's log, for an ExecutorTask name of etLen characters:
// runs/<namespace>/<run>/<run uid>/tasks/<executor task>/steps/<step>.log, steps counted up to 99.
func LogKeyBound(namespace, run string, etLen int) int {
	return len("runs/") + len(namespace) + 1 + len(run) + 1 + uidBytes + len("/tasks/") + etLen + len("/steps/00.log")
}

// ValidateSize checks the sums that the schema cannot: the run's metadata, its spec and the largest
// status it can grow to fit in MaxRunBytes, so that an admitted run can always record every task's
// end and finish; and the environment, which every ExecutorTask of the run carries, fits in
// MaxEnvironmentBytes.
func ValidateSize(run *v1alpha1.Run) field.ErrorList {
	var errs field.ErrorList
	spec := field.NewPath("spec")
	env := 0
	for _, e := range run.Spec.Environment {
		env += len(e.Name) + len(e.Value)
	}
	if env > v1alpha1.MaxEnvironmentBytes {
		errs = append(errs, field.TooLong(spec.Child("environment"), fmt.Sprintf("%d bytes of names and values", env), v1alpha1.MaxEnvironmentBytes))
	}
	// Annotations count (kubectl apply keeps a copy of the spec in one); managedFields are what the
	// headroom above MaxRunBytes is for.
	om := run.ObjectMeta
	om.ManagedFields = nil
	meta, err := json.Marshal(&om)
	if err != nil {
		return append(errs, field.InternalError(spec, err))
	}
	data, err := json.Marshal(&run.Spec)
	if err != nil {
		return append(errs, field.InternalError(spec, err))
	}
	steps := 0
	for _, t := range run.Spec.Tasks {
		steps += len(t.Steps)
	}
	if status := StatusBound(run); len(meta)+len(data)+status > v1alpha1.MaxRunBytes {
		errs = append(errs, field.Invalid(spec.Child("tasks"), fmt.Sprintf("%d tasks, %d steps", len(run.Spec.Tasks), steps),
			fmt.Sprintf("the run is too large: its metadata and spec (%d bytes) and the status its %d tasks and %d steps can grow to (%d bytes) exceed the %d bytes a run may have; split it into several runs, or use fewer steps or shorter commands",
				len(meta)+len(data), len(run.Spec.Tasks), steps, status, v1alpha1.MaxRunBytes)))
	}
	return errs
}
