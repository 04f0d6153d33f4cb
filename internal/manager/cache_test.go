package manager_test

import (
	"context"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/manager"
)

// startCache starts a cache with the manager's options (unsharded) and informers for kinds, synced.
func startCache(ctx context.Context, t *testing.T, kinds ...client.Object) cache.Cache {
	t.Helper()
	opts := manager.CacheOptions("")
	opts.Scheme = manager.Scheme()
	c, err := cache.New(env.Config, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range kinds { // informers for the kinds read, started with the cache
		if _, err := c.GetInformer(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		t.Fatal("the cache did not sync")
	}
	return c
}

// TestTheCacheKeepsNoManagedFields: the manager's cache holds objects without their managedFields
// (a third of the heap a live run cost it), and writes made from such a copy keep the stored ones: an
// update that carries none, a merge patch of the status. The controllers' suites run on the same
// cache options, so every behaviour they test holds with stripped copies too.
func TestTheCacheKeepsNoManagedFields(t *testing.T) {
	ns := newNamespace(t, "cache")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := startCache(ctx, t, &rsv1.ChangeGroup{}, &rsv1.Executor{})

	group := &rsv1.ChangeGroup{ObjectMeta: metav1.ObjectMeta{Name: "g", Namespace: ns}}
	ex := &rsv1.Executor{
		ObjectMeta: metav1.ObjectMeta{Name: "ex", Namespace: ns},
		Spec:       rsv1.ExecutorSpec{Driver: rsv1.DriverDocker, Archs: []string{"amd64"}},
	}
	for _, o := range []client.Object{group, ex} {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	managers := func(o client.Object) map[string]bool {
		out := map[string]bool{}
		for _, m := range o.GetManagedFields() {
			out[m.Manager+"/"+string(m.Operation)+"/"+m.Subresource] = true
		}
		return out
	}
	created := managers(ex)
	if len(created) == 0 {
		t.Fatal("the apiserver recorded no managedFields for the create: nothing to test")
	}

	cachedGroup, cachedEx := &rsv1.ChangeGroup{}, &rsv1.Executor{}
	eventually(t, 10*time.Second, "the cache shows both objects", func() (bool, error) {
		errG := c.Get(ctx, client.ObjectKeyFromObject(group), cachedGroup)
		errE := c.Get(ctx, client.ObjectKeyFromObject(ex), cachedEx)
		return errG == nil && errE == nil, nil
	})
	for _, o := range []client.Object{cachedGroup, cachedEx} {
		if mf := o.GetManagedFields(); len(mf) != 0 {
			t.Errorf("%s in the cache has %d managedFields entries, want none", o.GetName(), len(mf))
		}
	}

	// An update from the cached copy (no managedFields in the request) keeps the stored entries.
	cachedEx.Labels = map[string]string{"pool": "fast"}
	if err := k8s.Update(ctx, cachedEx); err != nil {
		t.Fatal(err)
	}
	live := &rsv1.Executor{}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(ex), live); err != nil {
		t.Fatal(err)
	}
	if live.Labels["pool"] != "fast" {
		t.Errorf("the update from the cached copy was not applied: labels %v", live.Labels)
	}
	for m := range created {
		if !managers(live)[m] {
			t.Errorf("after an update from the cached copy, the stored managedFields lost %s: %v", m, managers(live))
		}
	}

	// A status merge patch locked on the cached copy's resourceVersion, as the controllers write.
	base := cachedGroup.DeepCopy()
	cachedGroup.Status.QueuedRuns = 3
	if err := k8s.Status().Patch(ctx, cachedGroup, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		t.Fatal(err)
	}
	liveGroup := &rsv1.ChangeGroup{}
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "g"}, liveGroup); err != nil {
		t.Fatal(err)
	}
	if liveGroup.Status.QueuedRuns != 3 || len(liveGroup.ManagedFields) == 0 {
		t.Errorf("after a status patch from the cached copy: queuedRuns %d, %d managedFields entries; want 3 and some",
			liveGroup.Status.QueuedRuns, len(liveGroup.ManagedFields))
	}
}

// TestTheCacheKeepsExecutorTasksSlim: the manager's cache holds ExecutorTasks without their task's
// definition but for which steps save their workspace (what fetching reads), with everything else
// the manager reads as stored; a merge patch from such a copy (its stop and its shard label, the manager's
// writes) keeps the stored spec whole, and an update from it, which would empty the rest, is refused.
// Runs and ExecutorTasks have one cache entry each, with its slim transform (runs: the controllers'
// TestTheCacheKeepsRunsSlim).
func TestTheCacheKeepsExecutorTasksSlim(t *testing.T) {
	for _, shard := range []string{"", "m1"} {
		// ByObject is keyed by pointers: two entries of one kind would leave which one counts to chance.
		entries := map[string][]cache.ByObject{}
		for o, b := range manager.CacheOptions(shard).ByObject {
			switch o.(type) {
			case *rsv1.ExecutorTask:
				entries["ExecutorTask"] = append(entries["ExecutorTask"], b)
			case *rsv1.Run:
				entries["Run"] = append(entries["Run"], b)
			}
		}
		for _, kind := range []string{"ExecutorTask", "Run"} {
			if e := entries[kind]; len(e) != 1 || e[0].Transform == nil || (shard != "") != (e[0].Label != nil) {
				t.Errorf("CacheOptions(%q): %ss cached with %+v, want one entry with the slim transform (and the shard's label)", shard, kind, e)
			}
		}
	}

	ns := newNamespace(t, "slim")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := startCache(ctx, t, &rsv1.ExecutorTask{})

	run, runUID := "build", types.UID("6f1c2a7e-0000-4000-8000-000000000001")
	save := &rsv1.SaveToWorkspaceStep{Contents: []rsv1.SaveContent{{SourceDir: "out", DestDir: "out", Paths: []string{"**"}}}}
	et := &rsv1.ExecutorTask{
		ObjectMeta: metav1.ObjectMeta{
			Name: "build-compile-0001", Namespace: ns,
			Labels:          map[string]string{rsv1.LabelRun: run, rsv1.LabelRunUID: string(runUID), rsv1.LabelTask: "compile", rsv1.LabelExecutor: "ex1", "team": "core"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: rsv1.GroupVersion.String(), Kind: "Run", Name: run, UID: runUID, Controller: ptr.To(true)}},
		},
		Spec: rsv1.ExecutorTaskSpec{
			RunName: run, RunUID: string(runUID), TaskName: "compile", Executor: "ex1", ExecutorUID: "0b7e4c1d-0000-4000-8000-000000000002",
			Task: rsv1.Task{
				Name:       "compile",
				Containers: []rsv1.Container{{Image: "busybox:1.36"}},
				Steps: []rsv1.Step{
					{RestoreWorkspace: &rsv1.RestoreWorkspaceStep{DestDir: "."}},
					{Run: &rsv1.RunStep{Command: "make"}},
					{SaveToWorkspace: save},
				},
			},
			Environment:      []rsv1.EnvVar{{Name: "GOFLAGS", Value: "-mod=mod"}},
			WorkspaceSources: []string{"build-fetch-0001"},
		},
	}
	if err := k8s.Create(ctx, et); err != nil {
		t.Fatal(err)
	}
	stored := et.Spec.DeepCopy()
	et.Status = rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseRunning, Steps: []rsv1.StepStatus{{Name: "step-0", Phase: rsv1.StepPhaseSuccess}, {Name: "step-1", Phase: rsv1.StepPhaseRunning}}}
	if err := k8s.Status().Update(ctx, et); err != nil {
		t.Fatal(err)
	}

	cached := &rsv1.ExecutorTask{}
	eventually(t, 10*time.Second, "the cache shows the task's status", func() (bool, error) {
		err := c.Get(ctx, client.ObjectKeyFromObject(et), cached)
		return err == nil && cached.Status.Phase == rsv1.TaskPhaseRunning, nil
	})
	want := rsv1.Task{Name: "compile", Steps: []rsv1.Step{{}, {}, {SaveToWorkspace: save}}}
	if !equality.Semantic.DeepEqual(cached.Spec.Task, want) || cached.Spec.Environment != nil || cached.Spec.WorkspaceSources != nil {
		t.Errorf("cached spec: task %+v, environment %v, sources %v; want only the steps' count and their saves", cached.Spec.Task, cached.Spec.Environment, cached.Spec.WorkspaceSources)
	}
	if saved := cached.SavedArchives(); len(saved) != 0 {
		t.Errorf("saved archives of the cached copy %v, want none: the save step has not run", saved)
	}
	if !equality.Semantic.DeepEqual(cached.Labels, et.Labels) || !equality.Semantic.DeepEqual(cached.OwnerReferences, et.OwnerReferences) ||
		!equality.Semantic.DeepEqual(cached.Status, et.Status) || cached.Spec.RunName != run || cached.Spec.RunUID != string(runUID) ||
		cached.Spec.TaskName != "compile" || cached.Spec.Executor != "ex1" || cached.Spec.ExecutorUID != stored.ExecutorUID {
		t.Errorf("cached copy changed what the manager reads: %+v", cached)
	}

	// The manager's writes: merge patches of what it changes.
	base := cached.DeepCopy()
	cached.Spec.Stop = true
	cached.Labels[rsv1.LabelShard] = "m1"
	if err := k8s.Patch(ctx, cached, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		t.Fatalf("patching from the cached copy: %v", err)
	}
	live := &rsv1.ExecutorTask{}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(et), live); err != nil {
		t.Fatal(err)
	}
	stored.Stop = true
	if !equality.Semantic.DeepEqual(live.Spec, *stored) || live.Labels[rsv1.LabelShard] != "m1" {
		t.Errorf("after a patch from the cached copy the stored spec is\n%+v\nwant\n%+v", live.Spec, *stored)
	}

	// An update from a slim copy would write the definition back empty: refused.
	eventually(t, 10*time.Second, "the cache shows the patch", func() (bool, error) {
		err := c.Get(ctx, client.ObjectKeyFromObject(et), cached)
		return err == nil && cached.Spec.Stop, nil
	})
	if err := k8s.Update(ctx, cached); err == nil {
		t.Errorf("an update from the slim cached copy was accepted, want it refused (the spec is immutable)")
	}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(et), live); err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(live.Spec, *stored) {
		t.Errorf("after the refused update the stored spec is %+v, want it whole", live.Spec)
	}
}
