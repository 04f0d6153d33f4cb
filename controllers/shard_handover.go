package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// The handover of a run from shard A to shard B (see internal/shard and the README): the leader's
// sharder sets LabelShardDrain on a run labelled A that the ring gives to B; A, in its run
// reconcile, lets what is in flight for the run end (its ExecutorTasks' fetches, an archiving),
// starts nothing new for it, and acknowledges by removing LabelShard and LabelShardDrain in one
// patch locked on the run's resourceVersion; the sharder then labels the run's ExecutorTasks, then
// the run, with B. From its acknowledgement on, A does nothing more for the run, although its
// caches may show the run and its ExecutorTasks for a moment longer: handoverGuard remembers what
// A gave away.

// handoverGuard is one replica's record of the runs it is handing over: the work in flight for
// each (the fetcher's and the archiver's, which act on a run's objects outside its run reconcile),
// the runs being drained (no new work starts for them) and the runs given away, with the
// resourceVersion of the acknowledgement. A nil guard (an unsharded manager) lets everything through.
type handoverGuard struct {
	mu        sync.Mutex
	runs      map[types.UID]*handover
	lastSweep time.Time
}

type handover struct {
	inFlight int
	draining bool
	// released is the resourceVersion of the acknowledgement: a copy of the run at or before it is
	// the replica's cache lagging behind its own write; a later one is the run come back to it.
	released string
	at       time.Time
}

// releasedKeep is how long a run given away is remembered: far longer than a cache takes to drop
// it and its ExecutorTasks (milliseconds) or the sharder to relabel them.
const releasedKeep = time.Hour

func newHandoverGuard() *handoverGuard { return &handoverGuard{runs: map[types.UID]*handover{}} }

// begin registers work for run uid outside the run reconcile; it refuses when the run is being
// drained or was given away, and the work must then not start. end ends the work.
func (g *handoverGuard) begin(uid types.UID) (end func(), ok bool) {
	if g == nil {
		return func() {}, true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	h := g.runs[uid]
	if h != nil && (h.draining || h.released != "") {
		return nil, false
	}
	if h == nil {
		h = &handover{}
		g.runs[uid] = h
	}
	h.inFlight++
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if h.inFlight--; h.inFlight == 0 && !h.draining && h.released == "" {
			delete(g.runs, uid)
		}
	}, true
}

// drain stops new work for run uid and says whether none is in flight.
func (g *handoverGuard) drain(uid types.UID) (idle bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	h := g.runs[uid]
	if h == nil {
		h = &handover{}
		g.runs[uid] = h
	}
	h.draining = true
	return h.inFlight == 0
}

// undrain lets work for run uid start again: the sharder took its drain back.
func (g *handoverGuard) undrain(uid types.UID) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if h := g.runs[uid]; h != nil && h.released == "" {
		h.draining = false
		if h.inFlight == 0 {
			delete(g.runs, uid)
		}
	}
}

// release records the acknowledgement of run's handover (run as the ack patch returned it).
func (g *handoverGuard) release(run *rsv1.Run) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	g.runs[run.UID] = &handover{released: run.ResourceVersion, at: now}
	if now.Sub(g.lastSweep) < time.Minute {
		return
	}
	g.lastSweep = now
	for uid, h := range g.runs {
		if h.released != "" && now.Sub(h.at) > releasedKeep {
			delete(g.runs, uid)
		}
	}
}

// givenAway reports whether run (a cached copy) was given away by this replica: a copy at or
// before the acknowledgement. A later copy in this replica's cache (which holds only its own runs)
// is the run assigned back to it: the record is dropped and the run is its own again.
func (g *handoverGuard) givenAway(run *rsv1.Run) bool {
	if g == nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	h := g.runs[run.UID]
	if h == nil || h.released == "" {
		return false
	}
	if c, err := resourceversion.CompareResourceVersion(run.ResourceVersion, h.released); err == nil && c > 0 {
		delete(g.runs, run.UID)
		return false
	}
	return true
}

// needLeaderElection is the controllers' NeedLeaderElection: in a sharded manager (a guard) the
// per-run controllers run on every replica, each on its own runs; unsharded, on the leader.
func (g *handoverGuard) needLeaderElection() *bool {
	if g == nil {
		return nil
	}
	return ptr.To(false)
}

// drainChanged says whether the sharder asked for a run's handover, or took the request back,
// between two versions of it: a label, which the run controller otherwise does not look at.
func drainChanged(o, n client.Object) bool {
	a, had := o.GetLabels()[rsv1.LabelShardDrain]
	b, has := n.GetLabels()[rsv1.LabelShardDrain]
	return had != has || a != b
}

// handoverRetry is when a drained run whose work is still in flight is looked at again.
const handoverRetry = 100 * time.Millisecond

// handover is the run reconcile's part of a handover, before anything else: a run this replica
// gave away is left alone (done), a run to drain is acknowledged once no work for it is in flight
// and the outcomes of its fetches are recorded in its status (done). Otherwise the reconcile goes on.
func (r *RunReconciler) handover(ctx context.Context, run *rsv1.Run) (done bool, result ctrl.Result, err error) {
	g := r.guard
	if g == nil {
		return false, ctrl.Result{}, nil
	}
	if g.givenAway(run) {
		return true, ctrl.Result{}, nil
	}
	if _, ok := run.Labels[rsv1.LabelShardDrain]; !ok {
		g.undrain(run.UID)
		return false, ctrl.Result{}, nil
	}
	if !g.drain(run.UID) {
		return true, ctrl.Result{RequeueAfter: handoverRetry}, nil
	}
	// The fetches that ended are in memory until the run's status records them: written before
	// the acknowledgement, else the new owner would fetch them again, and find them lost if the
	// executor left meanwhile. The write changes the run, so the acknowledgement is locked on it.
	if err := r.writeFetches(ctx, run); err != nil {
		res, err := requeueOnConflict(client.IgnoreNotFound(err), "recording the fetches before the run's handover")
		return true, res, err
	}
	base := run.DeepCopy()
	delete(run.Labels, rsv1.LabelShard)
	delete(run.Labels, rsv1.LabelShardDrain)
	// The lock: an acknowledgement decided on a stale copy (the sharder took the drain back since)
	// is refused, and the next reconcile sees the run as it is.
	if err := r.Client.Patch(ctx, run, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		res, err := requeueOnConflict(client.IgnoreNotFound(err), "acknowledging the run's handover")
		return true, res, err
	}
	g.release(run)
	r.written(client.ObjectKeyFromObject(run))
	r.shardMetrics.released.Inc()
	ctrl.LoggerFrom(ctx).Info("handed the run over", "shard", r.Options.Shard.Me(), "to", base.Labels[rsv1.LabelShardDrain], "resourceVersion", run.ResourceVersion)
	return true, ctrl.Result{}, nil
}

// followRun labels et, an ExecutorTask of a run this replica owns that its cache does not show
// (read from the apiserver), with its run's shard: created by a member after it left the ring (a
// stalled replica), or relabelled late by a deposed leader, it is in no live replica's cache, and
// the run would wait for it for ever. The sharder's scans find those of members not live; this
// finds any the run's owner misses, at the moment it misses it. The run is read anew: a stalled
// replica, whose cache still shows the run as its own, does not take the task back.
func (r *RunReconciler) followRun(ctx context.Context, et *rsv1.ExecutorTask) error {
	if r.guard == nil || et.Labels[rsv1.LabelShard] == r.Options.Shard.Me() {
		return nil
	}
	if _, err := followRun(ctx, r.APIReader, r.Client, et); err != nil {
		return fmt.Errorf("labelling executor task %s with its run's shard: %w", et.Name, err)
	}
	return nil
}
