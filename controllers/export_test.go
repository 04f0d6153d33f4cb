package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// NewRunPhaseCollector is the runservice_runs collector reading through r, for tests.
func NewRunPhaseCollector(r client.Reader) prometheus.Collector { return &runPhaseCollector{client: r} }
