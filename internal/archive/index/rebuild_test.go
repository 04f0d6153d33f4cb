package index_test

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/archive/index"
	"runservice.dev/runservice/internal/objectstore"
)

// generated is a history of segments: new runs, replacements of runs of earlier segments and of
// the same segment (newer and older copies), tombstones (of indexed runs, of runs never indexed,
// and followed by entries of the same uid), over two namespaces, three groups, names that repeat.
func generated(seed uint64) [][]archive.Entry {
	r := rand.New(rand.NewPCG(seed, 1))
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	var all []archive.Entry
	newRun := func() archive.Entry {
		uid := fmt.Sprintf("u%04d", len(all))
		e := run(pick("ns1", "ns2"), uid, r.IntN(500), []string{"a", "b", "c"}[:r.IntN(4)]...)
		e.Name = fmt.Sprintf("run-%d", r.IntN(40))
		e.Phase, e.Result = pick("Finished", "Cancelled"), pick("Success", "Failed")
		e.Archived = e.Archived.Add(time.Duration(r.IntN(60)) * time.Minute)
		all = append(all, e)
		return e
	}
	var segments [][]archive.Entry
	for range 12 {
		var seg []archive.Entry
		for range 40 + r.IntN(40) {
			switch n := r.IntN(20); {
			case n < 12 || len(all) == 0:
				seg = append(seg, newRun())
			case n < 16: // a newer or an older copy of an earlier run
				e := all[r.IntN(len(all))]
				e.Archived = e.Archived.Add(time.Duration(r.IntN(120)-60) * time.Minute)
				e.Phase, e.Result = pick("Finished", "Cancelled"), pick("Success", "Failed", "Stopped")
				e.Created = e.Created.Add(time.Duration(r.IntN(10)) * time.Minute)
				e.ChangeGroups = []string{"a", "b", "c"}[r.IntN(3):]
				seg = append(seg, e)
			case n < 18:
				seg = append(seg, archive.Entry{UID: all[r.IntN(len(all))].UID, Deleted: true})
			case n < 19:
				seg = append(seg, archive.Entry{UID: fmt.Sprintf("never-%d", r.IntN(1000)), Deleted: true})
			default: // a tombstone, then the same run again, in one segment
				e := newRun()
				seg = append(seg, archive.Entry{UID: e.UID, Deleted: true}, e)
			}
		}
		segments = append(segments, seg)
	}
	return segments
}

// TestColdRebuildEqualsOneByOne checks that a cold rebuild (the Follower's first Sync into an
// empty index, which does not read the index back) answers List, Count and Get exactly as an
// index that was given the same entries one Apply at a time.
func TestColdRebuildEqualsOneByOne(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			ctx := context.Background()
			store, err := objectstore.Open(ctx, objectstore.FileURL(t.TempDir()))
			if err != nil {
				t.Fatal(err)
			}
			one := open(t)
			for i, seg := range generated(seed) {
				// Segments are listed in key order: hours apart, they are applied in this order.
				if _, err := archive.WriteSegment(ctx, store, t0.Add(time.Duration(i)*time.Hour), seg); err != nil {
					t.Fatal(err)
				}
				for j, e := range seg {
					apply(t, one, fmt.Sprintf("one/%d/%d", i, j), e)
				}
			}
			cold := open(t)
			// Readers while the rebuild reopens the index (for the load, and after it) are
			// served throughout.
			stop, read := make(chan struct{}), make(chan error)
			go func() { read <- readUntil(cold, stop) }()
			err = (&index.Follower{Store: store, Index: cold, Parallel: 3}).Sync(ctx)
			close(stop)
			if err := <-read; err != nil {
				t.Fatalf("reading while rebuilding: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			sameAnswers(t, one, cold)
		})
	}
}

// readUntil lists, counts and gets from ix until stop is closed, and returns the first error.
func readUntil(ix *index.Index, stop chan struct{}) error {
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		if _, err := ix.List(index.Query{Namespace: "ns1", Limit: 5}); err != nil {
			return err
		}
		if _, err := ix.Count("", "a"); err != nil {
			return err
		}
		if _, err := ix.Get("ns2", "run-3"); err != nil {
			return err
		}
		if _, _, err := ix.GetUID("ns2", "u0003"); err != nil {
			return err
		}
	}
}

// sameAnswers fails unless a and b give the same pages (entries, continue tokens, remaining
// counts), counts and runs by name.
func sameAnswers(t *testing.T, a, b *index.Index) {
	t.Helper()
	var queries []index.Query
	for _, ns := range []string{"", "ns1", "ns2"} {
		for _, groups := range [][]string{nil, {"a"}, {"c"}, {"a", "b"}} {
			queries = append(queries,
				index.Query{Namespace: ns, ChangeGroups: groups},
				index.Query{Namespace: ns, ChangeGroups: groups, Phase: "Finished", Result: "Failed"},
				index.Query{Namespace: ns, ChangeGroups: groups, Phase: "Cancelled", CreatedAfter: t0.Add(time.Hour)})
		}
	}
	runs := 0
	for _, q := range queries {
		q.Limit = 7
		for pages := 0; ; pages++ {
			pa, err := a.List(q)
			if err != nil {
				t.Fatal(err)
			}
			pb, err := b.List(q)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(pa, pb) {
				t.Fatalf("page %d of %+v:\none by one %+v\ncold       %+v", pages+1, q, pa, pb)
			}
			if q.Namespace == "" && q.ChangeGroups == nil && q.Phase == "" {
				runs += len(pa.Entries)
			}
			if q.Continue = pa.Continue; q.Continue == "" {
				break
			}
		}
	}
	if runs < 300 {
		t.Fatalf("only %d runs indexed: the history does not test much", runs)
	}
	for _, ns := range []string{"", "ns1", "ns2"} {
		for _, g := range []string{"", "a", "b", "c"} {
			if x, y := count(t, a, ns, g), count(t, b, ns, g); !maps.Equal(x, y) {
				t.Fatalf("counts of %q/%q: one by one %v, cold %v", ns, g, x, y)
			}
		}
		for i := range 40 {
			x, err := a.Get(ns, fmt.Sprintf("run-%d", i))
			if err != nil {
				t.Fatal(err)
			}
			y, err := b.Get(ns, fmt.Sprintf("run-%d", i))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(x, y) {
				t.Fatalf("Get(%q, run-%d): one by one %v, cold %v", ns, i, x, y)
			}
		}
	}
}
