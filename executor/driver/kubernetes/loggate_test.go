package kubernetes

import (
	"errors"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// TestLogGate: a follow the node does not answer closes its gate: the node's other pods wait,
// one probes it after the backoff, and a probe the node answers opens the gate and wakes the
// node's waiters; errors about the pod itself (4xx) say the node answers and close nothing.
func TestLogGate(t *testing.T) {
	now := time.Unix(1000, 0)
	var opened []string
	g := newLogGate(func(node string) { opened = append(opened, node) })
	g.now = func() time.Time { return now }
	may := func(node string) bool {
		t.Helper()
		ok, _ := g.mayFollow(node)
		return ok
	}
	unreachable := apierrors.NewInternalError(errors.New(`Get "https://10.0.0.1:10250/containerLogs/ns/p/main?follow=true": dial tcp 10.0.0.1:10250: connect: connection refused`))
	notStarted := apierrors.NewBadRequest(`container "main" in pod "p" is waiting to start: ContainerCreating`)

	if !may("a") || !may("a") {
		t.Fatal("an open gate lets every follow through")
	}
	g.answered("a", notStarted)
	if !may("a") {
		t.Fatal("a 400 about the pod closed the node's gate")
	}
	g.answered("a", apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, "p"))
	if !may("a") {
		t.Fatal("a 404 about the pod closed the node's gate")
	}

	g.answered("a", unreachable)
	if ok, at := g.mayFollow("a"); ok || !at.Equal(now.Add(time.Second)) {
		t.Fatalf("after the node did not answer: may follow %v, at %v; want not before 1s", ok, at.Sub(now))
	}
	if !may("b") {
		t.Fatal("another node's gate closed")
	}
	g.answered("a", unreachable) // a follow begun before the gate closed: the backoff stands
	if _, at := g.mayFollow("a"); !at.Equal(now.Add(time.Second)) {
		t.Fatalf("a second failure within the backoff moved it to %v", at.Sub(now))
	}

	now = now.Add(time.Second)
	if !may("a") {
		t.Fatal("no probe let through after the backoff")
	}
	if ok, at := g.mayFollow("a"); ok || !at.Equal(now.Add(probeWait)) {
		t.Fatalf("a second probe while one is under way: %v, at %v", ok, at.Sub(now))
	}
	g.answered("a", errors.New("http2: client connection lost"))
	if ok, at := g.mayFollow("a"); ok || !at.Equal(now.Add(2*time.Second)) {
		t.Fatalf("after a failed probe: may follow %v, at %v; want not before 2s", ok, at.Sub(now))
	}

	now = now.Add(2 * time.Second)
	if !may("a") {
		t.Fatal("no probe let through after the second backoff")
	}
	if len(opened) != 0 {
		t.Fatalf("opened %v before the node answered", opened)
	}
	g.answered("a", nil)
	if len(opened) != 1 || opened[0] != "a" {
		t.Fatalf("opened %v, want [a]: the waiters of a are woken", opened)
	}
	if !may("a") || !may("a") {
		t.Fatal("the gate stays closed after the node answered")
	}
	g.answered("a", nil)
	if len(opened) != 1 {
		t.Fatalf("an open gate was opened again: %v", opened)
	}

	// A probe that never reports (its task ended first) lets another through after probeWait.
	g.answered("c", unreachable)
	now = now.Add(time.Second)
	if !may("c") {
		t.Fatal("no probe of c")
	}
	now = now.Add(probeWait)
	if !may("c") {
		t.Fatal("a probe that never reported keeps the gate shut")
	}
}

// TestLogGateForgetsIdleNodes: the gate forgets a node nobody asked or told it about for
// forgetIdle (a node gone for good, with node churn), and keeps one whose pods wait at its closed
// gate, asking again every time it says.
func TestLogGateForgetsIdleNodes(t *testing.T) {
	now := time.Unix(1000, 0)
	g := newLogGate(nil)
	g.now = func() time.Time { return now }
	unreachable := errors.New("http2: client connection lost")
	g.answered("gone", unreachable)
	g.answered("busy", unreachable)
	for end := now.Add(forgetIdle + time.Minute); now.Before(end); {
		ok, at := g.mayFollow("busy")
		if ok {
			g.answered("busy", unreachable) // the probe failed too
			continue
		}
		now = at
	}
	if _, kept := g.nodes["gone"]; kept {
		t.Errorf("the gate still holds a node idle for %v", forgetIdle+time.Minute)
	}
	if n := g.nodes["busy"]; n == nil || !n.closed {
		t.Errorf("the gate forgot a closed node whose pods wait on it: %+v", n)
	}
}
