package index_test

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/archive/index"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// run is an entry builder: a run of ns created at minute min of t0.
func run(ns, uid string, min int, groups ...string) archive.Entry {
	return archive.Entry{
		Namespace: ns, Name: "run-" + uid, UID: uid, ChangeGroups: groups,
		Phase: "Finished", Result: "Success", Progress: "3/3",
		Created: t0.Add(time.Duration(min) * time.Minute), Archived: t0.Add(time.Hour),
	}
}

func with(e archive.Entry, f func(*archive.Entry)) archive.Entry {
	f(&e)
	return e
}

func failed(e archive.Entry) archive.Entry {
	return with(e, func(e *archive.Entry) { e.Result = "Failed" })
}

func cancelled(e archive.Entry) archive.Entry {
	return with(e, func(e *archive.Entry) { e.Phase, e.Result = "Cancelled", "Stopped" })
}

func open(t *testing.T) *index.Index {
	t.Helper()
	ix, err := index.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ix.Close() })
	return ix
}

func apply(t *testing.T, ix *index.Index, segment string, entries ...archive.Entry) {
	t.Helper()
	if err := ix.Apply(segment, entries); err != nil {
		t.Fatal(err)
	}
}

func uids(es []archive.Entry) []string {
	out := make([]string, 0, len(es))
	for _, e := range es {
		out = append(out, e.UID)
	}
	return out
}

// listAll pages through q with limit, failing on a uid returned twice.
func listAll(t *testing.T, ix *index.Index, q index.Query, limit int) []string {
	t.Helper()
	q.Limit = limit
	var out []string
	for pages := 0; ; pages++ {
		p, err := ix.List(q)
		if err != nil {
			t.Fatalf("page %d of %+v: %v", pages+1, q, err)
		}
		for _, u := range uids(p.Entries) {
			if slices.Contains(out, u) {
				t.Fatalf("%+v, limit %d: %s returned twice", q, limit, u)
			}
			out = append(out, u)
		}
		if p.Continue == "" {
			return out
		}
		if limit == 0 || len(p.Entries) != limit {
			t.Fatalf("%+v: a page of %d entries with a continue token (limit %d)", q, len(p.Entries), limit)
		}
		q.Continue = p.Continue
	}
}

// fixture: two namespaces, groups a, b, c; "a" exists in both namespaces; x5 and x6 share their
// creation time (ties go by uid).
func fixture(t *testing.T) *index.Index {
	ix := open(t)
	apply(t, ix, "seg-1",
		run("ns1", "x1", 1, "a"),
		failed(run("ns1", "x2", 2, "a", "b")),
		run("ns1", "x3", 3, "b"),
		cancelled(run("ns1", "x4", 4, "a", "b", "c")),
		run("ns1", "x6", 5, "a"),
	)
	apply(t, ix, "seg-2",
		failed(run("ns1", "x5", 5, "a")),
		run("ns2", "y1", 1, "a"),
		failed(run("ns2", "y2", 6)),
		run("ns1", "x7", 7),
	)
	return ix
}

func TestList(t *testing.T) {
	ix := fixture(t)
	for _, tc := range []struct {
		name string
		q    index.Query
		want []string
	}{
		{"everything, newest first, ties by uid", index.Query{}, []string{"x7", "y2", "x5", "x6", "x4", "x3", "x2", "x1", "y1"}},
		{"one namespace", index.Query{Namespace: "ns2"}, []string{"y2", "y1"}},
		{"a group", index.Query{Namespace: "ns1", ChangeGroups: []string{"a"}}, []string{"x5", "x6", "x4", "x2", "x1"}},
		{"a group in every namespace", index.Query{ChangeGroups: []string{"a"}}, []string{"x5", "x6", "x4", "x2", "x1", "y1"}},
		{"groups are ANDed", index.Query{Namespace: "ns1", ChangeGroups: []string{"a", "b"}}, []string{"x4", "x2"}},
		{"three groups", index.Query{Namespace: "ns1", ChangeGroups: []string{"c", "b", "a"}}, []string{"x4"}},
		{"a group repeated", index.Query{Namespace: "ns1", ChangeGroups: []string{"c", "c"}}, []string{"x4"}},
		{"a group of another namespace", index.Query{Namespace: "ns2", ChangeGroups: []string{"b"}}, nil},
		{"an unknown group", index.Query{ChangeGroups: []string{"a", "nope"}}, nil},
		{"by result", index.Query{Result: "Failed"}, []string{"y2", "x5", "x2"}},
		{"by phase", index.Query{Namespace: "ns1", Phase: "Finished"}, []string{"x7", "x5", "x6", "x3", "x2", "x1"}},
		{"by phase and result", index.Query{Phase: "Finished", Result: "Success"}, []string{"x7", "x6", "x3", "x1", "y1"}},
		{"group and result", index.Query{Namespace: "ns1", ChangeGroups: []string{"a"}, Result: "Failed"}, []string{"x5", "x2"}},
		{"a result no run has", index.Query{Result: "Stopped", Phase: "Finished"}, nil},
		{"created in [2, 5)", index.Query{CreatedAfter: t0.Add(2 * time.Minute), CreatedBefore: t0.Add(5 * time.Minute)}, []string{"x4", "x3", "x2"}},
		{"created at or after 5", index.Query{CreatedAfter: t0.Add(5 * time.Minute)}, []string{"x7", "y2", "x5", "x6"}},
		{"created before 2", index.Query{CreatedBefore: t0.Add(2 * time.Minute)}, []string{"x1", "y1"}},
		{"an empty range", index.Query{CreatedAfter: t0.Add(3 * time.Minute), CreatedBefore: t0.Add(3 * time.Minute)}, nil},
		{"before 1970", index.Query{CreatedBefore: time.Unix(-5, 0)}, nil},
		{"group, result and range", index.Query{ChangeGroups: []string{"a"}, Result: "Failed", CreatedBefore: t0.Add(5 * time.Minute)}, []string{"x2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, limit := range []int{0, 1, 2, 3, 100} {
				if got := listAll(t, ix, tc.q, limit); !slices.Equal(got, tc.want) {
					t.Errorf("limit %d: %v, want %v", limit, got, tc.want)
				}
			}
		})
	}
}

func TestListEntriesAndRemainingItemCount(t *testing.T) {
	ix := fixture(t)
	p, err := ix.List(index.Query{Namespace: "ns1", ChangeGroups: []string{"a"}, Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	want := failed(run("ns1", "x5", 5, "a"))
	if len(p.Entries) != 2 || !equal(p.Entries[0], want) {
		t.Fatalf("first entry %+v, want %+v", p.Entries[0], want)
	}
	if p.RemainingItemCount == nil || *p.RemainingItemCount != 3 {
		t.Fatalf("remainingItemCount %v, want 3", p.RemainingItemCount)
	}
	for name, q := range map[string]index.Query{
		"next page":     {Namespace: "ns1", ChangeGroups: []string{"a"}, Limit: 2, Continue: p.Continue},
		"a time range":  {Namespace: "ns1", CreatedBefore: t0.Add(time.Hour), Limit: 2},
		"two groups":    {ChangeGroups: []string{"a", "b"}, Limit: 1},
		"the last page": {Namespace: "ns2", Limit: 2},
	} {
		p, err := ix.List(q)
		if err != nil {
			t.Fatal(err)
		}
		if p.RemainingItemCount != nil {
			t.Errorf("%s: remainingItemCount %d, want none", name, *p.RemainingItemCount)
		}
	}
	p, err = ix.List(index.Query{Result: "Failed", Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if p.RemainingItemCount == nil || *p.RemainingItemCount != 2 {
		t.Fatalf("failed runs: remainingItemCount %v, want 2", p.RemainingItemCount)
	}
	for want, q := range map[string]index.Query{
		"limit -1":                       {Limit: -1},
		`changeGroups[1] "": not a`:      {ChangeGroups: []string{"a", ""}},
		`changeGroups[0] "a\x00b"`:       {ChangeGroups: []string{"a\x00b"}},
		`namespace "n\x00": holds a NUL`: {Namespace: "n\x00"},
	} {
		if _, err := ix.List(q); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("List(%+v): %v, want an error naming %s", q, err, want)
		}
	}
}

func equal(a, b archive.Entry) bool {
	return fmt.Sprintf("%+v", a) == fmt.Sprintf("%+v", b)
}

func TestPagingOverReplacementsAndTombstones(t *testing.T) {
	ix := open(t)
	var all []archive.Entry
	for i := range 20 {
		all = append(all, run("ns", fmt.Sprintf("r%02d", i), i, "g"))
	}
	apply(t, ix, "seg-1", all...)
	q := index.Query{Namespace: "ns", ChangeGroups: []string{"g"}, Limit: 3}
	p, err := ix.List(q)
	if err != nil {
		t.Fatal(err)
	}
	seen := uids(p.Entries) // r19 r18 r17
	// Between two pages: a run already returned and one not yet returned are archived again with
	// another result (a replacement), two are deleted (one returned, one not), one that was
	// deleted comes again (ignored), and a newer and an older run are archived.
	later := func(e archive.Entry) archive.Entry {
		return with(e, func(e *archive.Entry) { e.Archived = e.Archived.Add(time.Minute) })
	}
	tomb := func(e archive.Entry) archive.Entry {
		return with(e, func(e *archive.Entry) { e.Deleted = true })
	}
	apply(t, ix, "seg-2",
		later(failed(all[18])), later(failed(all[10])),
		tomb(all[17]), tomb(all[5]),
		run("ns", "r20", 20, "g"), run("ns", "r-old", -1, "g"),
	)
	apply(t, ix, "seg-3", later(all[5]))
	for p.Continue != "" {
		q.Continue = p.Continue
		if p, err = ix.List(q); err != nil {
			t.Fatal(err)
		}
		for _, u := range uids(p.Entries) {
			if slices.Contains(seen, u) {
				t.Fatalf("%s returned twice", u)
			}
			seen = append(seen, u)
		}
	}
	var want []string
	for i := 19; i >= 0; i-- {
		if i != 5 {
			want = append(want, fmt.Sprintf("r%02d", i))
		}
	}
	want = append(want, "r-old")
	if !slices.Equal(seen, want) {
		t.Fatalf("paged through %v, want %v", seen, want)
	}
	// Read again from the start: each run once, the deleted ones gone, replacements in place.
	want = slices.DeleteFunc(append([]string{"r20"}, want...), func(u string) bool { return u == "r17" })
	for _, limit := range []int{1, 2, 7} {
		if got := listAll(t, ix, index.Query{ChangeGroups: []string{"g"}}, limit); !slices.Equal(got, want) {
			t.Fatalf("limit %d: %v, want %v", limit, got, want)
		}
	}
	if got := listAll(t, ix, index.Query{Result: "Failed"}, 1); !slices.Equal(got, []string{"r18", "r10"}) {
		t.Fatalf("failed runs: %v, want r18 r10", got)
	}
}

func TestBadContinue(t *testing.T) {
	ix := fixture(t)
	q := index.Query{Namespace: "ns1", ChangeGroups: []string{"a"}, Limit: 2}
	p, err := ix.List(q)
	if err != nil {
		t.Fatal(err)
	}
	tok := p.Continue
	flip := []byte(tok)
	flip[len(flip)/2] ^= 1
	for name, bad := range map[string]index.Query{
		"garbage":          {Namespace: "ns1", ChangeGroups: []string{"a"}, Continue: "%%not a token%%"},
		"empty base64":     {Namespace: "ns1", ChangeGroups: []string{"a"}, Continue: "AAAA"},
		"cut":              {Namespace: "ns1", ChangeGroups: []string{"a"}, Continue: tok[:len(tok)-3]},
		"altered":          {Namespace: "ns1", ChangeGroups: []string{"a"}, Continue: string(flip)},
		"another group":    {Namespace: "ns1", ChangeGroups: []string{"b"}, Continue: tok},
		"another ns":       {Namespace: "ns2", ChangeGroups: []string{"a"}, Continue: tok},
		"another result":   {Namespace: "ns1", ChangeGroups: []string{"a"}, Result: "Failed", Continue: tok},
		"another range":    {Namespace: "ns1", ChangeGroups: []string{"a"}, CreatedAfter: t0, Continue: tok},
		"more groups":      {Namespace: "ns1", ChangeGroups: []string{"a", "b"}, Continue: tok},
		"no group at all":  {Namespace: "ns1", Continue: tok},
		"a long forgery":   {Continue: strings.Repeat("A", 500)},
		"another phase":    {Namespace: "ns1", ChangeGroups: []string{"a"}, Phase: "Finished", Continue: tok},
		"all namespaces'":  {ChangeGroups: []string{"a"}, Continue: tok},
		"another version?": {Namespace: "ns1", ChangeGroups: []string{"a"}, Continue: "Ag" + tok[2:]},
	} {
		if _, err := ix.List(bad); !errors.Is(err, index.ErrBadContinue) {
			t.Errorf("%s: %v, want ErrBadContinue", name, err)
		}
	}
	// The same query with another limit, or its groups in another order, goes on.
	q.Limit, q.Continue = 10, tok
	p, err = ix.List(q)
	if err != nil {
		t.Fatal(err)
	}
	if got := uids(p.Entries); !slices.Equal(got, []string{"x4", "x2", "x1"}) {
		t.Fatalf("next page %v", got)
	}
}

func count(t *testing.T, ix *index.Index, ns, group string) map[string]int64 {
	t.Helper()
	c, err := ix.Count(ns, group)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCount(t *testing.T) {
	ix := fixture(t)
	for _, tc := range []struct {
		ns, group string
		want      map[string]int64
	}{
		{"ns1", "a", map[string]int64{"Finished/Success": 2, "Finished/Failed": 2, "Cancelled/Stopped": 1}},
		{"", "a", map[string]int64{"Finished/Success": 3, "Finished/Failed": 2, "Cancelled/Stopped": 1}},
		{"ns1", "", map[string]int64{"Finished/Success": 4, "Finished/Failed": 2, "Cancelled/Stopped": 1}},
		{"ns2", "", map[string]int64{"Finished/Success": 1, "Finished/Failed": 1}},
		{"", "", map[string]int64{"Finished/Success": 5, "Finished/Failed": 3, "Cancelled/Stopped": 1}},
		{"ns2", "b", map[string]int64{}},
	} {
		if got := count(t, ix, tc.ns, tc.group); !maps.Equal(got, tc.want) {
			t.Errorf("Count(%q, %q) = %v, want %v", tc.ns, tc.group, got, tc.want)
		}
	}

	ix = open(t)
	a, b := run("ns", "a", 1, "g"), run("ns", "b", 2, "g")
	apply(t, ix, "seg-1", a, b)
	want := map[string]int64{"Finished/Success": 2}
	for _, step := range []struct {
		name  string
		seg   string
		es    []archive.Entry
		delta map[string]int64
	}{
		{"the same segment again", "seg-1", []archive.Entry{a, b}, nil},
		{"the same entries in another segment", "seg-2", []archive.Entry{a, b}, nil},
		{"a replacement", "seg-3", []archive.Entry{with(failed(a), func(e *archive.Entry) { e.Archived = e.Archived.Add(time.Second) })},
			map[string]int64{"Finished/Success": -1, "Finished/Failed": 1}},
		{"an older copy", "seg-4", []archive.Entry{a}, nil},
		{"a uid twice in one segment", "seg-5", []archive.Entry{run("ns", "c", 3, "g"), failed(run("ns", "c", 3, "g"))},
			map[string]int64{"Finished/Failed": 1}},
		{"a tombstone", "seg-6", []archive.Entry{with(b, func(e *archive.Entry) { e.Deleted = true })}, map[string]int64{"Finished/Success": -1}},
		{"the deleted run again", "seg-7", []archive.Entry{b}, nil},
		{"a tombstone of a run never indexed", "seg-8", []archive.Entry{{UID: "d", Deleted: true}}, nil},
	} {
		apply(t, ix, step.seg, step.es...)
		for k, d := range step.delta {
			want[k] += d
			if want[k] == 0 {
				delete(want, k)
			}
		}
		if got := count(t, ix, "ns", "g"); !maps.Equal(got, want) {
			t.Fatalf("after %s: %v, want %v", step.name, got, want)
		}
		if got := count(t, ix, "", ""); !maps.Equal(got, want) {
			t.Fatalf("after %s: everything %v, want %v", step.name, got, want)
		}
		if ok, err := ix.Applied(step.seg); err != nil || !ok {
			t.Fatalf("after %s: applied %v, %v", step.name, ok, err)
		}
	}
	if got := listAll(t, ix, index.Query{}, 1); !slices.Equal(got, []string{"c", "a"}) {
		t.Fatalf("runs %v, want c a", got)
	}
}

func TestGet(t *testing.T) {
	ix := open(t)
	first, second := run("ns", "u1", 1, "g"), run("ns", "u2", 9, "g")
	second.Name = first.Name // a run deleted and created again under the same name
	apply(t, ix, "seg-1", first, second, run("ns", "u3", 5), run("other", "u4", 5))
	es, err := ix.Get("ns", first.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got := uids(es); !slices.Equal(got, []string{"u2", "u1"}) {
		t.Fatalf("Get: %v, want u2 u1", got)
	}
	if es, err := ix.Get("other", first.Name); err != nil || len(es) != 0 {
		t.Fatalf("Get in another namespace: %v, %v", es, err)
	}
	e, ok, err := ix.GetUID("ns", "u3")
	if err != nil || !ok || !equal(e, run("ns", "u3", 5)) {
		t.Fatalf("GetUID: %+v, %v, %v", e, ok, err)
	}
	if _, ok, err := ix.GetUID("other", "u3"); err != nil || ok {
		t.Fatalf("GetUID in another namespace: %v, %v", ok, err)
	}
	apply(t, ix, "seg-2", with(second, func(e *archive.Entry) { e.Deleted = true }))
	if es, err := ix.Get("ns", first.Name); err != nil || !slices.Equal(uids(es), []string{"u1"}) {
		t.Fatalf("Get after a deletion: %v, %v", uids(es), err)
	}
	if _, ok, err := ix.GetUID("ns", "u2"); err != nil || ok {
		t.Fatalf("GetUID after a deletion: %v, %v", ok, err)
	}
}

func TestApplyRefusesWhatItCannotIndex(t *testing.T) {
	ix := open(t)
	good := run("ns", "ok", 1, "g")
	for _, tc := range []struct {
		name  string
		entry archive.Entry
		want  string
	}{
		{"no uid", with(good, func(e *archive.Entry) { e.UID = "" }), "field uid: empty"},
		{"no namespace", with(good, func(e *archive.Entry) { e.Namespace = "" }), "field ns: empty"},
		{"no name", with(good, func(e *archive.Entry) { e.Name = "" }), "field name: empty"},
		{"an empty group", with(good, func(e *archive.Entry) { e.ChangeGroups = []string{"g", ""} }), "field groups[1]: empty"},
		{"a NUL", with(good, func(e *archive.Entry) { e.ChangeGroups = []string{"g\x00h"} }), "holds a NUL"},
		{"no creation time", with(good, func(e *archive.Entry) { e.Created = time.Time{} }), "field created"},
		{"before 1970", with(good, func(e *archive.Entry) { e.Created = time.Unix(-1, 0) }), "field created"},
	} {
		err := ix.Apply("seg-"+tc.name, []archive.Entry{good, tc.entry})
		if !errors.Is(err, archive.ErrBadSegment) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "entry 2") {
			t.Errorf("%s: %v, want ErrBadSegment naming entry 2 and %q", tc.name, err, tc.want)
		}
		if ok, err := ix.Applied("seg-" + tc.name); err != nil || ok {
			t.Errorf("%s: applied %v, %v", tc.name, ok, err)
		}
	}
	if got := count(t, ix, "", ""); len(got) != 0 {
		t.Fatalf("counts %v after refused segments", got)
	}
}

func TestOpenWipesWhatItCannotRead(t *testing.T) {
	dir := t.TempDir()
	ix, err := index.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, ix, "seg-1", run("ns", "u1", 1))
	if err := ix.Close(); err != nil {
		t.Fatal(err)
	}
	reopen := func(what string) {
		t.Helper()
		ix, err := index.Open(dir)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer ix.Close()
		if ok, err := ix.Applied("seg-1"); err != nil || ok {
			t.Fatalf("%s: seg-1 applied %v, %v; want a wiped index", what, ok, err)
		}
		apply(t, ix, "seg-1", run("ns", "u1", 1))
	}
	// Kept when it is sound; not wiped from under the process that has it open.
	ix, err = index.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := ix.Applied("seg-1"); !ok {
		t.Fatal("a sound index lost what it had applied")
	}
	if other, err := index.Open(dir); err == nil || !strings.Contains(err.Error(), "another process") {
		if err == nil {
			_ = other.Close()
		}
		t.Fatalf("a second Open of an index in use: %v, want an error", err)
	}
	if ok, _ := ix.Applied("seg-1"); !ok {
		t.Fatal("a second Open wiped an index in use")
	}
	if err := index.SetFormatVersion(ix, "runservice-archive-index/0"); err != nil {
		t.Fatal(err)
	}
	_ = ix.Close()
	reopen("another format version")

	// Corrupt: every file of the database overwritten with garbage.
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range files {
		if err := os.WriteFile(f, []byte("garbage"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	reopen("a corrupt index")
}

func TestReadersWhileApplying(t *testing.T) {
	ix := open(t)
	const segments, size = 40, 10
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for r := range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				// Each segment is seen whole or not at all.
				var n int64
				for _, v := range count(t, ix, "ns", "g") {
					n += v
				}
				if n%size != 0 {
					t.Errorf("reader %d: %d runs counted, not whole segments", r, n)
					return
				}
				p, err := ix.List(index.Query{Namespace: "ns", ChangeGroups: []string{"g"}, Limit: 7})
				if err != nil {
					t.Error(err)
					return
				}
				if !slices.IsSortedFunc(p.Entries, func(a, b archive.Entry) int { return b.Created.Compare(a.Created) }) {
					t.Errorf("reader %d: page out of order", r)
					return
				}
			}
		})
	}
	for s := range segments {
		var es []archive.Entry
		for i := range size {
			es = append(es, run("ns", fmt.Sprintf("s%02d-%d", s, i), s*size+i, "g"))
		}
		apply(t, ix, fmt.Sprintf("seg-%02d", s), es...)
	}
	close(stop)
	wg.Wait()
	if got := listAll(t, ix, index.Query{ChangeGroups: []string{"g"}}, 33); len(got) != segments*size {
		t.Fatalf("%d runs, want %d", len(got), segments*size)
	}
}
