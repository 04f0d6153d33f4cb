package main

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/equality"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// statusWrites sorts the writes of the runs' status by what each changed, from every version of the
// runs the bench's watch sees (a watch delivers each change): which decisions and reports the
// manager's `patch runs/status` per task are made of. Each write is counted once, under the first
// of statusWriteCauses it carries.
type statusWrites struct {
	last   map[string]*rsv1.RunStatus
	counts map[string]int
}

// statusWriteCauses, in the order a write is counted under: the run's end; its start; tasks
// scheduled (or stopped); tasks ended; tasks started or their steps' progress; fetches recorded;
// the rest (conditions alone).
var statusWriteCauses = []string{"finish", "start", "schedule", "task end", "task start", "fetch", "other"}

func newStatusWrites() *statusWrites {
	return &statusWrites{last: map[string]*rsv1.RunStatus{}, counts: map[string]int{}}
}

// see takes a version of a run; it is called under the tracker's lock.
func (s *statusWrites) see(run *rsv1.Run) {
	prev, ok := s.last[run.Name]
	s.last[run.Name] = run.Status.DeepCopy()
	if !ok || equality.Semantic.DeepEqual(prev, &run.Status) {
		return // its create, or a write of its metadata
	}
	s.counts[statusWriteCause(prev, &run.Status)]++
}

func statusWriteCause(old, st *rsv1.RunStatus) string {
	switch {
	case st.Phase.IsFinal() && !old.Phase.IsFinal():
		return "finish"
	case st.Phase != old.Phase:
		return "start"
	}
	task := func(ts rsv1.TaskStatus) rsv1.TaskStatus {
		if j := slices.IndexFunc(old.Tasks, func(o rsv1.TaskStatus) bool { return o.Name == ts.Name }); j >= 0 {
			return old.Tasks[j]
		}
		return rsv1.TaskStatus{}
	}
	changed := func(pred func(o, n rsv1.TaskStatus) bool) bool {
		return slices.ContainsFunc(st.Tasks, func(n rsv1.TaskStatus) bool { return pred(task(n), n) })
	}
	switch {
	case changed(func(o, n rsv1.TaskStatus) bool { return o.ExecutorTask != n.ExecutorTask }):
		return "schedule"
	case changed(func(o, n rsv1.TaskStatus) bool { return n.Phase.IsFinal() && !o.Phase.IsFinal() }):
		return "task end"
	case changed(func(o, n rsv1.TaskStatus) bool {
		return o.Phase != n.Phase || !equality.Semantic.DeepEqual(o.Steps, n.Steps)
	}):
		return "task start"
	case changed(func(o, n rsv1.TaskStatus) bool { return o.Fetched != n.Fetched }):
		return "fetch"
	}
	return "other"
}

// perRun prints the writes per run by cause.
func (s *statusWrites) perRun(runs int) string {
	total := 0
	var parts []string
	for _, c := range statusWriteCauses {
		if n := s.counts[c]; n > 0 {
			total += n
			parts = append(parts, fmt.Sprintf("%s %.2f", c, float64(n)/float64(runs)))
		}
	}
	return fmt.Sprintf("%.2f: %s", float64(total)/float64(runs), strings.Join(parts, ", "))
}
