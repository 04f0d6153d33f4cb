package ledger

import (
	"testing"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// TestCount: each result counts under its own name; a result not known yet (a run deleted before
// it ended, which deletion stops) counts as Stopped.
func TestCount(t *testing.T) {
	for _, tc := range []struct {
		result rsv1.RunResult
		want   rsv1.FinishedRuns
	}{
		{rsv1.RunResultSuccess, rsv1.FinishedRuns{Success: 1}},
		{rsv1.RunResultFailed, rsv1.FinishedRuns{Failed: 1}},
		{rsv1.RunResultStopped, rsv1.FinishedRuns{Stopped: 1}},
		{rsv1.RunResultUnknown, rsv1.FinishedRuns{Stopped: 1}},
		{"", rsv1.FinishedRuns{Stopped: 1}},
	} {
		var got rsv1.FinishedRuns
		Count(&got, tc.result)
		if got != tc.want {
			t.Errorf("Count(%q) = %+v, want %+v", tc.result, got, tc.want)
		}
	}
}
