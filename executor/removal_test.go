package executor

import (
	"testing"
	"time"
)

func TestStartGate(t *testing.T) {
	const lease = 4 * time.Second
	now := time.Now()
	for _, tc := range []struct {
		name     string
		sent     time.Time // zero: never renewed
		closed   string
		wantOpen bool
	}{
		{name: "never renewed", wantOpen: false},
		{name: "renewed just now", sent: now, wantOpen: true},
		{name: "within the lease less its margin", sent: now.Add(-lease / 2), wantOpen: true},
		{name: "in the margin before a sibling may claim", sent: now.Add(-lease + lease/8), wantOpen: false},
		{name: "expired", sent: now.Add(-2 * lease), wantOpen: false},
		{name: "renewed, but removal seen", sent: now, closed: "the Executor is being deleted", wantOpen: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var g startGate
			if !tc.sent.IsZero() {
				g.renewed(tc.sent, lease)
			}
			if tc.closed != "" {
				g.close(tc.closed)
				g.renewed(now, lease) // a later renewal does not reopen it
			}
			why := g.shut()
			if open := why == ""; open != tc.wantOpen {
				t.Fatalf("open %v (%q), want %v", open, why, tc.wantOpen)
			}
			if tc.closed != "" && why != tc.closed {
				t.Fatalf("reason %q, want %q", why, tc.closed)
			}
		})
	}
}
