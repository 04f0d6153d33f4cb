package index_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/archive/index"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

// TestFollower follows segments written with archive.WriteSegment into a directory bucket and a
// real S3 server, and checks that an index built incrementally equals a cold rebuild.
func TestFollower(t *testing.T) {
	for name, store := range testenv.Stores(t) {
		t.Run(name, func(t *testing.T) { follow(t, context.Background(), store) })
	}
}

func follow(t *testing.T, ctx context.Context, store *objectstore.Store) {
	now := time.Now()
	write := func(at time.Time, es ...archive.Entry) string {
		t.Helper()
		key, err := archive.WriteSegment(ctx, store, at, es)
		if err != nil {
			t.Fatal(err)
		}
		return key
	}
	batch := func(prefix string, n, min int, groups ...string) []archive.Entry {
		var es []archive.Entry
		for i := range n {
			es = append(es, run("ns", fmt.Sprintf("%s-%03d", prefix, i), min+i, groups...))
		}
		return es
	}
	// History: segments of two days ago, of three hours ago, and of now, with a replacement and a
	// tombstone in later segments, and a segment that is not one.
	old := batch("old", 50, 0, "a")
	write(now.Add(-50*time.Hour), old...)
	write(now.Add(-3*time.Hour), batch("mid", 30, 100, "a", "b")...)
	write(now.Add(-3*time.Hour), failed(with(old[7], func(e *archive.Entry) { e.Archived = e.Archived.Add(time.Hour) })))
	write(now, with(old[3], func(e *archive.Entry) { e.Deleted = true }))
	bad := archive.HourPrefix(now) + fmt.Sprintf("%019d-bad.jsonl.gz", now.UnixNano())
	if err := store.Put(ctx, bad, strings.NewReader("not gzip")); err != nil {
		t.Fatal(err)
	}

	inc, err := index.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer inc.Close()
	f := &index.Follower{Store: store, Index: inc, Interval: 50 * time.Millisecond, Parallel: 3}
	if f.Ready() {
		t.Fatal("ready before its first Sync")
	}
	if err := f.Sync(ctx); err != nil {
		t.Fatalf("cold rebuild: %v (a bad segment is skipped, not an error)", err)
	}
	if !f.Ready() {
		t.Fatal("not ready after its first Sync")
	}
	if got := count(t, inc, "ns", "a"); !maps.Equal(got, map[string]int64{"Finished/Success": 78, "Finished/Failed": 1}) {
		t.Fatalf("after the cold rebuild: %v", got)
	}

	// Then incrementally: Start follows new segments of this hour and the previous one.
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- f.Start(ctx) }()
	write(now.Add(-time.Hour), batch("prev", 5, 200, "b")...)
	last := write(time.Now(), batch("new", 5, 300, "a")...)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ok, err := inc.Applied(last); err != nil {
			t.Fatal(err)
		} else if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a new segment was not applied within 10s")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Start returned %v when its context ended", err)
	}
	if got := count(t, inc, "ns", "b"); !maps.Equal(got, map[string]int64{"Finished/Success": 35}) {
		t.Fatalf("group b, followed: %v", got)
	}

	// The hour of three hours ago is compacted; a cold rebuild into a fresh directory (which reads
	// the merged segment) equals the index built step by step.
	if n, err := archive.CompactHour(context.Background(), store, now.Add(-3*time.Hour)); err != nil || n != 2 {
		t.Fatalf("CompactHour: %d merged, %v; want 2", n, err)
	}
	cold, err := index.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer cold.Close()
	if err := (&index.Follower{Store: store, Index: cold}).Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	everything := func(ix *index.Index) []archive.Entry {
		var out []archive.Entry
		q := index.Query{Limit: 16}
		for {
			p, err := ix.List(q)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p.Entries...)
			if q.Continue = p.Continue; q.Continue == "" {
				return out
			}
		}
	}
	a, b := everything(inc), everything(cold)
	if len(a) != 89 || !slices.EqualFunc(a, b, equal) {
		t.Fatalf("incremental index (%d runs) and cold rebuild (%d runs) differ", len(a), len(b))
	}
	for _, scope := range [][2]string{{"", ""}, {"ns", ""}, {"ns", "a"}, {"ns", "b"}, {"", "b"}} {
		if x, y := count(t, inc, scope[0], scope[1]), count(t, cold, scope[0], scope[1]); !maps.Equal(x, y) {
			t.Fatalf("counts of %v: incremental %v, cold %v", scope, x, y)
		}
	}
	if _, ok, _ := cold.GetUID("ns", old[3].UID); ok {
		t.Fatal("the deleted run is in the cold rebuild")
	}
}
