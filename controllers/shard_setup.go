package controllers

import (
	ctrl "sigs.k8s.io/controller-runtime"
)

// setupSharding gives a sharded manager (opts.Shard set) its sharder, on the leader, and returns
// the replica's handover guard and shard metrics, which its per-run controllers share; an
// unsharded manager gets nil for both, and its controllers work as before, on the leader.
func setupSharding(mgr ctrl.Manager, opts Options) (*handoverGuard, *shardMetrics, error) {
	if opts.Shard == nil {
		return nil, nil, nil
	}
	metrics := newShardMetrics(mgr.GetClient(), opts.Shard.Me())
	sharder := &Sharder{View: opts.Shard, Recorder: mgr.GetEventRecorder("sharder"), Metrics: metrics, Resync: opts.ShardResync, Settle: opts.ShardLeaseDuration, Relabelling: opts.ShardRelabelling}
	if err := sharder.SetupWithManager(mgr); err != nil {
		return nil, nil, err
	}
	return newHandoverGuard(), metrics, nil
}
