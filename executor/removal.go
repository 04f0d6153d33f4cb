package executor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// startGate says whether the executor may start a task: only while it holds its Lease by its own
// clock, and never again once it saw its removal. A sibling claims an expired Lease only after the
// Lease's duration from the last renewal; the gate shuts a safety margin before that, counted from
// before the renewal was sent, so that no task starts while another executor may be removing this
// one's pods (at most once over liveness).
type startGate struct {
	mu      sync.Mutex
	okUntil time.Time
	closed  string // why the executor never starts a task again
}

// renewed records a renewal of the Lease, sent at sent.
func (g *startGate) renewed(sent time.Time, leaseDuration time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	// The margin covers the clock skew between members and the time from this check to the
	// container's creation.
	g.okUntil = sent.Add(leaseDuration - leaseDuration/4)
}

// close shuts the gate for good.
func (g *startGate) close(why string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed == "" {
		g.closed = why
	}
}

// shut says why no task may start now, or "".
func (g *startGate) shut() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.closed != "":
		return g.closed
	case g.okUntil.IsZero():
		return "the executor has not renewed its Lease yet"
	case time.Now().After(g.okUntil):
		return fmt.Sprintf("the executor's Lease was last renewed before %s and may have expired; a sibling may be removing its tasks", g.okUntil.Format(time.RFC3339Nano))
	}
	return ""
}

// completeRemoval carries out an administrator's deletion of this executor (kubectl delete executor):
// no task starts any more, every container of its tasks is removed and known gone, and only then is
// FinalizerExecutorTasks released, which lets the manager fail the unfinished tasks with
// ExecutorRemoved. It returns errRemoved once done; on another error the Executor stays as it is (its
// tasks unfinished) and the heartbeat tries again. Each attempt has half a Lease to finish, so that
// a container or pod slow to go never stops the renewals.
func (e *Executor) completeRemoval(ctx context.Context, ex *rsv1.Executor) error {
	e.gate.close("the Executor is being deleted")
	ctx, cancel := context.WithTimeout(ctx, e.opts.LeaseDuration/2)
	defer cancel()
	log := ctrl.LoggerFrom(ctx)
	log.Info("the Executor is being deleted: removing its tasks' containers before releasing it")
	if err := e.removeOwn(ctx); err != nil {
		return fmt.Errorf("removing the tasks' containers: %w", err)
	}
	if err := e.releaseExecutor(ctx, ex.Name, ex.UID); err != nil {
		return err
	}
	log.Info("the tasks' containers are gone: the Executor is released")
	return errRemoved
}

// removeOwn removes every container (or pod) of this executor's tasks and returns once they are known
// gone. The runners end first, so that no container is being created while they are listed.
func (e *Executor) removeOwn(ctx context.Context) error {
	e.mu.Lock()
	for _, r := range e.runners {
		r.cancel()
	}
	e.mu.Unlock()
	if err := e.waitRunners(ctx); err != nil {
		return fmt.Errorf("waiting for the tasks' runners to stop: %w", err)
	}
	if remover, ok := e.driver.(GroupRemover); ok {
		return remover.RemoveExecutor(ctx, e.opts.Name)
	}
	uids, err := e.driver.Tasks(ctx)
	if err != nil {
		return err
	}
	for _, uid := range uids {
		if err := e.driver.Remove(ctx, uid); err != nil {
			return err
		}
	}
	if left, err := e.driver.Tasks(ctx); err != nil {
		return err
	} else if len(left) > 0 {
		return fmt.Errorf("the containers of tasks %v are still there", left)
	}
	return nil
}

// releaseExecutor deletes an Executor, if its deletion has not started, and removes
// FinalizerExecutorTasks from it. Call it only once its tasks' containers are known gone. An Executor
// registered anew under the name (another uid) is left alone.
func (e *Executor) releaseExecutor(ctx context.Context, name string, uid types.UID) error {
	ex := &rsv1.Executor{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.opts.Namespace}}
	err := e.client.Delete(ctx, ex, client.Preconditions{UID: &uid})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) { // gone, or another registration
		return nil
	}
	if err != nil {
		return fmt.Errorf("deleting executor %s: %w", name, err)
	}
	err = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		cur := &rsv1.Executor{}
		if err := e.reader.Get(ctx, client.ObjectKeyFromObject(ex), cur); err != nil {
			return err
		}
		if cur.UID != uid || !controllerutil.RemoveFinalizer(cur, rsv1.FinalizerExecutorTasks) {
			return nil
		}
		return e.client.Update(ctx, cur)
	})
	if client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("releasing executor %s: %w", name, err)
	}
	return nil
}

// reapLoop cleans up after dead siblings beside the heartbeat, so that a slow apiserver or a pod
// stuck terminating never keeps this member from renewing its own Lease.
func (e *Executor) reapLoop(ctx context.Context) {
	if _, ok := e.driver.(GroupRemover); !ok || e.opts.Group == "" || e.opts.Permanent {
		return
	}
	tick := time.NewTicker(e.opts.RenewInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if e.gate.shut() != "" {
			continue // not live itself: it may be the one being reaped
		}
		e.reapGroup(ctx)
	}
}

// reapSibling removes a dead sibling's pods and secrets, waits until they are gone, and then
// releases its Executor, all within the claim on its Lease (one Lease duration): a pod its node does
// not confirm gone keeps the sibling's tasks unfinished, and the next claim tries again.
func (e *Executor) reapSibling(ctx context.Context, remover GroupRemover, ex *rsv1.Executor) error {
	ctx, cancel := context.WithTimeout(ctx, e.opts.LeaseDuration)
	defer cancel()
	if err := remover.RemoveExecutor(ctx, ex.Name); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("its pods are not gone yet, its tasks stay unfinished until they are: %w", err)
		}
		return err
	}
	return e.releaseExecutor(ctx, ex.Name, ex.UID)
}
