package archive_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

// archiveAt writes, as the archiver would at t, the document, a log and a workspace archive of run
// name, and its segment; it returns its entry.
func archiveAt(t *testing.T, store *objectstore.Store, name string, at time.Time) archive.Entry {
	t.Helper()
	ctx := context.Background()
	run, ets := finishedRun()
	run.Name, run.UID = name, types.UID("uid-"+name)
	run.CreationTimestamp = metav1.NewTime(at.Add(-time.Minute))
	doc := archive.Document(run, ets, at)
	if err := archive.PutDocument(ctx, store, doc); err != nil {
		t.Fatal(err)
	}
	task := objectstore.Task{Namespace: run.Namespace, Run: name, RunUID: string(run.UID), ExecutorTask: name + "-a"}
	for _, key := range []string{task.LogKey(0), task.ArchiveKey(1)} {
		if err := store.Put(ctx, key, strings.NewReader("data")); err != nil {
			t.Fatal(err)
		}
	}
	e := archive.EntryOf(doc)
	if _, err := archive.WriteSegment(ctx, store, at, []archive.Entry{e}); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestExpireDeletesWhatExpiredHoursArchived: the runs archived in hours that ended before the
// retention's limit go with their documents, logs and workspace archives, and a tombstone tells the
// indexes; runs of later hours stay; a repeat finds nothing more, and once the tombstone's own hour
// expires nothing of the archive is left.
func TestExpireDeletesWhatExpiredHoursArchived(t *testing.T) {
	h1 := time.Date(2026, 11, 30, 23, 10, 0, 0, time.UTC)
	h2 := time.Date(2026, 12, 1, 0, 5, 0, 0, time.UTC)
	now := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	for name, store := range testenv.Stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			var old []archive.Entry
			for i := range 3 {
				old = append(old, archiveAt(t, store, fmt.Sprintf("old-%d", i), h1.Add(time.Duration(i)*time.Minute)))
			}
			kept := archiveAt(t, store, "kept", h2)

			n, err := archive.Expire(ctx, store, time.Date(2026, 12, 1, 0, 30, 0, 0, time.UTC), now)
			if err != nil || n != 3 {
				t.Fatalf("expired %d (%v), want the 3 runs of 23:00", n, err)
			}
			for _, e := range old {
				if keys, _ := store.List(ctx, objectstore.RunPrefix(e.Namespace, e.Name, e.UID)); len(keys) != 0 {
					t.Errorf("left of expired run %s: %v", e.Name, keys)
				}
			}
			if keys, _ := store.List(ctx, objectstore.RunPrefix(kept.Namespace, kept.Name, kept.UID)); len(keys) != 3 {
				t.Errorf("of the run archived at 00:05: %v, want its document, log and archive", keys)
			}
			segs, err := store.List(ctx, archive.SegmentPrefix)
			if err != nil {
				t.Fatal(err)
			}
			var tombs, live []string
			for _, key := range segs {
				entries, err := archive.ReadSegment(ctx, store, key)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range entries {
					if e.Deleted {
						tombs = append(tombs, e.Name)
					} else {
						live = append(live, e.Name)
					}
				}
			}
			slices.Sort(tombs)
			if !slices.Equal(tombs, []string{"old-0", "old-1", "old-2"}) || !slices.Equal(live, []string{"kept"}) {
				t.Errorf("segments left name %v as deleted and %v as archived, want the 3 old ones and kept", tombs, live)
			}

			if n, err := archive.Expire(ctx, store, time.Date(2026, 12, 1, 0, 30, 0, 0, time.UTC), now); err != nil || n != 0 {
				t.Errorf("a repeat expired %d (%v), want 0", n, err)
			}
			if n, err := archive.Expire(ctx, store, now.Add(2*time.Hour), now.Add(2*time.Hour)); err != nil || n != 1 {
				t.Errorf("expiring everything: %d (%v), want kept", n, err)
			}
			if keys, _ := store.List(ctx, ""); !onlyTombstones(t, store, keys) {
				t.Errorf("left after everything expired: %v", keys)
			}
		})
	}
}

// onlyTombstones reports whether keys are segments that only say runs were deleted.
func onlyTombstones(t *testing.T, store *objectstore.Store, keys []string) bool {
	t.Helper()
	for _, key := range keys {
		entries, err := archive.ReadSegment(context.Background(), store, key)
		if err != nil {
			return false
		}
		for _, e := range entries {
			if !e.Deleted {
				return false
			}
		}
	}
	return true
}
