// Package runops holds the operations people do on runs (approve, stop, restart), as runctl and its
// web view both call them: one implementation, so the terminal and the browser cannot disagree.
package runops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

// Approve adds tasks to the run's spec.approvedTasks. A task that does not exist, needs no approval
// or is already approved is an error naming it; nothing is written then.
func Approve(ctx context.Context, c versioned.Interface, namespace, run string, tasks ...string) (*rsv1.Run, error) {
	if len(tasks) == 0 {
		return nil, fmt.Errorf("name the tasks to approve")
	}
	return update(ctx, c, namespace, run, func(r *rsv1.Run) error {
		for _, name := range tasks {
			i := slices.IndexFunc(r.Spec.Tasks, func(t rsv1.Task) bool { return t.Name == name })
			switch {
			case i < 0:
				return fmt.Errorf("run %s has no task %q (its tasks: %s)", run, name, TaskNames(r))
			case !r.Spec.Tasks[i].IsNeedsApproval():
				return fmt.Errorf("task %q of run %s does not need approval (tasks that do: %s)", name, run, approvable(r))
			case slices.Contains(r.Spec.ApprovedTasks, name):
				return fmt.Errorf("task %q of run %s is already approved", name, run)
			}
			r.Spec.ApprovedTasks = append(r.Spec.ApprovedTasks, name)
		}
		return nil
	})
}

// Stop sets the run's spec.stop. Stopping a run that has ended is an error; stopping one already
// stopping is not (nothing is written then).
func Stop(ctx context.Context, c versioned.Interface, namespace, run string) (*rsv1.Run, error) {
	return update(ctx, c, namespace, run, func(r *rsv1.Run) error {
		if r.Status.Phase.IsFinal() {
			return fmt.Errorf("run %s has ended (%s, %s): there is nothing to stop", run, r.Status.Phase, r.Status.Result)
		}
		if r.IsStopped() {
			return errUnchanged
		}
		stop := true
		r.Spec.Stop = &stop
		return nil
	})
}

// errUnchanged is what a change returns when the run already is as asked: nothing is written.
var errUnchanged = errors.New("unchanged")

// update applies change to the live run and writes it, read again and retried when another write
// came first. The run's stored update token is left as it is: the request does not carry one.
func update(ctx context.Context, c versioned.Interface, namespace, name string, change func(*rsv1.Run) error) (*rsv1.Run, error) {
	runs := c.RunserviceV1alpha1().Runs(namespace)
	var out *rsv1.Run
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		r, err := runs.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			if _, aerr := c.ArchiveV1alpha1().ArchivedRuns(namespace).Get(ctx, name, metav1.GetOptions{}); aerr == nil {
				return fmt.Errorf("run %s has ended and is archived: it cannot change any more", name)
			}
			return fmt.Errorf("%w in namespace %s", ErrNotFound(name), namespace)
		}
		if err != nil {
			return err
		}
		if err := change(r); errors.Is(err, errUnchanged) {
			out = r
			return nil
		} else if err != nil {
			return err
		}
		out, err = runs.Update(ctx, r, metav1.UpdateOptions{})
		return err
	})
	return out, err
}

// ErrNotFound is the error for a run that is neither live nor archived; it wraps apierrors'
// NotFound so that callers can tell it with apierrors.IsNotFound.
func ErrNotFound(name string) error {
	return apierrors.NewNotFound(rsv1.GroupVersion.WithResource("runs").GroupResource(), name)
}

// Get returns the run named, live or else archived (then with archived true): what a reader of a
// run (describe, logs, wait, restart) wants once a finished run may have left etcd.
func Get(ctx context.Context, c versioned.Interface, namespace, name string) (run *rsv1.Run, archived bool, err error) {
	live, err := c.RunserviceV1alpha1().Runs(namespace).Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		return live, false, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, false, err
	}
	ar, aerr := c.ArchiveV1alpha1().ArchivedRuns(namespace).Get(ctx, name, metav1.GetOptions{})
	if aerr != nil {
		if isAbsent(aerr) {
			return nil, false, fmt.Errorf("run %s is neither live nor archived in namespace %s: %w", name, namespace, ErrNotFound(name))
		}
		return nil, false, fmt.Errorf("run %s is not live in namespace %s, and the archive could not be read: %w", name, namespace, aerr)
	}
	return &rsv1.Run{ObjectMeta: ar.ObjectMeta, Spec: ar.Spec, Status: ar.Status.RunStatus}, true, nil
}

// isAbsent says whether an error reading an archived run means there is none: NotFound, or no
// archive API served at all (a manager without archiving).
func isAbsent(err error) bool {
	return apierrors.IsNotFound(err) || meta.IsNoMatchError(err) || apierrors.IsServiceUnavailable(err)
}

// RestartOptions say how a run is restarted.
type RestartOptions struct {
	// FailedTasksOnly keeps the tasks that succeeded (spec.restartFrom.failedTasksOnly).
	FailedTasksOnly bool
	// UpdateToken, when set, is sent as the change groups' update token: the create is then a
	// compare-and-swap on the groups, as for any run.
	UpdateToken string
}

// Restart creates a run that restarts the run named, live or archived: the same graph, environment,
// change groups and the labels and annotations that are not runservice's own, with spec.restartFrom
// naming it. A run that has not ended is refused.
func Restart(ctx context.Context, c versioned.Interface, namespace, name string, o RestartOptions) (*rsv1.Run, error) {
	orig, err := restartable(ctx, c, namespace, name)
	if err != nil {
		return nil, err
	}
	run := &rsv1.Run{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:    namespace,
			GenerateName: generateName(orig.Name),
			Labels:       own(orig.Labels),
			Annotations:  own(orig.Annotations),
		},
		Spec: rsv1.RunSpec{
			ChangeGroups: orig.Spec.ChangeGroups,
			Environment:  orig.Spec.Environment,
			Tasks:        orig.Spec.Tasks,
			RestartFrom:  &rsv1.RunRestart{Run: orig.Name, UID: orig.UID, FailedTasksOnly: o.FailedTasksOnly},
		},
	}
	if o.UpdateToken != "" {
		if run.Annotations == nil {
			run.Annotations = map[string]string{}
		}
		run.Annotations[rsv1.AnnotationUpdateToken] = o.UpdateToken
	}
	return c.RunserviceV1alpha1().Runs(namespace).Create(ctx, run, metav1.CreateOptions{})
}

// restartable returns the run named, live or else archived, with its metadata and spec, once it
// has ended.
func restartable(ctx context.Context, c versioned.Interface, namespace, name string) (*rsv1.Run, error) {
	run, _, err := Get(ctx, c, namespace, name)
	if err != nil {
		return nil, err
	}
	if !run.Status.Phase.IsFinal() {
		phase := run.Status.Phase
		if phase == "" {
			phase = rsv1.RunPhaseQueued
		}
		return nil, fmt.Errorf("run %s is still %s: stop it first (runctl stop %s) or wait for its end (runctl wait %s)", name, phase, name, name)
	}
	return run, nil
}

// generateName is the prefix of a restart's generated name: the restarted run's name and a dash,
// cut so that the generated name stays a valid label value (restarts of restarts do not grow it).
func generateName(name string) string {
	const max = 63 - 5 - 1 // a generated suffix is 5 characters; names stay valid label values
	if len(name) > max {
		name = strings.TrimRight(name[:max], "-.")
	}
	return name + "-"
}

// own returns the labels or annotations that are the user's, not runservice's: those runservice
// sets (phase, result, change groups, its annotations) would be refused or wrong on a new run, and
// kubectl's last applied configuration is the restarted run's, not the restart's.
func own(m map[string]string) map[string]string {
	var out map[string]string
	for k, v := range m {
		if strings.Contains(k, "runservice.dev/") || k == arv1.LabelPhase || k == arv1.LabelResult || k == corev1.LastAppliedConfigAnnotation {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[k] = v
	}
	return out
}

// approvable names the run's tasks that need approval and are not approved yet.
func approvable(r *rsv1.Run) string {
	var names []string
	for _, t := range r.Spec.Tasks {
		if t.IsNeedsApproval() && !slices.Contains(r.Spec.ApprovedTasks, t.Name) {
			names = append(names, t.Name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// TaskNames lists the run's tasks, for messages that name what exists.
func TaskNames(r *rsv1.Run) string {
	names := make([]string, len(r.Spec.Tasks))
	for i, t := range r.Spec.Tasks {
		names[i] = t.Name
	}
	return strings.Join(names, ", ")
}
