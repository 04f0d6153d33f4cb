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
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// Scheduler picks executors for ready tasks. It serialises picks so that concurrent run reconciles
// never book the same free slot twice, and remembers the ExecutorTasks it created until the cache
// shows them (the "assumed" tasks of kube-scheduler), so that cache lag cannot exceed a limit.
type Scheduler struct {
	client client.Client

	mu      sync.Mutex
	assumed map[types.NamespacedName]assumption // ExecutorTasks created but maybe not cached yet
}

type assumption struct {
	executor *rsv1.Executor
	at       time.Time
}

// assumeFor bounds how long a created ExecutorTask counts as assumed. The cache shows a new task
// within milliseconds; one deleted before it did (its run deleted at once) must not hold a slot
// forever.
const assumeFor = 10 * time.Second

// NewScheduler returns a Scheduler reading executors, leases and tasks through c (a cached client).
func NewScheduler(c client.Client) *Scheduler {
	return &Scheduler{client: c, assumed: map[types.NamespacedName]assumption{}}
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
	var list rsv1.ExecutorList
	if err := s.client.List(ctx, &list, client.InNamespace(namespace)); err != nil {
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
		load, err := s.load(ctx, ex)
		if err != nil {
			return nil, err
		}
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
	if err := s.client.Get(ctx, types.NamespacedName{Namespace: ex.Namespace, Name: ex.Name}, &lease); err != nil {
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

// load counts the executor's active tasks: those in the cache plus those created and not cached yet.
// The assumed tasks are checked against the cache before it is listed: a task that reaches the cache
// in between is then counted twice (a slot left free a moment longer), never not at all.
func (s *Scheduler) load(ctx context.Context, ex *rsv1.Executor) (int, error) {
	n := 0
	now := time.Now()
	for key, a := range s.assumed {
		if now.Sub(a.at) > assumeFor {
			delete(s.assumed, key)
			continue
		}
		if a.executor.UID != ex.UID {
			continue
		}
		// Once the cache has the task (active, so counted below, or already final), it is no longer assumed.
		if err := s.client.Get(ctx, key, &rsv1.ExecutorTask{}); err == nil {
			delete(s.assumed, key)
			continue
		}
		n++
	}
	var tasks rsv1.ExecutorTaskList
	if err := s.client.List(ctx, &tasks, client.InNamespace(ex.Namespace), client.MatchingFields{indexActiveOnExecutor: ex.Name}); err != nil {
		return 0, fmt.Errorf("listing tasks of executor %s: %w", ex.Name, err)
	}
	for i := range tasks.Items {
		if tasks.Items[i].Spec.ExecutorUID == string(ex.UID) {
			n++
		}
	}
	return n, nil
}
