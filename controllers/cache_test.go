package controllers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// applied gives run the annotation kubectl apply adds: its manifest, a second copy of the spec.
func applied(t *testing.T, run *rsv1.Run) {
	t.Helper()
	manifest, err := json.Marshal(run)
	if err != nil {
		t.Fatal(err)
	}
	if run.Annotations == nil {
		run.Annotations = map[string]string{}
	}
	run.Annotations[corev1.LastAppliedConfigAnnotation] = string(manifest)
}

// TestTheCacheKeepsRunsSlim: the manager's cache holds a run's task definitions while they are left
// to schedule: a task its status shows decided keeps its graph and its workspace saves, not its
// containers and commands; the environment goes with the last task scheduled, and kubectl's copy of
// the manifest once the run has a status. What the manager writes from such a copy (merge patches
// of what it changes) keeps the stored run whole, and an update from it is refused.
func TestTheCacheKeepsRunsSlim(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	save := &rsv1.SaveToWorkspaceStep{Contents: []rsv1.SaveContent{{SourceDir: "out", DestDir: "out", Paths: []string{"**"}}}}
	a := task("a")
	a.Steps = []rsv1.Step{{Run: &rsv1.RunStep{Command: strings.Repeat("make all; ", 100)}}, {SaveToWorkspace: save}}
	b := task("b", dependsOn("a"), ignoreFailure())
	run := newRun(ns, "slim", a, b)
	run.Spec.Environment = []rsv1.EnvVar{{Name: "GOFLAGS", Value: "-mod=mod"}}
	run.Annotations = map[string]string{"team": "core"}
	applied(t, run)
	createRun(t, run)
	stored := getRun(t, ns, "slim")
	ctx := context.Background()

	cached := &rsv1.Run{}
	cachedScheduled := func(task string) func() (bool, error) {
		return func() (bool, error) {
			if err := managerCache().Get(ctx, client.ObjectKeyFromObject(run), cached); err != nil {
				return false, err
			}
			for _, ts := range cached.Status.Tasks {
				if ts.Name == task && ts.ExecutorTask != "" {
					return true, nil
				}
			}
			return false, nil
		}
	}
	eventually(t, 20*time.Second, "the cache shows a scheduled", cachedScheduled("a"))
	slimA := rsv1.Task{Name: "a", Steps: []rsv1.Step{{}, {SaveToWorkspace: save}}}
	if len(cached.Spec.Tasks) != 2 || !equality.Semantic.DeepEqual(cached.Spec.Tasks[0], slimA) || !equality.Semantic.DeepEqual(cached.Spec.Tasks[1], b) {
		t.Errorf("cached tasks with a scheduled\n%+v\nwant a's graph and saves, b whole\n%+v", cached.Spec.Tasks, []rsv1.Task{slimA, b})
	}
	if !equality.Semantic.DeepEqual(cached.Spec.Environment, run.Spec.Environment) {
		t.Errorf("cached environment %v with b left to schedule, want %v", cached.Spec.Environment, run.Spec.Environment)
	}
	if _, ok := cached.Annotations[corev1.LastAppliedConfigAnnotation]; ok || cached.Annotations["team"] != "core" {
		t.Errorf("cached annotations %v, want team and not kubectl's copy", cached.Annotations)
	}

	complete(t, ns, "slim", "a", rsv1.TaskPhaseSuccess)
	eventually(t, 20*time.Second, "the cache shows b scheduled", cachedScheduled("b"))
	slimB := b
	slimB.Containers, slimB.Steps = nil, []rsv1.Step{{}}
	if !equality.Semantic.DeepEqual(cached.Spec.Tasks, []rsv1.Task{slimA, slimB}) || cached.Spec.Environment != nil {
		t.Errorf("cached spec with every task scheduled\n%+v\nwant the graph without definitions and environment", cached.Spec)
	}

	// The manager's writes: merge patches of what it changes, here a label and the status.
	base := cached.DeepCopy()
	if cached.Labels == nil {
		cached.Labels = map[string]string{}
	}
	cached.Labels["slim"] = "yes"
	if err := k8s.Patch(ctx, cached, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		t.Fatalf("patching from the cached copy: %v", err)
	}
	// The patch's response is the whole run: what follows is built from the cache's copy again.
	fromCache := func(what string, ok func(*rsv1.Run) bool) {
		t.Helper()
		eventually(t, 10*time.Second, "the cache shows "+what, func() (bool, error) {
			err := managerCache().Get(ctx, client.ObjectKeyFromObject(run), cached)
			return err == nil && ok(cached), err
		})
		if cached.Spec.Environment != nil || cached.Spec.Tasks[0].Containers != nil {
			t.Fatalf("the cached copy is not slim: %+v", cached.Spec)
		}
	}
	fromCache("the label", func(r *rsv1.Run) bool { return r.Labels["slim"] == "yes" })
	base = cached.DeepCopy()
	cached.Status.Progress = "patched"
	if err := k8s.Status().Patch(ctx, cached, client.MergeFrom(base)); err != nil {
		t.Fatalf("patching the status from the cached copy: %v", err)
	}
	live := getRun(t, ns, "slim")
	if !equality.Semantic.DeepEqual(live.Spec, stored.Spec) || live.Annotations[corev1.LastAppliedConfigAnnotation] != run.Annotations[corev1.LastAppliedConfigAnnotation] || live.Labels["slim"] != "yes" {
		t.Errorf("after patches from the cached copy the stored run is\n%+v\n%v\nwant its spec and annotations whole", live.Spec, live.Annotations)
	}

	// An update from the slim copy would write its definitions back empty: refused, by the schema
	// (a task has containers) before the webhook (the tasks are immutable); tried on a copy as new
	// as the stored run, so that no conflict answers first.
	fromCache("the stored version", func(r *rsv1.Run) bool { return r.ResourceVersion == getRun(t, ns, "slim").ResourceVersion })
	cached.Labels["updated"] = "yes"
	if err := k8s.Update(ctx, cached); !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) || !strings.Contains(fmt.Sprint(err), "spec.tasks") {
		t.Errorf("an update from the slim cached copy answered %v, want it refused for its tasks", err)
	}
	if live = getRun(t, ns, "slim"); !equality.Semantic.DeepEqual(live.Spec, stored.Spec) {
		t.Errorf("after the refused update the stored spec is %+v, want it whole", live.Spec)
	}
}
