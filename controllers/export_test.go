package controllers

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// NewRunPhaseCollector is the runservice_runs collector reading through r, for tests.
func NewRunPhaseCollector(r client.Reader) prometheus.Collector { return &runPhaseCollector{client: r} }

// Pick is the Scheduler's choice of an executor for task, as Schedule makes it.
func (s *Scheduler) Pick(ctx context.Context, namespace string, task *rsv1.Task) (*rsv1.Executor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pick(ctx, namespace, task)
}

// ScanTasks is the sharder's look at the ExecutorTasks labelled with members not in members.
func (s *Sharder) ScanTasks(ctx context.Context, members []string) error {
	return s.scanTasks(ctx, members)
}
