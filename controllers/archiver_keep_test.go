package controllers

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
)

// TestRearchivingKeepsWhatTheFirstArchiveHad: a run archived once, whose ExecutorTasks were then
// deleted (a crash before the run left etcd), is archived again from its status alone. The first
// document pointed its steps at their logs (from a newer copy of the run than the one archived again,
// or, before runs recorded their fetches, folded from the ExecutorTasks' annotation); the second
// keeps those ExecutorTasks, fetches and log keys, or the archived run's logs could no longer be found.
func TestRearchivingKeepsWhatTheFirstArchiveHad(t *testing.T) {
	ctx := context.Background()
	// A file:// bucket: the s3:// one (testenv.Stores) is out of this package's reach (testenv
	// imports it), and this is about the document, not the store.
	store, err := objectstore.Open(ctx, objectstore.FileURL(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "r", UID: "uid-r"}}
	run.Status.Phase, run.Status.Result = rsv1.RunPhaseFinished, rsv1.RunResultSuccess
	run.Status.Tasks = []rsv1.TaskStatus{{
		Name: "a", Phase: rsv1.TaskPhaseSuccess, ExecutorTask: "r-a", Executor: "ex",
		Steps: []rsv1.StepStatus{{Name: "s0", Phase: rsv1.StepPhaseSuccess}, {Name: "s1", Phase: rsv1.StepPhaseNotStarted}},
	}}
	et := rsv1.ExecutorTask{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "r-a", UID: "uid-r-a",
		Annotations: map[string]string{rsv1.AnnotationFetched: "2026-12-01T00:00:00Z"}}}
	et.Spec.RunName, et.Spec.RunUID, et.Spec.TaskName, et.Spec.Executor = "r", "uid-r", "a", "ex"
	et.Status.Phase = rsv1.TaskPhaseSuccess
	logKey := objectstore.TaskOf(&et).LogKey(0)

	first := run.DeepCopy() // as the run controller recorded the fetch since
	first.Status.Tasks[0].Fetched, first.Status.Tasks[0].Steps[0].LogKey = "2026-12-01T00:00:00Z", logKey
	if err := archive.PutDocument(ctx, store, archive.Document(first, []rsv1.ExecutorTask{et}, time.Now())); err != nil {
		t.Fatal(err)
	}

	r := &ArchiverReconciler{Store: store}
	doc := archive.Document(run, nil, time.Now())
	if err := r.keepArchivedTasks(ctx, run, doc); err != nil {
		t.Fatal(err)
	}
	if n := len(doc.Status.ExecutorTasks); n != 1 || doc.Status.ExecutorTasks[0].Name != "r-a" {
		t.Errorf("archived again with %d ExecutorTasks, want r-a", n)
	}
	steps := doc.Status.Tasks[0].Steps
	if steps[0].LogKey != logKey || steps[1].LogKey != "" {
		t.Errorf("archived again with log keys %q, %q; want %q and none", steps[0].LogKey, steps[1].LogKey, logKey)
	}
	if got := doc.Status.Tasks[0].Fetched; got != "2026-12-01T00:00:00Z" {
		t.Errorf("archived again with task a fetched %q, want the first archive's", got)
	}
}
