package manager_test

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/manager"
)

// TestTheCacheKeepsNoManagedFields: the manager's cache holds objects without their managedFields
// (a third of the heap a live run cost it), and writes made from such a copy keep the stored ones: an
// update that carries none, a merge patch of the status. The controllers' suites run on the same
// cache options, so every behaviour they test holds with stripped copies too.
func TestTheCacheKeepsNoManagedFields(t *testing.T) {
	ns := newNamespace(t, "cache")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := manager.CacheOptions("")
	opts.Scheme = manager.Scheme()
	c, err := cache.New(env.Config, opts)
	if err != nil {
		t.Fatal(err)
	}
	// Informers for the kinds read, started with the cache.
	for _, o := range []client.Object{&rsv1.ChangeGroup{}, &rsv1.Executor{}} {
		if _, err := c.GetInformer(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	go func() { _ = c.Start(ctx) }()
	if !c.WaitForCacheSync(ctx) {
		t.Fatal("the cache did not sync")
	}

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
