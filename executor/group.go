package executor

import (
	"context"
	"fmt"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// cleanupHolder is the Lease holder of a dead executor while a sibling removes what it left.
func cleanupHolder(by string) string { return rsv1.LeaseHolderCleanupPrefix + by }

// siblingDead reports whether a sibling's Lease expired more than a grace ago (a quarter of its
// duration, at least 2s): a process restarted under the sibling's name waits for that expiry
// (waitLease) and then takes the Lease over, and the grace lets it do so rather than race the
// members that would reap the sibling for it.
func siblingDead(l *coordinationv1.Lease, now time.Time) bool {
	grace := 2 * time.Second
	if l.Spec.LeaseDurationSeconds != nil {
		grace = max(grace, time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second/4)
	}
	return leaseExpired(l, now.Add(-grace))
}

// leaseExpired reports whether a Lease was not renewed within its duration.
func leaseExpired(l *coordinationv1.Lease, now time.Time) bool {
	if l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return true
	}
	return now.After(l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second))
}

// A member that stays registered with unfetched tasks says so with an event on its Executor.
// +kubebuilder:rbac:groups=events.k8s.io,namespace=system,resources=events,verbs=create

// warnUnfetched says, in the log and as a Warning event on the Executor, that the member stays
// registered because the manager has not fetched a finished task. The event is created directly,
// not through a recorder: the executor's manager, which owns the broadcaster, has stopped by now.
func (e *Executor) warnUnfetched(ctx context.Context, task string) {
	msg := fmt.Sprintf("stopping with task %s (and maybe others) not fetched by the manager within the drain: staying registered so that its logs and archives are not recorded as lost", task)
	ctrl.LoggerFrom(ctx).Error(nil, msg, "task", task)
	now := metav1.NowMicro()
	ev := &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{GenerateName: e.opts.Name + "-", Namespace: e.opts.Namespace},
		EventTime:           now,
		ReportingController: "runservice.dev/executor",
		ReportingInstance:   e.opts.Name,
		Action:              "Leave",
		Reason:              ReasonUnfetchedTasks,
		Type:                corev1.EventTypeWarning,
		Note:                msg,
		Regarding: corev1.ObjectReference{
			APIVersion: rsv1.GroupVersion.String(), Kind: "Executor",
			Namespace: e.opts.Namespace, Name: e.opts.Name, UID: e.uid,
		},
	}
	if err := e.client.Create(ctx, ev); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "recording the unfetched-tasks event")
	}
}

// ReasonUnfetchedTasks is the reason of the event a member records when it stops with finished
// tasks the manager has not fetched, and stays registered.
const ReasonUnfetchedTasks = "UnfetchedTasks"

// A member removes a dead sibling's Executor and Lease (its pods and secrets: the driver's markers).
// +kubebuilder:rbac:groups=runservice.dev,namespace=system,resources=executors,verbs=delete
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=system,resources=leases,verbs=delete

// reapGroup looks for members of the executor's group whose Lease expired, and removes each one's
// pods and secrets, waits until they are gone, and only then deletes and releases its Executor (which
// fails its unfinished tasks with ExecutorRemoved): no task of a dead executor can still run when its
// run moves on. Exactly one live member acts on each dead one: it takes the dead one's Lease with a
// compare-and-swap first.
func (e *Executor) reapGroup(ctx context.Context) {
	remover, ok := e.driver.(GroupRemover)
	if !ok || e.opts.Group == "" || e.opts.Permanent {
		return
	}
	log := ctrl.LoggerFrom(ctx)
	var list rsv1.ExecutorList
	if err := e.reader.List(ctx, &list, client.InNamespace(e.opts.Namespace)); err != nil {
		if ctx.Err() == nil {
			log.Error(err, "listing the group's executors")
		}
		return
	}
	// The siblings' Leases in one list (each member renews its own, labelled with the group): every
	// member reads the group once per renewal, rather than each sibling's Lease.
	var leases coordinationv1.LeaseList
	if err := e.reader.List(ctx, &leases, client.InNamespace(e.opts.Namespace), client.MatchingLabels{rsv1.LabelExecutorGroup: e.opts.Group}); err != nil {
		if ctx.Err() == nil {
			log.Error(err, "listing the group's leases")
		}
		return
	}
	byName := make(map[string]*coordinationv1.Lease, len(leases.Items))
	for i := range leases.Items {
		byName[leases.Items[i].Name] = &leases.Items[i]
	}
	now := time.Now()
	for i := range list.Items {
		ex := &list.Items[i]
		if ex.Name == e.opts.Name || ex.Spec.Group != e.opts.Group || ex.Spec.Permanent {
			continue
		}
		lease, found := byName[ex.Name]
		if found && !siblingDead(lease, now) {
			continue
		}
		if !found && now.Sub(ex.CreationTimestamp.Time) < e.opts.LeaseDuration {
			continue // registered a moment ago; its first Lease is on its way
		}
		if !found { // none, or one written without the label: read it by name
			lease = &coordinationv1.Lease{}
			err := e.reader.Get(ctx, types.NamespacedName{Namespace: ex.Namespace, Name: ex.Name}, lease)
			if err != nil && !apierrors.IsNotFound(err) {
				log.Error(err, "reading a sibling's lease", "sibling", ex.Name)
				continue
			}
			if err == nil && !siblingDead(lease, now) {
				continue
			}
		}
		if err := e.claim(ctx, ex.Name, lease); err != nil {
			log.V(1).Info("another member cleans up after the sibling", "sibling", ex.Name, "reason", err.Error())
			continue
		}
		log.Info("a sibling's lease expired: removing its pods and secrets, then its Executor", "sibling", ex.Name)
		if err := e.reapSibling(ctx, remover, ex); err != nil {
			log.Error(err, "removing a dead sibling", "sibling", ex.Name)
			continue // the claim expires and someone tries again
		}
		_ = e.client.Delete(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: ex.Name, Namespace: ex.Namespace}})
	}
}

// claim takes a dead sibling's expired Lease for the cleanup: the update is conditional on the
// version read, so of several members only one gets it. The claim lasts one lease duration: a member
// that dies while cleaning up leaves it to expire, and another takes over.
func (e *Executor) claim(ctx context.Context, sibling string, lease *coordinationv1.Lease) error {
	now := metav1.NowMicro()
	l := lease.DeepCopy()
	if l.Name == "" {
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: sibling, Namespace: e.opts.Namespace}}
	}
	if l.Labels == nil {
		l.Labels = map[string]string{}
	}
	l.Labels[rsv1.LabelExecutorGroup] = e.opts.Group // so that the claim is seen, and taken over if it expires
	l.Spec.HolderIdentity = ptr.To(cleanupHolder(e.opts.Name))
	l.Spec.LeaseDurationSeconds = ptr.To(int32(e.opts.LeaseDuration.Seconds()))
	l.Spec.RenewTime = &now
	if l.ResourceVersion == "" {
		return e.client.Create(ctx, l)
	}
	return e.client.Update(ctx, l)
}

// claimedBy says who is cleaning up after this executor, if a sibling took its Lease: a holder
// that is no process of the executor's name (lease.go).
func claimedBy(l *coordinationv1.Lease, self string) (string, bool) {
	holder := ptr.Deref(l.Spec.HolderIdentity, "")
	if name, _ := rsv1.ParseLeaseHolder(holder); holder == "" || name == self {
		return "", false
	}
	return strings.TrimPrefix(holder, rsv1.LeaseHolderCleanupPrefix), true
}

// drain is a dynamic member's graceful stop: it marks its Executor unschedulable and keeps following
// its running tasks until they are finished and the manager has fetched the logs and archives of
// every finished one (they exist only in this member's data dir), or errc reports the end (the
// Executor removed). Running tasks get DrainTimeout, fetches max(DrainTimeout, FetchWait). A
// Deployment replaces a pod under a new name, so tasks not finished by then are lost to this member:
// its siblings clean up after it once its Lease expires.
func (e *Executor) drain(ctx context.Context, errc <-chan error) error {
	if e.opts.Permanent || e.opts.DrainTimeout <= 0 && e.opts.FetchWait <= 0 {
		return nil
	}
	log := ctrl.LoggerFrom(ctx)
	if e.opts.DrainTimeout <= 0 {
		// Told not to drain: wait for fetches only, and only with no task running.
		if task, unfinished, err := e.pendingTask(ctx); err != nil || task == "" || unfinished {
			return nil
		}
	}
	if err := e.cordon(ctx); err != nil {
		log.Error(err, "marking the Executor unschedulable: not draining")
		return nil
	}
	log.Info("draining: no new tasks, following the running ones and waiting for the manager to fetch the finished ones",
		"timeout", e.opts.DrainTimeout, "fetchWait", e.opts.FetchWait)
	start := time.Now()
	timeout := time.After(max(e.opts.DrainTimeout, e.opts.FetchWait))
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select { // first a tick: the manager must have seen the cordon before "no tasks" means anything
		case err := <-errc:
			return err
		case <-timeout:
			log.Info("drain timed out with tasks still running or not fetched")
			return nil
		case <-tick.C:
		}
		task, unfinished, err := e.pendingTask(ctx)
		switch {
		case err != nil:
		case task == "":
			log.Info("drained")
			return nil
		case unfinished && time.Since(start) >= e.opts.DrainTimeout:
			log.Info("drain timed out with tasks still running", "task", task)
			return nil
		}
	}
}

// cordon sets the Executor's spec.unschedulable.
func (e *Executor) cordon(ctx context.Context) error {
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		ex := &rsv1.Executor{}
		if err := e.reader.Get(ctx, types.NamespacedName{Namespace: e.opts.Namespace, Name: e.opts.Name}, ex); err != nil {
			return err
		}
		if ex.UID != e.uid {
			return fmt.Errorf("executor %s was registered anew", e.opts.Name)
		}
		if ex.Spec.Unschedulable {
			return nil
		}
		ex.Spec.Unschedulable = true
		return e.client.Update(ctx, ex)
	})
}

// pendingTask names one task of this registration of the executor that keeps it from leaving, or
// "" if none: an unfinished one (unfinished is true), else a finished one whose copy is still here
// because the manager has not said that its run records the fetch (its logs and archives may exist
// only here).
func (e *Executor) pendingTask(ctx context.Context) (name string, unfinished bool, err error) {
	var tasks rsv1.ExecutorTaskList
	if err := e.reader.List(ctx, &tasks, client.InNamespace(e.opts.Namespace), client.MatchingLabels{rsv1.LabelExecutor: e.opts.Name}); err != nil {
		return "", false, err
	}
	for _, et := range tasks.Items {
		if et.Spec.ExecutorUID != string(e.uid) {
			continue
		}
		if !et.Status.Phase.IsFinal() {
			return et.Name, true, nil
		}
		if name == "" && e.unfetched(&et) {
			name = et.Name
		}
	}
	return name, false, nil
}

// leaveIfIdle is a dynamic member's graceful exit. With no unfinished or unfetched task of its own it
// deletes its Executor and Lease at once, rather than leaving them to a sibling once the Lease
// expires (a pod a Deployment replaces never comes back under the same name). A task scheduled on it
// meanwhile fails with ExecutorRemoved and never runs. With unfinished tasks it leaves everything as
// it is: a restart under the same name re-adopts them, or a sibling cleans up after it. With a
// finished task the manager has not fetched it stays too, loudly: leaving would make the manager
// record the task's logs and archives as lost, and fail the tasks that restore its workspace.
func (e *Executor) leaveIfIdle(ctx context.Context) {
	if e.opts.Permanent || e.uid == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	log := ctrl.LoggerFrom(ctx)
	if task, unfinished, err := e.pendingTask(ctx); err != nil {
		log.Error(err, "listing tasks before leaving the group: staying registered")
		return
	} else if unfinished {
		log.Info("unfinished tasks: staying registered", "task", task)
		return
	} else if task != "" {
		e.warnUnfetched(ctx, task)
		return
	}
	if err := e.releaseExecutor(ctx, e.opts.Name, e.uid); err != nil {
		log.Error(err, "deleting the Executor on leaving the group")
		return
	}
	lease := &coordinationv1.Lease{}
	key := types.NamespacedName{Namespace: e.opts.Namespace, Name: e.opts.Name}
	if err := e.reader.Get(ctx, key, lease); err == nil && ptr.Deref(lease.Spec.HolderIdentity, "") == e.holder() {
		err = e.client.Delete(ctx, lease, client.Preconditions{UID: &lease.UID, ResourceVersion: &lease.ResourceVersion})
		if client.IgnoreNotFound(err) != nil {
			log.Error(err, "deleting the Lease on leaving the group")
		}
	}
	log.Info("left the group: no unfinished tasks")
}
