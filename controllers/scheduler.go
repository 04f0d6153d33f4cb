package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// Scheduler picks executors for ready tasks. It serialises picks so that concurrent run reconciles
// never book the same free slot twice, and remembers the ExecutorTasks it created until the cache
// shows them (the "assumed" tasks of kube-scheduler), so that cache lag cannot exceed a limit.
//
// An executor's load is counted, not listed: an event handler on the cache's ExecutorTask informer
// keeps the number of active tasks per executor, and drops an assumed task once the cache shows it,
// under the same lock as the picks. A pick then costs the same whether an executor runs ten tasks or
// a thousand; listing them copied every one out of the cache, for every task scheduled.
type Scheduler struct {
	reader client.Reader
	synced func() bool // the handler has seen every ExecutorTask of the cache's initial list

	mu      sync.Mutex
	assumed map[types.NamespacedName]assumption // ExecutorTasks created but maybe not cached yet
	// counted holds the active ExecutorTasks the cache shows, by the uid of their executor; load
	// is how many each executor has.
	counted map[types.NamespacedName]types.UID
	load    map[types.UID]int
}

type assumption struct {
	executor *rsv1.Executor
	at       time.Time
}

// assumeFor bounds how long a created ExecutorTask counts as assumed. The cache shows a new task
// within milliseconds; one deleted before it did (its run deleted at once) must not hold a slot
// forever.
const assumeFor = 10 * time.Second

// NewScheduler returns a Scheduler reading executors and leases through c (the manager's cache) and
// counting the executors' active tasks from its ExecutorTask informer.
func NewScheduler(ctx context.Context, c cache.Cache) (*Scheduler, error) {
	s := &Scheduler{
		reader:  c,
		assumed: map[types.NamespacedName]assumption{},
		counted: map[types.NamespacedName]types.UID{},
		load:    map[types.UID]int{},
	}
	inf, err := c.GetInformer(ctx, &rsv1.ExecutorTask{})
	if err != nil {
		return nil, fmt.Errorf("watching executor tasks: %w", err)
	}
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.observe(o, false) },
		UpdateFunc: func(_, o any) { s.observe(o, false) },
		DeleteFunc: func(o any) { s.observe(o, true) },
	})
	if err != nil {
		return nil, fmt.Errorf("watching executor tasks: %w", err)
	}
	s.synced = reg.HasSynced
	return s, nil
}

// observe counts what the cache shows of an ExecutorTask: active on its executor or not (final,
// deleted). The cache has it now, so it is no longer assumed.
func (s *Scheduler) observe(o any, deleted bool) {
	if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	et, ok := o.(*rsv1.ExecutorTask)
	if !ok {
		return
	}
	key := types.NamespacedName{Namespace: et.Namespace, Name: et.Name}
	uid, active := types.UID(et.Spec.ExecutorUID), !deleted && et.Status.IsActive()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.assumed, key)
	was, counted := s.counted[key]
	if counted && (!active || was != uid) {
		delete(s.counted, key)
		if s.load[was]--; s.load[was] <= 0 {
			delete(s.load, was)
		}
	}
	if active && (!counted || was != uid) {
		s.counted[key] = uid
		s.load[uid]++
	}
}

// waitSynced waits until the handler has counted the cache's initial list: before, an executor's
// load would look lower than it is (after a restart, its limit could be exceeded).
func (s *Scheduler) waitSynced(ctx context.Context) error {
	if s.synced() {
		return nil
	}
	if !toolscache.WaitForCacheSync(ctx.Done(), s.synced) {
		return fmt.Errorf("waiting for the executor tasks to be counted: %w", context.Cause(ctx))
	}
	return nil
}

// ActiveTasks is the number of active ExecutorTasks of the executor with this uid that the cache shows.
func (s *Scheduler) ActiveTasks(ctx context.Context, executor types.UID) (int, error) {
	if err := s.waitSynced(ctx); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.load[executor], nil
}

// Assumed returns the executor of an ExecutorTask this Scheduler created and the cache does not
// show yet: the task is scheduled there, and creating it again would only find it.
func (s *Scheduler) Assumed(key types.NamespacedName) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.assumed[key]
	if !ok || time.Since(a.at) > assumeFor {
		return "", false
	}
	return a.executor.Name, true
}

// NoExecutorError says that no executor can take the task now.
type NoExecutorError struct{ Reason string }

func (e *NoExecutorError) Error() string { return "no executor available: " + e.Reason }

// Schedule picks an executor for the task and creates its ExecutorTask (named etName) there with
// create. The slot is reserved under the scheduler's lock and the create runs outside it, so that
// concurrent run reconciles neither book one free slot twice nor wait on each other's round trips.
// create returns false when the ExecutorTask already existed (it then holds no new slot). A task
// created a moment ago and not cached yet keeps its executor: create then finds it and adopts it.
func (s *Scheduler) Schedule(ctx context.Context, namespace string, task *rsv1.Task, etName string, create func(*rsv1.Executor) (bool, error)) error {
	key := types.NamespacedName{Namespace: namespace, Name: etName}
	if err := s.waitSynced(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	ex, ours := s.assumed[key].executor, false
	var err error
	if ex == nil {
		if ex, err = s.pick(ctx, namespace, task); err == nil {
			ex = ex.DeepCopy()
			s.assumed[key] = assumption{executor: ex, at: time.Now()}
			ours = true
		}
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	created, err := create(ex)
	if ours && (err != nil || !created) {
		s.mu.Lock()
		delete(s.assumed, key)
		s.mu.Unlock()
	}
	return err
}

func (s *Scheduler) pick(ctx context.Context, namespace string, task *rsv1.Task) (*rsv1.Executor, error) {
	// Read only: the cache's own objects, not copies (Schedule copies the one it picks).
	var list rsv1.ExecutorList
	if err := s.reader.List(ctx, &list, client.InNamespace(namespace), client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("listing executors: %w", err)
	}
	if len(list.Items) == 0 {
		return nil, &NoExecutorError{Reason: "no executor is registered in namespace " + namespace}
	}
	var sel labels.Selector
	if task.ExecutorSelector != nil {
		var err error
		if sel, err = metav1.LabelSelectorAsSelector(task.ExecutorSelector); err != nil {
			return nil, &NoExecutorError{Reason: fmt.Sprintf("invalid executorSelector: %v", err)}
		}
	}
	privileged := slices.ContainsFunc(task.Containers, func(c rsv1.Container) bool { return c.IsPrivileged() })
	now := time.Now()
	// Executors that refuse privileged containers are the fallback of a privileged task: when no live
	// executor allows them, the task goes to one that refuses it, and fails there with the executor's
	// clear message instead of waiting for an executor that may never come.
	var best, fallback *rsv1.Executor
	bestLoad, fallbackLoad := 0, 0
	rejected := map[string]int{}
	for i := range list.Items {
		ex := &list.Items[i]
		switch {
		case ex.DeletionTimestamp != nil:
			rejected["being removed"]++
			continue
		case ex.Spec.Unschedulable:
			rejected["unschedulable (draining or cordoned)"]++
			continue
		case task.Arch != nil && len(ex.Spec.Archs) > 0 && !slices.Contains(ex.Spec.Archs, *task.Arch):
			rejected["arch "+*task.Arch+" not supported"]++
			continue
		case sel != nil && !sel.Matches(labels.Set(ex.Labels)):
			rejected["executorSelector does not match"]++
			continue
		}
		refuses := privileged && !ex.Spec.AllowPrivilegedContainers
		live, err := s.live(ctx, ex, now)
		if err != nil {
			return nil, err
		}
		if !live {
			rejected["lease expired"]++
			continue
		}
		load := s.loadOf(ex)
		if ex.Spec.ActiveTasksLimit > 0 && load >= int(ex.Spec.ActiveTasksLimit) {
			rejected["at activeTasksLimit"]++
			continue
		}
		switch {
		case refuses:
			if fallback == nil || load < fallbackLoad || load == fallbackLoad && ex.Name < fallback.Name {
				fallback, fallbackLoad = ex, load
			}
		case best == nil || load < bestLoad || load == bestLoad && ex.Name < best.Name:
			best, bestLoad = ex, load
		}
	}
	if best == nil && fallback != nil {
		return fallback, nil
	}
	if best == nil {
		var why []string
		for reason, n := range rejected {
			why = append(why, fmt.Sprintf("%d %s", n, reason))
		}
		slices.Sort(why)
		return nil, &NoExecutorError{Reason: fmt.Sprintf("%d executors: %s", len(list.Items), strings.Join(why, ", "))}
	}
	return best, nil
}

// live reports whether the executor's Lease is held and not expired.
func (s *Scheduler) live(ctx context.Context, ex *rsv1.Executor, now time.Time) (bool, error) {
	var lease coordinationv1.Lease
	if err := s.reader.Get(ctx, types.NamespacedName{Namespace: ex.Namespace, Name: ex.Name}, &lease, client.UnsafeDisableDeepCopy); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("reading lease of executor %s: %w", ex.Name, err)
	}
	return leaseLive(&lease, ex.Name, now), nil
}

// leaseLive reports whether a process of the executor holds its Lease (rsv1.LeaseHolder; which
// process is the executor's concern) and renewed it within its duration. A Lease held by someone
// else is a sibling cleaning up after a dead executor; one held by nobody was released by an
// executor that stopped.
func leaseLive(lease *coordinationv1.Lease, executor string, now time.Time) bool {
	if name, _ := rsv1.ParseLeaseHolder(ptr.Deref(lease.Spec.HolderIdentity, "")); name != executor {
		return false
	}
	return !leaseExpiry(lease).IsZero() && now.Before(leaseExpiry(lease))
}

// leaseExpiry is when the Lease expires; zero when it never was renewed.
func leaseExpiry(lease *coordinationv1.Lease) time.Time {
	if lease.Spec.RenewTime == nil || lease.Spec.LeaseDurationSeconds == nil {
		return time.Time{}
	}
	return lease.Spec.RenewTime.Add(time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second)
}

// loadOf counts the executor's active tasks: those the cache shows plus those created and not
// cached yet. Called with mu held, which observe takes too: a task moves from assumed to counted
// at once, never counted twice or not at all.
func (s *Scheduler) loadOf(ex *rsv1.Executor) int {
	n := s.load[ex.UID]
	now := time.Now()
	for key, a := range s.assumed {
		switch {
		case now.Sub(a.at) > assumeFor:
			delete(s.assumed, key)
		case a.executor.UID == ex.UID:
			n++
		}
	}
	return n
}
