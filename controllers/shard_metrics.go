package controllers

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// shardMetrics are the shard ring's metrics: on every replica the runs it owns and the handovers
// it acknowledged; on the leader, whose sharder moves runs, the reassignments by shard and
// direction and how long each took.
type shardMetrics struct {
	owned      *ownedRunsCollector
	released   prometheus.Counter
	reassigned *prometheus.CounterVec
	duration   prometheus.Histogram
}

var (
	shardRegisterOnce  = make(chan struct{}, 1)
	sharedShardMetrics *shardMetrics
)

// newShardMetrics registers the metrics once per process (tests start several managers); the
// owned-runs gauge reads through the newest manager's cache, as member me.
func newShardMetrics(c client.Reader, me string) *shardMetrics {
	select {
	case shardRegisterOnce <- struct{}{}:
	default:
		sharedShardMetrics.owned.set(c, me)
		return sharedShardMetrics
	}
	m := &shardMetrics{
		owned: &ownedRunsCollector{},
		released: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "runservice_shard_handovers_acknowledged_total",
			Help: "Runs this replica let go of when the sharder drained them (it acts on them no more).",
		}),
		reassigned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "runservice_shard_reassignments_total",
			Help: "Runs moved between shards by the leader's sharder, by shard and direction (in: to it, out: from it).",
		}, []string{"shard", "direction"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "runservice_shard_handover_duration_seconds",
			Help:    "Time from the sharder's decision to move a run (its drain, or its shard seen gone) to the run labelled with its new shard.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
	}
	m.owned.set(c, me)
	metrics.Registry.MustRegister(m.owned, m.released, m.reassigned, m.duration)
	sharedShardMetrics = m
	return m
}

// observeMove records a run moved from one shard to another since since.
func (m *shardMetrics) observeMove(from, to string, since time.Time) {
	if from != "" {
		m.reassigned.WithLabelValues(from, "out").Inc()
	}
	m.reassigned.WithLabelValues(to, "in").Inc()
	m.duration.Observe(time.Since(since).Seconds())
}

// ownedRunsCollector reports the runs and ExecutorTasks in this replica's cache, which holds only
// its own: what a replica's memory grows with, divided among the replicas.
type ownedRunsCollector struct {
	mu     sync.Mutex
	client client.Reader
	me     string
}

func (c *ownedRunsCollector) set(r client.Reader, me string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.client, c.me = r, me
}

var (
	ownedDesc      = prometheus.NewDesc("runservice_shard_runs", "Runs this replica owns (labelled with its shard), in etcd.", []string{"shard"}, nil)
	ownedTasksDesc = prometheus.NewDesc("runservice_shard_executortasks", "ExecutorTasks of the runs this replica owns (labelled with its shard), in etcd.", []string{"shard"}, nil)
)

func (c *ownedRunsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ownedDesc
	ch <- ownedTasksDesc
}

func (c *ownedRunsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.mu.Lock()
	reader, me := c.client, c.me
	c.mu.Unlock()
	var runs rsv1.RunList
	if err := reader.List(ctx, &runs, client.UnsafeDisableDeepCopy); err != nil {
		collectFailed("runservice_shard_runs", err)
		return
	}
	ch <- prometheus.MustNewConstMetric(ownedDesc, prometheus.GaugeValue, float64(len(runs.Items)), me)
	var tasks rsv1.ExecutorTaskList
	if err := reader.List(ctx, &tasks, client.UnsafeDisableDeepCopy); err != nil {
		collectFailed("runservice_shard_executortasks", err)
		return
	}
	ch <- prometheus.MustNewConstMetric(ownedTasksDesc, prometheus.GaugeValue, float64(len(tasks.Items)), me)
}
