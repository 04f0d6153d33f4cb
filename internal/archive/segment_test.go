package archive_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
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
