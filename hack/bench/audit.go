package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"runservice.dev/runservice/internal/testenv"
)

// auditLog reads the apiserver's audit log of writes (testenv.WithAuditLog) between two offsets:
// the writes of a phase, from every client of the apiserver, by component.
type auditLog struct{ path string }

// offset is the log's current end.
func (a auditLog) offset() (int64, error) {
	fi, err := os.Stat(a.path)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// writeCounts are writes by component, then by "verb resource[/subresource]"; reads (get, list)
// the same way when the log has them (-cluster-reads).
type writeCounts struct {
	writes    map[string]map[string]int
	reads     map[string]map[string]int
	conflicts map[string]int // 409s by component
	// shardWrites are a sharded manager's writes by replica, from the " shard/<member>" its
	// requests' user agent ends with.
	shardWrites map[string]int
	// podRun is, per task pod kwok moved from Running to Succeeded, the time between its two
	// status patches: how long its container ran as the executors see it (sorted).
	podRun []time.Duration
}

func (w writeCounts) total(components ...string) int {
	n := 0
	for _, c := range components {
		for _, v := range w.writes[c] {
			n += v
		}
	}
	return n
}

func (w writeCounts) all() int {
	n := 0
	for c := range w.writes {
		n += w.total(c)
	}
	return n
}

// between counts the completed write requests logged from offset from to offset to.
func (a auditLog) between(from, to int64) (writeCounts, error) {
	w := writeCounts{writes: map[string]map[string]int{}, reads: map[string]map[string]int{}, conflicts: map[string]int{}, shardWrites: map[string]int{}}
	patched := map[string][]time.Time{} // task pod -> kwok's status patches
	err := testenv.ScanAuditLog(a.path, from, to, func(e testenv.AuditEvent) error {
		c := componentOf(e.UserAgent)
		if o := e.ObjectRef; c == "kwok" && e.Verb == "patch" && o.Resource == "pods" && o.Subresource == "status" && strings.HasPrefix(o.Name, "rs-") {
			k := o.Namespace + "/" + o.Name
			patched[k] = append(patched[k], e.StageTimestamp)
		}
		res := e.ObjectRef.Resource
		if e.ObjectRef.Subresource != "" {
			res += "/" + e.ObjectRef.Subresource
		}
		counts := w.writes
		if e.Verb == "get" || e.Verb == "list" {
			counts = w.reads
		}
		if counts[c] == nil {
			counts[c] = map[string]int{}
		}
		counts[c][e.Verb+" "+res]++
		if _, member, ok := strings.Cut(e.UserAgent, " shard/"); ok && c == "manager" && e.Verb != "get" && e.Verb != "list" {
			w.shardWrites[member]++
		}
		if e.ResponseStatus != nil && e.ResponseStatus.Code == 409 {
			w.conflicts[c]++
		}
		return nil
	})
	for _, ts := range patched {
		if len(ts) == 2 { // Running, then Succeeded
			w.podRun = append(w.podRun, ts[1].Sub(ts[0]))
		}
	}
	w.podRun = sortedCopy(w.podRun)
	return w, err
}

// componentOf names the client from its user agent: client-go's default starts with the
// binary's name.
func componentOf(ua string) string {
	name, _, _ := strings.Cut(ua, "/")
	switch name {
	case "manager":
		return "manager"
	case "executor":
		return "executors"
	case "kube-scheduler":
		return "scheduler"
	case "kwok":
		return "kwok"
	case "bench":
		return "submitter"
	case "kube-apiserver":
		return "apiserver"
	}
	return "other (" + name + ")"
}

// breakdown lists a component's writes per task, most first.
func (w writeCounts) breakdown(component string, tasks int) string {
	return perTask(w.writes[component], tasks)
}

// perTask lists counts by kind per task, most first.
func perTask(counts map[string]int, tasks int) string {
	type kv struct {
		k string
		v int
	}
	var kvs []kv
	for k, v := range counts {
		kvs = append(kvs, kv{k, v})
	}
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].v > kvs[j].v || kvs[i].v == kvs[j].v && kvs[i].k < kvs[j].k })
	var parts []string
	for _, e := range kvs {
		parts = append(parts, fmt.Sprintf("%s %.2f", e.k, float64(e.v)/float64(tasks)))
	}
	return strings.Join(parts, ", ")
}
