package kubernetes

import (
	"errors"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
)

// logGate spaces the log follows of the pods of a node whose logs cannot be read (issue 10: each
// task retried its own follow with a backoff, so a node that serves no log, a kubelet restarting or
// a node gone, cost every running task a request per backoff step). The kubelet serves every log of
// its node: when a follow fails for want of the node (the apiserver could not reach it: an error
// of 500 or more, or no answer), the node's other pods do not ask until the node is probed again,
// by one follow, after a backoff of its own (followBackoff); a follow that the node answers opens
// the gate and wakes the pods waiting on it, so their logs are followed again at once. A task's
// log is still read whole once its pod ended (Follow), so the gate only delays the live view: a
// waiting pod looks again at the latest when the probe under way may have given up (probeWait, the
// backoff's cap), as a task's own backoff did. The gate also remembers which nodes streamed a
// log (served), and forgets a node nobody asked or told it about for forgetIdle: the executor sees
// no Node objects (its role has no permission on them), so idleness is how a node gone for good
// leaves the gate.
type logGate struct {
	mu    sync.Mutex
	nodes map[string]*nodeLogs
	// opened is called, outside the lock, with a node whose log serving came back.
	opened func(node string)
	now    func() time.Time
	swept  time.Time // when nodes idle for forgetIdle were last dropped
}

// nodeLogs is what the gate knows of a node: whether it served a log, and, while its logs cannot
// be read (closed), when to probe it again.
type nodeLogs struct {
	// served says that a log request to the node streamed: a read that fails later is the node's
	// trouble (a kubelet restarting), not a node that serves no log at all (kwok, a kubelet
	// without its log endpoint). Follow tries a failed read of an ended pod's log again only then.
	served  bool
	closed  bool
	backoff wait.Backoff
	retryAt time.Time // when one follow may probe the node again
	// probeUntil, past retryAt, is while that follow is under way: its outcome opens the gate or
	// moves retryAt; one that never reports (its task ended first) lets another probe after it.
	probeUntil time.Time
	used       time.Time // when the gate was last asked or told about the node
}

func newLogGate(opened func(node string)) *logGate {
	return &logGate{nodes: map[string]*nodeLogs{}, opened: opened, now: time.Now}
}

// mayFollow says whether a pod on node may follow (or read) its log now; when it may not, at is
// when to ask again (a follow that the node answers meanwhile wakes the node's waiters through
// opened). A caller it lets through on a closed gate is the node's probe: it must report how its
// request began (answered).
func (g *logGate) mayFollow(node string) (ok bool, at time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, now := g.node(node)
	switch {
	case n == nil || !n.closed:
		return true, time.Time{}
	case now.Before(n.retryAt):
		return false, n.retryAt
	case now.Before(n.probeUntil):
		return false, n.probeUntil
	}
	n.probeUntil = now.Add(probeWait)
	return true, time.Time{}
}

// answered records how a log request of a pod on node began: err is the request's error (nil:
// the node answered and the log streams).
func (g *logGate) answered(node string, err error) {
	g.mu.Lock()
	n, now := g.node(node)
	if !nodeTrouble(err) {
		wasClosed := n != nil && n.closed
		if n == nil && err == nil {
			n = &nodeLogs{used: now}
			g.nodes[node] = n
		}
		if n != nil {
			n.served = n.served || err == nil
			n.closed, n.retryAt, n.probeUntil, n.backoff = false, time.Time{}, time.Time{}, followBackoff
		}
		g.mu.Unlock()
		if wasClosed && g.opened != nil {
			g.opened(node)
		}
		return
	}
	defer g.mu.Unlock()
	switch {
	case n == nil:
		n = &nodeLogs{backoff: followBackoff, used: now}
		g.nodes[node] = n
	case n.closed && now.Before(n.retryAt):
		return // a follow begun before the gate closed: the backoff under way stands
	}
	n.closed, n.probeUntil = true, time.Time{}
	n.retryAt = now.Add(n.backoff.Step())
}

// served says whether node ever streamed a log (since the gate last forgot it).
func (g *logGate) served(node string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, _ := g.node(node)
	return n != nil && n.served
}

// node is what the gate knows of node (nil: nothing), marked used now; nodes idle for forgetIdle
// are dropped first, once per forgetIdle. Called with g.mu held.
func (g *logGate) node(node string) (*nodeLogs, time.Time) {
	now := g.now()
	if now.Sub(g.swept) >= forgetIdle {
		g.swept = now
		for name, n := range g.nodes {
			if now.Sub(n.used) >= forgetIdle {
				delete(g.nodes, name)
			}
		}
	}
	n := g.nodes[node]
	if n != nil {
		n.used = now
	}
	return n, now
}

// probeWait is how long a probe of a closed gate may take to report before another is let through.
var probeWait = followBackoff.Cap

// nodeTrouble says whether a log request's error is the node's (or the way to it): the apiserver
// could not get an answer from the kubelet, or the request got none. An error the kubelet or the
// apiserver answered about the pod (4xx: a container not started yet, a pod gone, throttling) says
// the node serves logs.
func nodeTrouble(err error) bool {
	if err == nil {
		return false
	}
	if status, ok := err.(apierrors.APIStatus); ok || errors.As(err, &status) {
		return status.Status().Code >= 500
	}
	return true
}

// forgetIdle is how long the gate keeps a node that it was neither asked nor told about: a pod
// held at a closed gate asks again within followBackoff.Cap or probeWait, so no task waits on such
// a node, and one gone for good (node churn) leaves nothing behind. Forgetting a node that comes
// back costs one probe, or a failed last read of a pod whose own log never streamed not tried
// again (served).
const forgetIdle = 10 * time.Minute
