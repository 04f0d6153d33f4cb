package controllers

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// ExecutorReconciler reports executors' liveness: Ready from the executor's Lease, the last
// heartbeat, and the number of active tasks. A silent executor only becomes not Ready: its tasks stay
// as they are until it comes back or is deleted (the executor is the source of truth).
type ExecutorReconciler struct {
	Client   client.Client
	Recorder recorder.EventRecorder
	// Tasks counts the executors' active tasks (the Scheduler's count, kept from the cache's events).
	Tasks *Scheduler
	// Sharded: the cache holds only this replica's shard of the ExecutorTasks, so the count the
	// executor writes on its Lease is reported instead, when there is one.
	Sharded bool

	mu        sync.Mutex
	lastWrite map[types.NamespacedName]time.Time
	writes    lastWrites
}

// statusInterval spaces the writes of an executor's informational status (active tasks, heartbeat);
// a change of readiness is written at once.
const statusInterval = 5 * time.Second

var _ reconcile.Reconciler = (*ExecutorReconciler)(nil)

// +kubebuilder:rbac:groups=runservice.dev,resources=executors,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=runservice.dev,resources=executors/status,verbs=patch
// +kubebuilder:rbac:groups=runservice.dev,resources=executortasks,verbs=get;list;watch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch

// Reconcile implements reconcile.Reconciler.
func (r *ExecutorReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ex := &rsv1.Executor{}
	if err := r.Client.Get(ctx, req.NamespacedName, ex); err != nil {
		if apierrors.IsNotFound(err) {
			r.writes.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if r.writes.stale(ex) {
		return ctrl.Result{RequeueAfter: cacheLagRetry}, nil // what it says is about to be cached
	}
	if ex.DeletionTimestamp != nil {
		return ctrl.Result{}, r.forceRemove(ctx, ex)
	}
	base := ex.DeepCopy()
	old := &base.Status
	now := time.Now()
	var result ctrl.Result

	lease := &coordinationv1.Lease{}
	err := r.Client.Get(ctx, req.NamespacedName, lease)
	switch {
	case apierrors.IsNotFound(err):
		r.setReady(ex, metav1.ConditionFalse, "NoLease", "the executor holds no Lease")
	case err != nil:
		return ctrl.Result{}, fmt.Errorf("reading lease: %w", err)
	case leaseLive(lease, ex.Name, now):
		msg := "the executor renews its Lease"
		if _, instance := rsv1.ParseLeaseHolder(*lease.Spec.HolderIdentity); instance != "" {
			msg += " (process " + instance + ")" // which one, when another refuses to run under its name
		}
		r.setReady(ex, metav1.ConditionTrue, "LeaseRenewed", msg)
		result.RequeueAfter = leaseExpiry(lease).Sub(now) + 100*time.Millisecond
	case strings.HasPrefix(ptr.Deref(lease.Spec.HolderIdentity, ""), rsv1.LeaseHolderCleanupPrefix):
		by := strings.TrimPrefix(*lease.Spec.HolderIdentity, rsv1.LeaseHolderCleanupPrefix)
		r.setReady(ex, metav1.ConditionFalse, "BeingRemoved", fmt.Sprintf("the executor's Lease expired; %s is removing its pods, and its tasks stay unfinished until their nodes confirm the pods gone", by))
	default:
		r.setReady(ex, metav1.ConditionFalse, "LeaseExpired", "the executor stopped renewing its Lease; its tasks stay as they are until it comes back or is deleted")
	}
	if err == nil && lease.Spec.RenewTime != nil {
		t := metav1.NewTime(lease.Spec.RenewTime.Time)
		ex.Status.LastHeartbeatTime = &t
	}

	active, err := r.activeTasks(ctx, ex, lease)
	if err != nil {
		return ctrl.Result{}, err
	}
	ex.Status.ActiveTasks = int32(active)
	if equality.Semantic.DeepEqual(old, &ex.Status) {
		return result, nil
	}
	readinessChanged := !equality.Semantic.DeepEqual(old.Conditions, ex.Status.Conditions)
	r.mu.Lock()
	last := r.lastWrite[req.NamespacedName]
	r.mu.Unlock()
	if wait := statusInterval - now.Sub(last); !readinessChanged && wait > 0 {
		if result.RequeueAfter == 0 || wait < result.RequeueAfter {
			result.RequeueAfter = wait
		}
		return result, nil
	}
	// Locked on the resourceVersion read, like the run's status: the conditions' transition times
	// come from the status read, so a stale one must not overwrite a newer one.
	if err := r.Client.Status().Patch(ctx, ex, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return requeueOnConflict(client.IgnoreNotFound(err), "writing executor status")
	}
	r.writes.wrote(ex)
	r.mu.Lock()
	if r.lastWrite == nil {
		r.lastWrite = map[types.NamespacedName]time.Time{}
	}
	r.lastWrite[req.NamespacedName] = now
	r.mu.Unlock()
	return result, nil
}

// forceRemove releases a deleted Executor's FinalizerExecutorTasks without the executor's confirmation
// that its containers are gone, when an administrator asked for it (AnnotationForceRemove): for a host
// that will never come back. Its unfinished tasks then fail with ExecutorRemoved and their runs move
// on, so the Warning Event says who answers for the containers.
func (r *ExecutorReconciler) forceRemove(ctx context.Context, ex *rsv1.Executor) error {
	if ex.Annotations[rsv1.AnnotationForceRemove] != "true" || !controllerutil.ContainsFinalizer(ex, rsv1.FinalizerExecutorTasks) {
		return nil
	}
	r.Recorder.Eventf(ex, nil, corev1.EventTypeWarning, "ForceRemoved", "ForceRemove",
		"%s=true: the Executor is removed without its confirmation that the containers of its tasks are gone; "+
			"its unfinished tasks fail with ExecutorRemoved and their runs move on; whoever set the annotation answers for those containers",
		rsv1.AnnotationForceRemove)
	ctrl.LoggerFrom(ctx).Info("force-removing an executor on an administrator's request", "executor", klog.KObj(ex))
	patch := client.MergeFromWithOptions(ex.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(ex, rsv1.FinalizerExecutorTasks)
	if err := r.Client.Patch(ctx, ex, patch); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("releasing executor %s: %w", ex.Name, err)
	}
	return nil
}

// activeTasks is the executor's number of active tasks: the Scheduler's count, or sharded the
// executor's own from its Lease (rsv1.AnnotationActiveTasks; an executor that does not write it is
// counted as before, from this shard's tasks).
func (r *ExecutorReconciler) activeTasks(ctx context.Context, ex *rsv1.Executor, lease *coordinationv1.Lease) (int, error) {
	if r.Sharded {
		if n, err := strconv.Atoi(lease.Annotations[rsv1.AnnotationActiveTasks]); err == nil && n >= 0 {
			return n, nil
		}
	}
	return r.Tasks.ActiveTasks(ctx, ex.UID)
}

func (r *ExecutorReconciler) setReady(ex *rsv1.Executor, status metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&ex.Status.Conditions, metav1.Condition{
		Type: rsv1.ConditionReady, Status: status, Reason: reason, Message: msg, ObservedGeneration: ex.Generation,
	})
}

// SetupWithManager registers the reconciler.
func (r *ExecutorReconciler) SetupWithManager(mgr ctrl.Manager) error {
	sameName := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetName()}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("executor").
		// Its writes (conditions, activeTasks, a forced removal) happen once, on the elected
		// leader, also when the manager is sharded. Failing a removed executor's tasks is not its
		// work: each shard's run controller does it for its own runs' tasks (executorRemoved).
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(true)}).
		For(&rsv1.Executor{}).
		Watches(&coordinationv1.Lease{}, sameName).
		// A task's start or end changes only the informational activeTasks, written at most every
		// statusInterval: one reconcile a second per executor is enough, however many tasks it runs.
		Watches(&rsv1.ExecutorTask{}, enqueueAfter(time.Second, func(o client.Object) (types.NamespacedName, bool) {
			et := o.(*rsv1.ExecutorTask)
			return types.NamespacedName{Namespace: et.Namespace, Name: et.Spec.Executor}, true
		})).
		Complete(r)
}
