package archive_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/testenv"
)

func TestCompactHour(t *testing.T) {
	for name, store := range testenv.Stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			hour := time.Date(2026, 3, 1, 7, 0, 0, 0, time.UTC)
			var want []string
			for s := range 5 {
				var es []archive.Entry
				for i := range 3 {
					uid := fmt.Sprintf("s%d-%d", s, i)
					es = append(es, archive.Entry{Namespace: "ns", Name: uid, UID: uid, Created: hour})
					want = append(want, uid)
				}
				if _, err := archive.WriteSegment(ctx, store, hour.Add(time.Duration(s)*time.Minute), es); err != nil {
					t.Fatal(err)
				}
			}
			bad := archive.HourPrefix(hour) + "0000000000000000001-bad.jsonl.gz"
			if err := store.Put(ctx, bad, strings.NewReader("not gzip")); err != nil {
				t.Fatal(err)
			}
			next, err := archive.WriteSegment(ctx, store, hour.Add(time.Hour), []archive.Entry{{Namespace: "ns", Name: "n", UID: "n", Created: hour}})
			if err != nil {
				t.Fatal(err)
			}

			n, err := archive.CompactHour(ctx, store, hour.Add(30*time.Minute))
			if err != nil || n != 5 {
				t.Fatalf("CompactHour: %d merged, %v; want 5", n, err)
			}
			keys, err := store.List(ctx, archive.HourPrefix(hour))
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 2 || keys[0] != bad {
				t.Fatalf("after compaction: %v, want the bad segment and one merged", keys)
			}
			es, err := archive.ReadSegment(ctx, store, keys[1])
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range es {
				got = append(got, e.UID)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("merged segment holds %v, want %v in order", got, want)
			}
			// Compacting again changes nothing; the next hour was not touched.
			if n, err := archive.CompactHour(ctx, store, hour); err != nil || n != 0 {
				t.Fatalf("compacting again: %d merged, %v", n, err)
			}
			if ok, err := store.Exists(ctx, next); err != nil || !ok {
				t.Fatalf("the next hour's segment: %v, %v", ok, err)
			}
		})
	}
}

// TestCompactPast: the hours before the one before now are compacted, those in done skipped and
// those compacted recorded; the hour before now's and now's, which writers may still be busy with,
// are left.
func TestCompactPast(t *testing.T) {
	for name, store := range testenv.Stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			now := time.Date(2026, 3, 1, 10, 30, 0, 0, time.UTC)
			hours := []time.Time{now.Add(-4 * time.Hour), now.Add(-3 * time.Hour), now.Add(-2 * time.Hour), now.Add(-time.Hour), now}
			for _, h := range hours {
				for s := range 2 {
					uid := fmt.Sprintf("%s-%d", h.Format("15"), s)
					if _, err := archive.WriteSegment(ctx, store, h.Add(time.Duration(s)*time.Minute), []archive.Entry{{Namespace: "ns", Name: uid, UID: uid, Created: h}}); err != nil {
						t.Fatal(err)
					}
				}
			}
			skipped := hours[0].Truncate(time.Hour)
			done := map[time.Time]bool{skipped: true}
			n, err := archive.CompactPast(ctx, store, now, done)
			if err != nil || n != 4 {
				t.Fatalf("CompactPast: %d merged, %v; want the 4 segments of the 2 hours neither done nor recent", n, err)
			}
			for i, h := range hours {
				keys, err := store.List(ctx, archive.HourPrefix(h))
				if err != nil {
					t.Fatal(err)
				}
				want := 2
				if i == 1 || i == 2 {
					want = 1
					if !done[h.Truncate(time.Hour)] {
						t.Errorf("hour %s compacted but not recorded in done", h.Format("15:04"))
					}
				}
				if len(keys) != want {
					t.Errorf("hour %s: %d segments, want %d", h.Format("15:04"), len(keys), want)
				}
			}
			if n, err := archive.CompactPast(ctx, store, now, done); err != nil || n != 0 {
				t.Fatalf("again: %d merged, %v; want none", n, err)
			}
		})
	}
}

// TestASegmentCutShortIsBad: a segment whose object ends midway through its gzip stream (written
// cut short by an earlier version, or damaged) is a bad segment, skipped by indexes, not an error
// that a follower retries for ever.
func TestASegmentCutShortIsBad(t *testing.T) {
	for name, store := range testenv.Stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			now := time.Now()
			var entries []archive.Entry
			for i := range 200 {
				entries = append(entries, archive.Entry{Namespace: "ns", Name: fmt.Sprintf("r%d", i), UID: fmt.Sprintf("uid-%d", i), Phase: "Finished", Created: now, Archived: now})
			}
			key, err := archive.WriteSegment(ctx, store, now, entries)
			if err != nil {
				t.Fatal(err)
			}
			rc, err := store.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			whole, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			// Cut mid-line, and after whole lines (flushed, its gzip stream never closed).
			var flushed bytes.Buffer
			zw := gzip.NewWriter(&flushed)
			for i := range 3 {
				if err := json.NewEncoder(zw).Encode(&entries[i]); err != nil {
					t.Fatal(err)
				}
			}
			if err := zw.Flush(); err != nil {
				t.Fatal(err)
			}
			for i, content := range [][]byte{whole[:len(whole)/2], flushed.Bytes()} {
				cut := archive.HourPrefix(now) + fmt.Sprintf("000000000000000000%d-cut.jsonl.gz", i)
				if err := store.Put(ctx, cut, bytes.NewReader(content)); err != nil {
					t.Fatal(err)
				}
				if _, err := archive.ReadSegment(ctx, store, cut); !errors.Is(err, archive.ErrBadSegment) {
					t.Fatalf("reading a segment cut short (%d): %v, want ErrBadSegment", i, err)
				}
			}
			if got, err := archive.ReadSegment(ctx, store, key); err != nil || len(got) != len(entries) {
				t.Fatalf("the whole segment: %d entries, %v", len(got), err)
			}
		})
	}
}

// TestASegmentReadThatFailsIsNotBad: a whole segment whose read fails midway (the store's
// connection drops) is not a bad segment: a follower reads it again rather than skip it for ever.
func TestASegmentReadThatFailsIsNotBad(t *testing.T) {
	var whole bytes.Buffer
	zw := gzip.NewWriter(&whole)
	for i := range 200 {
		e := archive.Entry{Namespace: "ns", Name: fmt.Sprintf("r%d", i), UID: fmt.Sprintf("uid-%d", i), Phase: "Finished"}
		if err := json.NewEncoder(zw).Encode(&e); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	dropped := errors.New("connection reset")
	for _, n := range []int{5, whole.Len() / 2} { // within the gzip header, and mid-line
		r := io.MultiReader(bytes.NewReader(whole.Bytes()[:n]), iotest.ErrReader(dropped))
		if _, err := archive.ReadSegmentFrom("archive/segments/x.jsonl.gz", r); errors.Is(err, archive.ErrBadSegment) || !errors.Is(err, dropped) {
			t.Errorf("a read failing after %d bytes: %v, want the read's error, not a bad segment", n, err)
		}
	}
	if got, err := archive.ReadSegmentFrom("archive/segments/x.jsonl.gz", bytes.NewReader(whole.Bytes())); err != nil || len(got) != 200 {
		t.Fatalf("the whole segment: %d entries, %v", len(got), err)
	}
}
