package controllers

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/shard"
)

// How a change group sees its runs when runs live on different shards.
//
// The runs of one group hash to every shard (the ring's key is the run, not its group: a hot group
// would otherwise load one replica), and a replica's Run cache holds only its own. The group's
// owner needs, of every run of the group, enough to count the queued ones, start them oldest first
// and tell phantoms from runs: name, uid, creation time, generation, deletion, and (from spec and
// status) whether the run is queued, suspended or stopped. The options were:
//
//   - a live list of the group's runs per reconcile (label changegroup.runservice.dev/<group>):
//     measured on runs of one task, 2.4 KB a run as whole runs and 1.6 KB as metadata (mostly
//     managedFields), so 24 MB per reconcile for a group with 10,000 live runs, and a reconcile
//     follows every event of every run of the group;
//   - a metadata-only informer of the runs that are not final (PartialObjectMetadata, selected by
//     the absence of the final-phase label, managedFields, annotations and other labels dropped):
//     no request per reconcile, in memory only name, uid, versions, times and group labels of each
//     live run, and its events are how the owner learns that another shard's run was created,
//     changed or ended;
//   - a `queued` label: one more write per run at its start, and still no spec.suspend.
//
// The metadata informer wins. What metadata does not say (phase, suspend, stop) is read live, and
// only for runs the controller must decide on: a queued run it may start (at most the free slots,
// walking oldest first) or an active run it has not yet seen unsuspended. A read holds while the run
// does not change (its resourceVersion), which a run waiting in the queue does not; and whether it
// is suspended holds for its generation, since suspend is a spec field.

// groupRun is what the changegroup controller knows of one run of a group.
type groupRun struct {
	Name       string
	UID        types.UID
	Generation int64
	Created    metav1.Time
	Deleting   bool
	// State is nil when it is not known without reading the run.
	State *runState
	// NoPhantom says that an active entry of the run is known to be no phantom: the run is not
	// suspended (at its generation), or not queued.
	NoPhantom bool
}

// runState is what admission needs of a run's spec and status.
type runState struct {
	// Queued: the run has not started (phase "" or Queued).
	Queued    bool
	Suspended bool
	Stopped   bool
}

// suspect says whether an active run does not look started: it is suspended and still queued.
// (A finished run is released by the run controller itself.)
func (s runState) suspect() bool { return s.Suspended && s.Queued }

func stateOf(run *rsv1.Run) *runState {
	return &runState{
		Queued:    run.Status.Phase == "" || run.Status.Phase == rsv1.RunPhaseQueued,
		Suspended: run.IsSuspended(),
		Stopped:   run.IsStopped(),
	}
}

// groupRuns is where the changegroup controller finds a group's runs.
type groupRuns interface {
	// List returns the group's runs the source holds: at least every run that is not final.
	List(ctx context.Context, namespace, group string) ([]groupRun, error)
	// Read reads a run live; ok is false when it does not exist.
	Read(ctx context.Context, namespace, name string) (st runState, ok bool, err error)
}

// cachedGroupRuns finds a group's runs in the manager's Run cache, which holds every run when the
// manager is not sharded.
type cachedGroupRuns struct {
	cache client.Reader
	live  client.Reader
}

func (c *cachedGroupRuns) List(ctx context.Context, namespace, group string) ([]groupRun, error) {
	var runs rsv1.RunList
	if err := c.cache.List(ctx, &runs, client.InNamespace(namespace), client.MatchingFields{indexChangeGroups: group}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	out := make([]groupRun, len(runs.Items))
	for i := range runs.Items {
		run := &runs.Items[i]
		st := stateOf(run)
		out[i] = groupRun{Name: run.Name, UID: run.UID, Generation: run.Generation, Created: run.CreationTimestamp, Deleting: run.DeletionTimestamp != nil, State: st, NoPhantom: !st.suspect()}
	}
	return out, nil
}

func (c *cachedGroupRuns) Read(ctx context.Context, namespace, name string) (runState, bool, error) {
	return readRunState(ctx, c.live, namespace, name)
}

func readRunState(ctx context.Context, live client.Reader, namespace, name string) (runState, bool, error) {
	run := &rsv1.Run{}
	if err := live.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, run); err != nil {
		if apierrors.IsNotFound(err) {
			return runState{}, false, nil
		}
		return runState{}, false, fmt.Errorf("reading run %s: %w", name, err)
	}
	return *stateOf(run), true, nil
}

// runMetaGVK is a Run's kind, for metadata-only objects of it.
var runMetaGVK = rsv1.GroupVersion.WithKind("Run")

func newRunMeta() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(runMetaGVK)
	return m
}

// indexRunMetaGroups indexes the metadata of runs by their change groups' labels.
const indexRunMetaGroups = "metadata.changeGroups"

// shardedGroupRuns finds a group's runs, whatever shard they are on, in a metadata-only informer of
// every run that is not final, and reads live what metadata does not say when it must.
type shardedGroupRuns struct {
	cache cache.Cache // metadata of the runs that are not final, of every shard
	live  client.Reader

	mu    sync.Mutex
	known map[types.UID]knownState // what a live read said, at the version it read
}

type knownState struct {
	generation      int64
	resourceVersion string
	state           runState
}

// newShardedGroupRuns builds the metadata informer's cache (its own: the manager's selects only
// this replica's runs) and adds it to mgr, which starts it on every replica.
func newShardedGroupRuns(ctx context.Context, mgr ctrl.Manager) (*shardedGroupRuns, error) {
	notFinal, err := labels.NewRequirement(arv1.LabelPhase, selection.DoesNotExist, nil)
	if err != nil {
		return nil, err
	}
	c, err := cache.New(mgr.GetConfig(), cache.Options{
		Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper(),
		ByObject: map[client.Object]cache.ByObject{
			newRunMeta(): {Label: labels.NewSelector().Add(*notFinal), Transform: slimRunMeta},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("creating the cache of runs' metadata: %w", err)
	}
	if err := c.IndexField(ctx, newRunMeta(), indexRunMetaGroups, func(o client.Object) []string {
		return groupsOfLabels(o.GetLabels())
	}); err != nil {
		return nil, fmt.Errorf("indexing runs' metadata by change group: %w", err)
	}
	s := &shardedGroupRuns{cache: c, live: mgr.GetAPIReader(), known: map[types.UID]knownState{}}
	inf, err := c.GetInformer(ctx, newRunMeta())
	if err != nil {
		return nil, fmt.Errorf("watching runs' metadata: %w", err)
	}
	// A run gone from the informer (deleted, or final) is not asked about again.
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{DeleteFunc: func(o any) {
		if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
			o = d.Obj
		}
		if m, ok := o.(client.Object); ok {
			s.mu.Lock()
			delete(s.known, m.GetUID())
			s.mu.Unlock()
		}
	}}); err != nil {
		return nil, fmt.Errorf("watching runs' metadata: %w", err)
	}
	if err := mgr.Add(replicaCache{c}); err != nil {
		return nil, err
	}
	return s, nil
}

// slimRunMeta keeps of a run's metadata what the changegroup controller reads: managedFields,
// most of what the apiserver sends, go.
func slimRunMeta(o any) (any, error) {
	m, ok := o.(*metav1.PartialObjectMetadata)
	if !ok {
		return o, nil
	}
	m.ManagedFields, m.Annotations, m.OwnerReferences, m.Finalizers = nil, nil, nil, nil // resourceVersion stays: it dates a live read
	var groups map[string]string
	for k, v := range m.Labels {
		if strings.HasPrefix(k, arv1.LabelChangeGroupPrefix) {
			if groups == nil {
				groups = map[string]string{}
			}
			groups[k] = v
		}
	}
	m.Labels = groups
	return m, nil
}

func groupsOfLabels(l map[string]string) []string {
	var out []string
	for k := range l {
		if g, ok := strings.CutPrefix(k, arv1.LabelChangeGroupPrefix); ok {
			out = append(out, g)
		}
	}
	return out
}

func (s *shardedGroupRuns) List(ctx context.Context, namespace, group string) ([]groupRun, error) {
	list := &metav1.PartialObjectMetadataList{}
	list.SetGroupVersionKind(rsv1.GroupVersion.WithKind("RunList"))
	if err := s.cache.List(ctx, list, client.InNamespace(namespace), client.MatchingFields{indexRunMetaGroups: group}, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	out := make([]groupRun, len(list.Items))
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range list.Items {
		m := &list.Items[i]
		out[i] = groupRun{Name: m.Name, UID: m.UID, Generation: m.Generation, Created: m.CreationTimestamp, Deleting: m.DeletionTimestamp != nil}
		k, ok := s.known[m.UID]
		if !ok {
			continue
		}
		// The phase changes without a new generation (a run admitted starts, then ends and leaves
		// its groups before it is labelled final): a state holds only for the version read.
		if k.resourceVersion == m.ResourceVersion {
			st := k.state
			out[i].State = &st
		}
		out[i].NoPhantom = k.generation == m.Generation && !k.state.Suspended
	}
	return out, nil
}

func (s *shardedGroupRuns) Read(ctx context.Context, namespace, name string) (runState, bool, error) {
	run := &rsv1.Run{}
	if err := s.live.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, run); err != nil {
		if apierrors.IsNotFound(err) {
			return runState{}, false, nil
		}
		return runState{}, false, fmt.Errorf("reading run %s: %w", name, err)
	}
	st := *stateOf(run)
	s.mu.Lock()
	s.known[run.UID] = knownState{generation: run.Generation, resourceVersion: run.ResourceVersion, state: st}
	s.mu.Unlock()
	return st, true, nil
}

// groupsOfRunMeta maps a run's metadata to its change groups.
func groupsOfRunMeta(_ context.Context, o client.Object) []reconcile.Request {
	groups := groupsOfLabels(o.GetLabels())
	reqs := make([]reconcile.Request, 0, len(groups))
	for _, g := range groups {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: g}})
	}
	return reqs
}

// ringPoll is how often a replica looks whether the ring changed.
const ringPoll = 500 * time.Millisecond

// ringChanges enqueues every change group whenever the ring view shows changes: a group whose owner
// changed is then reconciled by its new owner, even when none of its runs changes.
func ringChanges(v shard.View, groups client.Reader) source.Source {
	return source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		go func() {
			last := v.Ring()
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(ringPoll):
				}
				now := v.Ring()
				if now == last {
					continue
				}
				last = now
				var list rsv1.ChangeGroupList
				if err := groups.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
					ctrl.LoggerFrom(ctx).Error(err, "listing change groups after the shard ring changed")
					last = nil // try again
					continue
				}
				for i := range list.Items {
					q.Add(reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
				}
			}
		}()
		return nil
	})
}

// ownsGroup says whether this replica reconciles the change group: the owner of Key(namespace,
// group) on the ring the runs are sharded by, or every group when the manager is not sharded.
func ownsGroup(v shard.View, key types.NamespacedName) bool {
	return v == nil || shard.Owns(v, shard.Key(key.Namespace, key.Name))
}
