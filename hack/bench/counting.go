package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"

	"k8s.io/client-go/rest"
)

// requests counts the API requests of one party (the manager, the executors, the submitter, the
// baseline) by kind, e.g. "PUT runs/status", "POST executortasks", "reads". It is filled by the
// round-tripper that clientConfig puts under every client of that party, so it sees every request
// the party sends, retries and failed ones included.
type requests struct {
	mu        sync.Mutex
	writes    map[string]int
	conflicts map[string]int // writes answered 409 Conflict, also counted in writes
	reads     int            // GET and LIST, not WATCH
	readKinds map[string]int // the reads by kind, e.g. "GET leases", "LIST pods", "GET pods/log"
}

func newRequests() *requests {
	return &requests{writes: map[string]int{}, conflicts: map[string]int{}, readKinds: map[string]int{}}
}

// requestCounts is a point-in-time copy of a requests, to subtract from a later one.
type requestCounts struct {
	writes    map[string]int
	conflicts map[string]int
	reads     int
	readKinds map[string]int
}

func (r *requests) snapshot() requestCounts {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := requestCounts{writes: map[string]int{}, conflicts: map[string]int{}, reads: r.reads, readKinds: map[string]int{}}
	for k, v := range r.readKinds {
		c.readKinds[k] = v
	}
	for k, v := range r.writes {
		c.writes[k] = v
	}
	for k, v := range r.conflicts {
		c.conflicts[k] = v
	}
	return c
}

// since returns the requests made after the earlier snapshot.
func (c requestCounts) since(earlier requestCounts) requestCounts {
	d := requestCounts{writes: map[string]int{}, conflicts: map[string]int{}, reads: c.reads - earlier.reads, readKinds: map[string]int{}}
	for k, v := range c.readKinds {
		if n := v - earlier.readKinds[k]; n != 0 {
			d.readKinds[k] = n
		}
	}
	for k, v := range c.writes {
		if n := v - earlier.writes[k]; n != 0 {
			d.writes[k] = n
		}
	}
	for k, v := range c.conflicts {
		if n := v - earlier.conflicts[k]; n != 0 {
			d.conflicts[k] = n
		}
	}
	return d
}

func (c requestCounts) totalWrites() int {
	n := 0
	for _, v := range c.writes {
		n += v
	}
	return n
}

func (c requestCounts) totalConflicts() int {
	n := 0
	for _, v := range c.conflicts {
		n += v
	}
	return n
}

// breakdown lists the writes by kind, most first, as "kind n (per-task)".
func (c requestCounts) breakdown(tasks int) []string {
	kinds := make([]string, 0, len(c.writes))
	for k := range c.writes {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool {
		if c.writes[kinds[i]] != c.writes[kinds[j]] {
			return c.writes[kinds[i]] > c.writes[kinds[j]]
		}
		return kinds[i] < kinds[j]
	})
	lines := make([]string, 0, len(kinds))
	for _, k := range kinds {
		line := fmt.Sprintf("%-34s %6d  %5.2f/task", k, c.writes[k], float64(c.writes[k])/float64(tasks))
		if n := c.conflicts[k]; n > 0 {
			line += fmt.Sprintf("  (%d conflicts)", n)
		}
		lines = append(lines, line)
	}
	return lines
}

// resourceWrites is the writes to one resource ("pods", "executortasks/status"), all verbs.
type resourceWrites struct {
	resource string
	writes   int
}

// byResource sums the writes by resource, most first.
func (c requestCounts) byResource() []resourceWrites {
	sums := map[string]int{}
	for k, v := range c.writes {
		_, res, _ := strings.Cut(k, " ")
		sums[res] += v
	}
	out := make([]resourceWrites, 0, len(sums))
	for res, n := range sums {
		out = append(out, resourceWrites{resource: res, writes: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].writes != out[j].writes {
			return out[i].writes > out[j].writes
		}
		return out[i].resource < out[j].resource
	})
	return out
}

// printRequests prints one party's requests: the totals, then the writes by kind, per task.
func printRequests(out io.Writer, party string, rc requestCounts, tasks int) {
	fmt.Fprintf(out, "  %s: %d writes (%d conflicts), %d reads (GET/LIST, not watches)\n", party, rc.totalWrites(), rc.totalConflicts(), rc.reads)
	for _, l := range rc.breakdown(tasks) {
		fmt.Fprintf(out, "    %s\n", l)
	}
	if rc.reads > 0 {
		fmt.Fprintf(out, "    reads per task: %s\n", rc.readBreakdown(tasks))
	}
}

type countingTransport struct {
	next http.RoundTripper
	reqs *requests
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	t.reqs.count(req, resp)
	return resp, err
}

func (r *requests) count(req *http.Request, resp *http.Response) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		if req.URL.Query().Get("watch") != "true" && req.URL.Query().Get("watch") != "1" {
			r.reads++
			r.readKinds[readKind(req.URL)]++
		}
		return
	}
	kind := req.Method + " " + resourceOf(req.URL)
	r.writes[kind]++
	if resp != nil && resp.StatusCode == http.StatusConflict {
		r.conflicts[kind]++
	}
}

// readKind names a read "GET <resource>" for one object (or its subresource), "LIST <resource>"
// for a collection.
func readKind(u *url.URL) string {
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) > 0 && parts[0] == "api" {
		parts = parts[min(2, len(parts)):]
	} else if len(parts) > 0 && parts[0] == "apis" {
		parts = parts[min(3, len(parts)):]
	}
	if len(parts) > 2 && parts[0] == "namespaces" {
		parts = parts[2:]
	}
	if len(parts) <= 1 {
		return "LIST " + resourceOf(u)
	}
	return "GET " + resourceOf(u)
}

// readBreakdown lists the reads by kind, most first, as "kind n/task".
func (c requestCounts) readBreakdown(tasks int) string {
	kinds := make([]string, 0, len(c.readKinds))
	for k := range c.readKinds {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool {
		if c.readKinds[kinds[i]] != c.readKinds[kinds[j]] {
			return c.readKinds[kinds[i]] > c.readKinds[kinds[j]]
		}
		return kinds[i] < kinds[j]
	})
	parts := make([]string, 0, len(kinds))
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s %.2f", k, float64(c.readKinds[k])/float64(tasks)))
	}
	return strings.Join(parts, ", ")
}

// resourceOf returns "resource" or "resource/subresource" from an API path like
// /apis/<group>/<version>/namespaces/<ns>/<resource>/<name>/<subresource>.
func resourceOf(u *url.URL) string {
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	switch {
	case len(parts) > 0 && parts[0] == "api":
		parts = parts[min(2, len(parts)):]
	case len(parts) > 0 && parts[0] == "apis":
		parts = parts[min(3, len(parts)):]
	default:
		return u.Path
	}
	if len(parts) >= 2 && parts[0] == "namespaces" {
		if len(parts) == 2 {
			return "namespaces"
		}
		parts = parts[2:]
	}
	switch len(parts) {
	case 0:
		return u.Path
	case 1, 2:
		return parts[0]
	default:
		return parts[0] + "/" + parts[2]
	}
}

// clientConfig returns a copy of base for one party: every request it sends is counted in reqs, and
// it gets an HTTP connection of its own, as a separate process would (client-go otherwise shares one
// transport, so one HTTP/2 connection, among all configs with the same TLS settings).
func clientConfig(base *rest.Config, reqs *requests) *rest.Config {
	cfg := rest.CopyConfig(base)
	// A Proxy func makes the config's transport uncacheable, hence not shared.
	cfg.Proxy = http.ProxyFromEnvironment
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &countingTransport{next: rt, reqs: reqs} })
	return cfg
}
