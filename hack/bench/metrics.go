package main

import (
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// The manager runs in this process, so its Prometheus registry (controller-runtime's global one)
// can be read directly: the metrics server stays off.

type reconcileCount struct{ total, errors int }

type reconcileCounts map[string]reconcileCount

// reconciles returns controller-runtime's reconcile counters by controller.
func reconciles() (reconcileCounts, error) {
	families, err := metrics.Registry.Gather()
	if err != nil {
		return nil, fmt.Errorf("reading the manager's metrics: %w", err)
	}
	out := reconcileCounts{}
	for _, f := range families {
		name := f.GetName()
		if name != "controller_runtime_reconcile_total" && name != "controller_runtime_reconcile_errors_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			controller := ""
			result := ""
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "controller":
					controller = l.GetValue()
				case "result":
					result = l.GetValue()
				}
			}
			c := out[controller]
			n := int(m.GetCounter().GetValue())
			if name == "controller_runtime_reconcile_total" {
				c.total += n
			} else if result == "" {
				c.errors += n
			}
			out[controller] = c
		}
	}
	return out, nil
}

func (c reconcileCounts) since(earlier reconcileCounts) reconcileCounts {
	out := reconcileCounts{}
	for k, v := range c {
		out[k] = reconcileCount{total: v.total - earlier[k].total, errors: v.errors - earlier[k].errors}
	}
	return out
}

// histogramSummary is the count and sum of a Prometheus histogram.
type histogramSummary struct {
	count uint64
	sum   float64
}

func (h histogramSummary) since(earlier histogramSummary) histogramSummary {
	return histogramSummary{count: h.count - earlier.count, sum: h.sum - earlier.sum}
}

// schedulingLatencyMetric reads the manager's own runservice_scheduling_latency_seconds.
func schedulingLatencyMetric() (histogramSummary, error) {
	families, err := metrics.Registry.Gather()
	if err != nil {
		return histogramSummary{}, fmt.Errorf("reading the manager's metrics: %w", err)
	}
	for _, f := range families {
		if f.GetName() != "runservice_scheduling_latency_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			h := m.GetHistogram()
			return histogramSummary{count: h.GetSampleCount(), sum: h.GetSampleSum()}, nil
		}
	}
	return histogramSummary{}, nil
}
