package archive_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

func finishedRun() (*rsv1.Run, []rsv1.ExecutorTask) {
	start, end := metav1.NewTime(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)), metav1.NewTime(time.Date(2026, 12, 1, 10, 1, 0, 0, time.UTC))
	run := &rsv1.Run{
		ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: "ns", UID: "uid-1", ResourceVersion: "42", Finalizers: []string{rsv1.FinalizerArchive},
			Labels: map[string]string{"team": "a"}, CreationTimestamp: start},
		Spec: rsv1.RunSpec{ChangeGroups: []string{"g1", "g2"}, Tasks: []rsv1.Task{{Name: "a"}}},
		Status: rsv1.RunStatus{Phase: rsv1.RunPhaseFinished, Result: rsv1.RunResultFailed, Progress: "1/1", StartTime: &start, EndTime: &end,
			Tasks: []rsv1.TaskStatus{{Name: "a", Phase: rsv1.TaskPhaseFailed, ExecutorTask: "r-a", Fetched: rsv1.FetchedLost}}},
	}
	ets := []rsv1.ExecutorTask{{
		ObjectMeta: metav1.ObjectMeta{Name: "r-a", UID: "et-uid"},
		Spec:       rsv1.ExecutorTaskSpec{TaskName: "a", Executor: "ex1"},
		Status:     rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseFailed, Message: "exit 1"},
	}}
	return run, ets
}

// TestDocumentRecordsEachTasksFetch: the document's ExecutorTasks say how each one's fetch ended,
// as the run's status records it, or, for a task fetched by a manager from before that record, as
// its ExecutorTask's annotation said.
func TestDocumentRecordsEachTasksFetch(t *testing.T) {
	const at = "2026-12-01T10:01:02Z"
	cases := []struct {
		name, status, annotation, want string
	}{
		{"recorded in the run's status", at, "", at},
		{"annotated by an earlier manager", "", rsv1.FetchedArchivesMissing + "1", rsv1.FetchedArchivesMissing + "1"},
		{"the status over the annotation", rsv1.FetchedLost, at, rsv1.FetchedLost},
		{"not fetched", "", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			run, ets := finishedRun()
			run.Status.Tasks[0].Fetched = c.status
			if c.annotation != "" {
				ets[0].Annotations = map[string]string{rsv1.AnnotationFetched: c.annotation}
			}
			doc := archive.Document(run, ets, time.Now())
			if got := doc.Status.ExecutorTasks[0].Fetched; got != c.want {
				t.Errorf("archived ExecutorTask fetched %q, want %q", got, c.want)
			}
		})
	}
}

// TestDocumentRoundTrip: the document is the run as it ended, with what archived runs are selected
// by as labels and without what only a live object has; it reads back equal from both backends.
func TestDocumentRoundTrip(t *testing.T) {
	run, ets := finishedRun()
	doc := archive.Document(run, ets, time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC))
	if doc.ResourceVersion != "" || len(doc.Finalizers) != 0 {
		t.Errorf("document keeps resourceVersion %q, finalizers %v", doc.ResourceVersion, doc.Finalizers)
	}
	want := map[string]string{"team": "a", "changegroup.runservice.dev/g1": "", "changegroup.runservice.dev/g2": "",
		arv1.LabelPhase: "Finished", arv1.LabelResult: "Failed"}
	if !equality.Semantic.DeepEqual(doc.Labels, want) {
		t.Errorf("labels %v, want %v", doc.Labels, want)
	}
	if len(doc.Status.ExecutorTasks) != 1 || doc.Status.ExecutorTasks[0].Fetched != rsv1.FetchedLost || doc.Status.ExecutorTasks[0].Task != "a" {
		t.Errorf("executor tasks %+v", doc.Status.ExecutorTasks)
	}
	for name, store := range testenv.Stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			if _, err := archive.GetDocument(ctx, store, "ns", "r", "uid-1"); !errors.Is(err, objectstore.ErrNotFound) {
				t.Fatalf("before it is written: %v, want ErrNotFound", err)
			}
			if err := archive.PutDocument(ctx, store, doc); err != nil {
				t.Fatal(err)
			}
			got, err := archive.GetDocument(ctx, store, "ns", "r", "uid-1")
			if err != nil {
				t.Fatal(err)
			}
			if !equality.Semantic.DeepEqual(got, doc) {
				t.Errorf("read back %+v, want %+v", got, doc)
			}
		})
	}
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSegmentRoundTrip: a segment reads back the entries written, in order; keys sort by time and
// fall under their hour's prefix; what is not a segment is refused.
func TestSegmentRoundTrip(t *testing.T) {
	run, ets := finishedRun()
	e := archive.EntryOf(archive.Document(run, ets, time.Now()))
	tomb := e
	tomb.UID, tomb.Deleted = "uid-2", true
	now := time.Date(2026, 12, 1, 10, 59, 59, 0, time.UTC)
	for name, store := range testenv.Stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			k1, err := archive.WriteSegment(ctx, store, now, []archive.Entry{e, tomb})
			if err != nil {
				t.Fatal(err)
			}
			k2, err := archive.WriteSegment(ctx, store, now.Add(time.Second), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(k1, archive.HourPrefix(now)) || !strings.HasPrefix(k2, archive.HourPrefix(now.Add(time.Hour))) || k1 >= k2 {
				t.Errorf("keys %s, %s: want them under their hours and in time order", k1, k2)
			}
			got, err := archive.ReadSegment(ctx, store, k1)
			if err != nil {
				t.Fatal(err)
			}
			if g, w := jsonOf(t, got), jsonOf(t, []archive.Entry{e, tomb}); g != w {
				t.Errorf("read back %s, want %s", g, w)
			}
			if got, err := archive.ReadSegment(ctx, store, k2); err != nil || len(got) != 0 {
				t.Errorf("empty segment: %v, %v", got, err)
			}
			if err := store.Put(ctx, archive.SegmentPrefix+"x/corrupt.jsonl.gz", strings.NewReader("not gzip")); err != nil {
				t.Fatal(err)
			}
			for _, key := range []string{archive.DocumentKey("ns", "r", "uid-1"), archive.SegmentPrefix + "x/corrupt.jsonl.gz"} {
				if _, err := archive.ReadSegment(ctx, store, key); err == nil {
					t.Errorf("reading %s as a segment: no error", key)
				}
			}
		})
	}
}
