package restart

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
)

// tempStore is an object store in a directory of the test's, closed when it ends.
func tempStore(t *testing.T) *objectstore.Store {
	t.Helper()
	store, err := objectstore.Open(context.Background(), objectstore.FileURL(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

// archiveRuns archives n runs named name in namespace ns, the i-th created i minutes after the
// first, with uids uid-000, uid-001...
func archiveRuns(t *testing.T, store *objectstore.Store, ns, name string, n int) {
	t.Helper()
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		doc := &arv1.ArchivedRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(fmt.Sprintf("uid-%03d", i)),
			CreationTimestamp: metav1.NewTime(start.Add(time.Duration(i) * time.Minute))}}
		if err := archive.PutDocument(context.Background(), store, doc); err != nil {
			t.Fatal(err)
		}
	}
}

// TestNewestArchivedIsBounded: admission looks for the newest archived run of a name when a
// restart names no uid, reading one document per uid the store has under that name. A name reused
// by thousands of runs (a nightly run archived every night) would make that thousands of reads in
// an admission webhook (which the apiserver gives up on after 10 s, with no useful message): past a
// bound, the lookup stops and asks for spec.restartFrom.uid instead.
func TestNewestArchivedIsBounded(t *testing.T) {
	ctx := context.Background()
	store := tempStore(t)

	archiveRuns(t, store, "ns", "few", 3)
	if uid, err := newestArchived(ctx, store, "ns", "few"); err != nil || uid != "uid-002" {
		t.Fatalf("newest archived of 3: %q, %v; want uid-002", uid, err)
	}

	archiveRuns(t, store, "ns", "nightly", 150)
	uid, err := newestArchived(ctx, store, "ns", "nightly")
	var many *TooManyError
	if !errors.As(err, &many) || !strings.Contains(err.Error(), "spec.restartFrom.uid") {
		t.Fatalf("newest archived of 150 runs of a name: %q, %v; want an error asking for spec.restartFrom.uid", uid, err)
	}
}

// TestUnstored: a kept task whose saved archive is gone from the run it ran in is named; one whose
// archive is there, or that saved nothing, is not.
func TestUnstored(t *testing.T) {
	ctx := context.Background()
	store := tempStore(t)
	tasks := []rsv1.Task{saving(task("a")), saving(task("b")), task("c")}
	orig := original(tasks, map[string]rsv1.TaskPhase{"a": rsv1.TaskPhaseSuccess, "b": rsv1.TaskPhaseSuccess, "c": rsv1.TaskPhaseSuccess}, nil)
	spec := &rsv1.RunSpec{Tasks: tasks}
	kept := Kept(spec, orig)
	at := objectstore.Task{Namespace: "ns", Run: "orig", RunUID: "uid-orig", ExecutorTask: "orig-a"}
	if err := store.Put(ctx, at.ArchiveKey(1), strings.NewReader("a's workspace")); err != nil {
		t.Fatal(err)
	}
	gone, err := Unstored(ctx, store, "ns", spec, kept)
	if err != nil || !slices.Equal(gone, []string{"b"}) {
		t.Fatalf("unstored %v, %v; want [b]", gone, err)
	}
	if again := Kept(spec, orig, gone...); !slices.Equal(names(again), []string{"a", "c"}) {
		t.Errorf("kept again %v, want [a c]", names(again))
	}
}
