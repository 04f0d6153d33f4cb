package kubernetes

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor"
)

// The executor's pods as its informer sees them, indexed by their task, and who waits on which.
// Every lookup is O(1) and a pod's change wakes only the waits on that pod, so following a task
// costs the same however many run beside it (a label scan of every pod on every wake-up of every
// task is quadratic in the tasks in flight).

// byTaskUID indexes pods by the ExecutorTask uid label.
const byTaskUID = "taskUID"

func taskUIDIndex(obj any) ([]string, error) {
	if pod, ok := obj.(*corev1.Pod); ok && pod.Labels[rsv1.LabelExecutorTaskUID] != "" {
		return []string{pod.Labels[rsv1.LabelExecutorTaskUID]}, nil
	}
	return nil, nil
}

const (
	// unseenRecheck is how often a wait re-checks a pod the informer has not shown yet: its events
	// are what wake waits, and a pod created and removed while the informer's watch was broken
	// would never have any.
	unseenRecheck = 5 * time.Second
	// createdTrust is how long a pod this process created is taken as it was created, until the
	// informer shows it; past that it is looked up live.
	createdTrust = 30 * time.Second
)

// podIndex holds the informer's pods by task, the pods created but not shown by the informer yet,
// and the waiters per task.
type podIndex struct {
	indexer cache.Indexer

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{} // task uid -> a channel per wait
	created map[string]createdPod                 // task uid -> its pod, until the informer shows it

	lookups atomic.Uint64
}

type createdPod struct {
	pod *corev1.Pod
	at  time.Time
}

func newPodIndex(inf cache.SharedIndexInformer) (*podIndex, error) {
	if err := inf.AddIndexers(cache.Indexers{byTaskUID: taskUIDIndex}); err != nil {
		return nil, fmt.Errorf("indexing pods by task: %w", err)
	}
	ix := &podIndex{indexer: inf.GetIndexer(), waiters: map[string]map[chan struct{}]struct{}{}, created: map[string]createdPod{}}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    ix.changed,
		UpdateFunc: func(_, obj any) { ix.changed(obj) },
		DeleteFunc: ix.changed,
	}); err != nil {
		return nil, fmt.Errorf("watching pods: %w", err)
	}
	return ix, nil
}

// changed wakes the waits on obj's task. The informer has already put obj in the index, so that a
// wait woken here sees it.
func (ix *podIndex) changed(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	uid := pod.Labels[rsv1.LabelExecutorTaskUID]
	if uid == "" {
		return
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	delete(ix.created, uid)
	for ch := range ix.waiters[uid] {
		wake(ch)
	}
}

// wake sends a wake-up on ch unless one is pending already: one look at the pod sees both changes.
func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// wakeNode wakes the waits on the tasks whose pods are on node (its logs can be read again). It
// is rare, once per outage of a node: a walk over the waits will do.
func (ix *podIndex) wakeNode(node string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	for uid, chans := range ix.waiters {
		if pods := ix.cachedPods(uid); len(pods) == 0 || pods[0].Spec.NodeName != node {
			continue
		}
		for ch := range chans {
			wake(ch)
		}
	}
}

// subscribe returns a channel that receives when task uid's pod changes (changes in a row may
// come as one), and the func that ends the subscription. Subscribe before looking at the pod, so
// that no change between the look and the wait is missed.
func (ix *podIndex) subscribe(uid string) (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.waiters[uid] == nil {
		ix.waiters[uid] = map[chan struct{}]struct{}{}
	}
	ix.waiters[uid][ch] = struct{}{}
	return ch, func() {
		ix.mu.Lock()
		defer ix.mu.Unlock()
		delete(ix.waiters[uid], ch)
		if len(ix.waiters[uid]) == 0 {
			delete(ix.waiters, uid)
		}
	}
}

// cachedPods are task uid's pods in the informer (one, unless someone else made a second).
func (ix *podIndex) cachedPods(uid string) []*corev1.Pod {
	objs, err := ix.indexer.ByIndex(byTaskUID, uid)
	if err != nil {
		return nil // only an index that does not exist errs
	}
	pods := make([]*corev1.Pod, 0, len(objs))
	for _, obj := range objs {
		if pod, ok := obj.(*corev1.Pod); ok {
			pods = append(pods, pod)
		}
	}
	return pods
}

// noteCreated records a pod this process created, for the lookups until the informer shows it
// (right after the create, when the task's waits begin, it usually has not yet).
func (ix *podIndex) noteCreated(uid string, pod *corev1.Pod) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	// Checked under the lock that changed takes after the informer indexed the pod: either the
	// index has it here, or changed runs after this and forgets it.
	if len(ix.cachedPods(uid)) == 0 {
		ix.created[uid] = createdPod{pod: pod, at: time.Now()}
	}
}

func (ix *podIndex) forget(uid string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	delete(ix.created, uid)
}

func (ix *podIndex) recentlyCreated(uid string) *corev1.Pod {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	c, ok := ix.created[uid]
	if !ok || time.Since(c.at) > createdTrust {
		return nil
	}
	return c.pod
}

// find looks up task uid's pod: in the informer; else, when this process just created it, as
// created; else live (the informer lags). seen says whether the informer has it, so that its
// changes will wake the waits.
func (d *Driver) find(ctx context.Context, uid string) (pod *corev1.Pod, seen bool, err error) {
	d.pods.lookups.Add(1)
	if pods := d.pods.cachedPods(uid); len(pods) > 0 {
		return pods[0], true, nil
	}
	if pod := d.pods.recentlyCreated(uid); pod != nil {
		return pod, false, nil
	}
	sel := labels.SelectorFromSet(labels.Set{rsv1.LabelExecutorTaskUID: uid})
	list, err := d.client.CoreV1().Pods(d.opts.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, false, fmt.Errorf("listing the pod of task %s: %w", uid, err)
	}
	if len(list.Items) == 0 {
		return nil, false, executor.ErrNotFound
	}
	return &list.Items[0], false, nil
}

// pod finds a task's pod.
func (d *Driver) pod(ctx context.Context, uid string) (*corev1.Pod, error) {
	pod, _, err := d.find(ctx, uid)
	return pod, err
}

// Lookups is how many times the driver looked up a task's pod: every Inspect and Stop, and every
// wake-up of a task's Wait or Following. Divided by the tasks run, it says what following a task
// costs; it stays flat however many tasks run at once.
func (d *Driver) Lookups() uint64 { return d.pods.lookups.Load() }

// changesAt is when pod's state may change with no event of its own (zero: never): an
// unschedulable pod fails once UnschedulableAfter passed, and a pod the informer has not shown
// yet is looked at again now and then.
func (d *Driver) changesAt(pod *corev1.Pod, seen bool) time.Time {
	if !seen {
		return time.Now().Add(unseenRecheck)
	}
	for _, c := range pod.Status.Conditions {
		if unschedulable(c) {
			return pod.CreationTimestamp.Add(d.opts.UnschedulableAfter)
		}
	}
	return time.Time{}
}

func unschedulable(c corev1.PodCondition) bool {
	return c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable
}

// await blocks until changed receives, the time at passes (zero: no time), or ctx ends.
func await(ctx context.Context, changed <-chan struct{}, at time.Time) error {
	var timeout <-chan time.Time
	if !at.IsZero() {
		timer := time.NewTimer(time.Until(at))
		defer timer.Stop()
		timeout = timer.C
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-changed:
	case <-timeout:
	}
	return nil
}

// earliest of two times, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}
