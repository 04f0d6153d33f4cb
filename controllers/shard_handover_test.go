package controllers

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// TestHandoverGuard: what a replica may still do for a run it hands over. A drain waits for the
// fetches and archivings in flight and lets none start; after the acknowledgement nothing starts,
// and the run controller skips every copy of the run at or before the acknowledged version, until
// a later one (the run assigned back) makes it the replica's own again. Unsharded (nil), nothing
// is held back.
func TestHandoverGuard(t *testing.T) {
	run := func(rv string) *rsv1.Run {
		return &rsv1.Run{ObjectMeta: metav1.ObjectMeta{UID: "u1", ResourceVersion: rv}}
	}
	g := newHandoverGuard()
	end, ok := g.begin("u1")
	if !ok {
		t.Fatal("a fetch refused for a run nobody drains")
	}
	if g.drain("u1") {
		t.Fatal("drained while a fetch is in flight")
	}
	if _, ok := g.begin("u1"); ok {
		t.Fatal("a fetch started for a run being drained")
	}
	if _, ok := g.begin("u2"); !ok {
		t.Fatal("another run's fetch refused")
	}
	end()
	if !g.drain("u1") {
		t.Fatal("not idle once the fetch ended")
	}
	g.release(run("120"))
	if _, ok := g.begin("u1"); ok {
		t.Fatal("a fetch started for a run given away")
	}
	for _, tc := range []struct {
		rv   string
		away bool
	}{{"110", true}, {"120", true}, {"121", false}, {"120", false}} {
		if got := g.givenAway(run(tc.rv)); got != tc.away {
			t.Fatalf("copy at %s: given away %v, want %v", tc.rv, got, tc.away)
		}
	}
	if _, ok := g.begin("u1"); !ok {
		t.Fatal("a fetch refused for a run assigned back")
	}

	// A drain taken back lets work start again.
	g.drain("u3")
	g.undrain("u3")
	if _, ok := g.begin("u3"); !ok {
		t.Fatal("a fetch refused after the drain was taken back")
	}

	var none *handoverGuard
	if _, ok := none.begin("u1"); !ok || none.givenAway(run("1")) || none.needLeaderElection() != nil {
		t.Fatal("an unsharded manager's guard holds something back")
	}
}
