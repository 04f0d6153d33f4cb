package v1alpha1

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRunStatusFetched: what a run records of an ExecutorTask's fetch is its task's fetched, when
// the task's executorTask is that ExecutorTask and the run ran it (not a task a restart kept); a
// task fetched by a manager from before that field has it in its annotation instead.
func TestRunStatusFetched(t *testing.T) {
	const at, earlier = "2026-12-01T10:00:00Z", "2026-11-30T10:00:00Z"
	et := func(annotation string) *ExecutorTask {
		e := &ExecutorTask{ObjectMeta: metav1.ObjectMeta{Name: "r-a-1"}, Spec: ExecutorTaskSpec{TaskName: "a"}}
		if annotation != "" {
			e.Annotations = map[string]string{AnnotationFetched: annotation}
		}
		return e
	}
	cases := []struct {
		name                string
		task                TaskStatus
		annotation          string
		recorded, wantFetch string
	}{
		{"recorded", TaskStatus{Name: "a", ExecutorTask: "r-a-1", Fetched: at}, "", at, at},
		{"not yet", TaskStatus{Name: "a", ExecutorTask: "r-a-1"}, "", "", ""},
		{"annotated before the field", TaskStatus{Name: "a", ExecutorTask: "r-a-1"}, earlier, "", earlier},
		{"the record over the annotation", TaskStatus{Name: "a", ExecutorTask: "r-a-1", Fetched: FetchedLost}, earlier, FetchedLost, FetchedLost},
		{"another ExecutorTask's", TaskStatus{Name: "a", ExecutorTask: "r-a-2", Fetched: at}, "", "", ""},
		{"a kept task's, from the run it ran in", TaskStatus{Name: "a", ExecutorTask: "r-a-1", Fetched: at, FromRun: "r0"}, "", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &RunStatus{Tasks: []TaskStatus{{Name: "b", ExecutorTask: "r-b", Fetched: at}, c.task}}
			if got := s.RecordedFetch(et(c.annotation)); got != c.recorded {
				t.Errorf("RecordedFetch %q, want %q", got, c.recorded)
			}
			if got := s.Fetched(et(c.annotation)); got != c.wantFetch {
				t.Errorf("Fetched %q, want %q", got, c.wantFetch)
			}
		})
	}
}
