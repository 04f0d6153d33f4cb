package controllers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// ack tells et's executor that the run's status records the outcome v of et's fetch: the executor
// may drop its copy of the task's logs and archives, and a member of a group may leave once it has
// no copy left. The executor is told nothing of a lost task, nor when it is gone (no copy to drop).
//
// The ack is idempotent and best-effort; one that does not arrive (the executor down, restarted,
// the network) is sent again: after the executor's backoff, at once when its Executor's spec changes
// (a member cordons itself to drain and leave: unacked), and by the next manager for every final
// task it finds (Outcomes is memory). A member waiting to leave therefore leaves about one round
// trip after it cordons; and one that could not be told before it stopped leaves nothing unstored
// behind it: the run's status records what was stored.
func (r *ExecutorTaskReconciler) ack(ctx context.Context, et *rsv1.ExecutorTask, v string) (ctrl.Result, error) {
	if v == rsv1.FetchedLost || r.Outcomes.isAcked(et) {
		return ctrl.Result{}, nil
	}
	ex := &rsv1.Executor{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: et.Namespace, Name: et.Spec.Executor}, ex)
	if apierrors.IsNotFound(err) || err == nil && (executorRemoved(ex, et) || ex.Spec.Endpoint == "") {
		r.Outcomes.ack(et)
		return ctrl.Result{}, nil
	}
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("reading executor %s: %w", et.Spec.Executor, err)
	}
	release, wait := r.Slots.acquire(ex.UID, client.ObjectKeyFromObject(et))
	if release == nil {
		return ctrl.Result{RequeueAfter: wait}, nil
	}
	err = r.sendAck(ctx, et, ex.Spec.Endpoint)
	if errors.Is(err, errNotYet) {
		release(false)
		return ctrl.Result{RequeueAfter: jitter(busyRetry)}, nil
	}
	if retry := release(err != nil); err != nil {
		ctrl.LoggerFrom(ctx).Info("telling the executor that a task's copy may go failed; trying again later",
			"executor", klog.KObj(ex), "executorTask", klog.KObj(et), "error", err.Error())
		return ctrl.Result{RequeueAfter: retry}, nil
	}
	r.Outcomes.ack(et)
	return ctrl.Result{}, nil
}

// errNotYet is a 409 from the executor: it does not see the task final yet (its cache is behind).
var errNotYet = errors.New("the executor does not see the task final yet")

// sendAck posts the ack of et to its executor's endpoint (executor/server.go: serveFetched). A 404
// is an executor with no such task: it keeps nothing of it.
func (r *ExecutorTaskReconciler) sendAck(ctx context.Context, et *rsv1.ExecutorTask, endpoint string) error {
	if r.Acking != nil {
		if err := r.Acking(client.ObjectKeyFromObject(et)); err != nil {
			return err
		}
	}
	u := fmt.Sprintf("%s/v1/tasks/%s/fetched?uid=%s", endpoint, et.Name, url.QueryEscape(string(et.UID)))
	return r.withAccess(ctx, et.Namespace, func(acc *executorAccess) error {
		resp, err := acc.do(ctx, http.MethodPost, u)
		if err != nil {
			return fmt.Errorf("posting %s: %w", u, err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		switch {
		case resp.StatusCode >= 200 && resp.StatusCode < 300, resp.StatusCode == http.StatusNotFound:
			return nil
		case resp.StatusCode == http.StatusUnauthorized:
			return fmt.Errorf("posting %s: %w", u, errUnauthorized)
		case resp.StatusCode == http.StatusConflict:
			return errNotYet
		}
		return fmt.Errorf("posting %s: %s", u, resp.Status)
	})
}

// fetchesRecorded enqueues the ExecutorTasks whose fetch a write of their run's status recorded
// (lost ones too: what Outcomes keeps of them goes).
func fetchesRecorded(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	old, ok := e.ObjectOld.(*rsv1.Run)
	run, ok2 := e.ObjectNew.(*rsv1.Run)
	if !ok || !ok2 {
		return
	}
	for _, ts := range run.Status.Tasks {
		if ts.Fetched == "" || ts.FromRun != "" || ts.ExecutorTask == "" {
			continue
		}
		if taskIn(&old.Status, ts.Name).Fetched != "" {
			continue
		}
		q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: run.Namespace, Name: ts.ExecutorTask}})
	}
}

// endedTasksOf enqueues the ExecutorTasks of a run's ended tasks (not those kept from another
// run): the fetcher found no run to record their fetch in while the run was not in this replica's
// cache, and looks again now that it is (a fetch to do, or an executor to tell).
func endedTasksOf(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
	run, ok := e.Object.(*rsv1.Run)
	if !ok {
		return
	}
	for _, ts := range run.Status.Tasks {
		if ts.ExecutorTask != "" && ts.FromRun == "" && ts.Phase.IsFinal() {
			q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: run.Namespace, Name: ts.ExecutorTask}})
		}
	}
}

// unacked maps an Executor to its final tasks that it was not told of yet, and lifts its backoff:
// it changed, and is asked again at once.
func (r *ExecutorTaskReconciler) unacked(ctx context.Context, o client.Object) []reconcile.Request {
	var list rsv1.ExecutorTaskList
	err := r.Client.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingLabels{rsv1.LabelExecutor: o.GetName()}, client.UnsafeDisableDeepCopy)
	if err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		et := &list.Items[i]
		if et.Status.Phase.IsFinal() && et.Annotations[rsv1.AnnotationFetched] == "" && !r.Outcomes.isAcked(et) {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(et)})
		}
	}
	if len(reqs) > 0 {
		r.Slots.reset(o.GetUID())
	}
	return reqs
}
