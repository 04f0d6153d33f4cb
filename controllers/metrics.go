package controllers

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// Metrics are the manager's own Prometheus metrics, beside controller-runtime's.
type Metrics struct {
	schedulingLatency prometheus.Histogram
	transitions       *prometheus.CounterVec
	runs              *runPhaseCollector
	archived          prometheus.Counter
	archiveLag        prometheus.Histogram
	archiveSteps      *prometheus.HistogramVec
	expired           prometheus.Counter
}

var (
	registerOnce  = make(chan struct{}, 1)
	sharedMetrics *Metrics
)

// newMetrics registers the metrics once per process (tests start several managers); the run
// gauge reads through the newest manager's cache.
func newMetrics(c client.Reader) *Metrics {
	select {
	case registerOnce <- struct{}{}:
	default:
		sharedMetrics.runs.setReader(c)
		return sharedMetrics
	}
	m := &Metrics{
		schedulingLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "runservice_scheduling_latency_seconds",
			Help:    "Time from a task becoming ready (its last parent final, or the run started) to its ExecutorTask created.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "runservice_run_phase_transitions_total",
			Help: "Run phase transitions, by the phase entered.",
		}, []string{"phase"}),
	}
	m.archived = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "runservice_archived_runs_total",
		Help: "Runs archived into the object store and deleted from etcd.",
	})
	m.archiveLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "runservice_archive_lag_seconds",
		Help:    "Time from when a run was due for archiving (its end plus --archive-after) to archived.",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 14),
	})
	m.archiveSteps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "runservice_archive_step_seconds",
		Help:    "Time each step of archiving a run took: settle (from when the run was due to when the archiver began: the run controller's last writes and the queue), document, segment, executortasks, finalizer, delete.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
	}, []string{"step"})
	m.expired = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "runservice_archive_expired_runs_total",
		Help: "Archived runs deleted from the object store by --archive-retention, with their logs and workspace archives.",
	})
	m.runs = &runPhaseCollector{client: c}
	metrics.Registry.MustRegister(m.schedulingLatency, m.transitions, m.runs, m.archived, m.archiveLag, m.archiveSteps, m.expired)
	sharedMetrics = m
	return m
}

func (m *Metrics) observePhase(run *rsv1.Run, _ rsv1.RunPhase) {
	m.transitions.WithLabelValues(string(run.Status.Phase)).Inc()
}

// observeArchived records a run archived, taken by the archiver at took after it was due (zero for
// a run archived because it was deleted).
func (m *Metrics) observeArchived(due, took time.Time) {
	m.archived.Inc()
	if !due.IsZero() {
		m.archiveLag.Observe(max(0, time.Since(due).Seconds()))
		m.observeArchiveStep("settle", took.Sub(due))
	}
}

// observeArchiveStep records how long a step of archiving a run took.
func (m *Metrics) observeArchiveStep(step string, d time.Duration) {
	m.archiveSteps.WithLabelValues(step).Observe(max(0, d.Seconds()))
}

func (m *Metrics) observeExpired(n int) { m.expired.Add(float64(n)) }

// observeScheduled records the scheduling latency of a task just scheduled.
func (m *Metrics) observeScheduled(run *rsv1.Run, task *rsv1.Task) {
	var ready time.Time
	if run.Status.StartTime != nil {
		ready = run.Status.StartTime.Time
	}
	for _, d := range task.Depends {
		for _, ts := range run.Status.Tasks {
			if ts.Name == d.Task && ts.EndTime != nil && ts.EndTime.After(ready) {
				ready = ts.EndTime.Time
			}
		}
	}
	if !ready.IsZero() {
		m.schedulingLatency.Observe(time.Since(ready).Seconds())
	}
}

// collectFailed logs a figure a scrape leaves out: the cache did not list within the scrape's
// deadline. (An invalid metric instead would fail the whole scrape: the metrics server answers
// errors with HTTP 500.)
func collectFailed(figure string, err error) {
	ctrl.Log.WithName("metrics").Error(err, "a figure is left out of this scrape: listing from the cache failed", "metric", figure)
}

// runPhaseCollector reports the number of runs by phase from the cache at scrape time.
type runPhaseCollector struct {
	mu     sync.Mutex
	client client.Reader
}

func (c *runPhaseCollector) setReader(r client.Reader) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.client = r
}

var runsDesc = prometheus.NewDesc("runservice_runs", "Runs in etcd, by phase (in a sharded manager: the runs this replica owns).", []string{"phase"}, nil)

func (c *runPhaseCollector) Describe(ch chan<- *prometheus.Desc) { ch <- runsDesc }

func (c *runPhaseCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.mu.Lock()
	reader := c.client
	c.mu.Unlock()
	// Read only, so the cache's objects themselves: a scrape must not copy every run in etcd.
	var runs rsv1.RunList
	if err := reader.List(ctx, &runs, client.UnsafeDisableDeepCopy); err != nil {
		collectFailed("runservice_runs", err)
		return
	}
	counts := map[rsv1.RunPhase]int{}
	for _, phase := range []rsv1.RunPhase{rsv1.RunPhaseQueued, rsv1.RunPhaseRunning, rsv1.RunPhaseFinished, rsv1.RunPhaseSetupError, rsv1.RunPhaseCancelled} {
		counts[phase] = 0
	}
	for _, r := range runs.Items {
		if r.Status.Phase != "" {
			counts[r.Status.Phase]++
		}
	}
	for phase, n := range counts {
		ch <- prometheus.MustNewConstMetric(runsDesc, prometheus.GaugeValue, float64(n), string(phase))
	}
}
