package archiveapi

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/archive/index"
)

func TestQueryFor(t *testing.T) {
	opts := func(label, field string, limit int64, cont string) *metainternalversion.ListOptions {
		o := &metainternalversion.ListOptions{Limit: limit, Continue: cont}
		if label != "" {
			sel, err := labels.Parse(label)
			if err != nil {
				t.Fatalf("%s: %v", label, err)
			}
			o.LabelSelector = sel
		}
		if field != "" {
			sel, err := fields.ParseSelector(field)
			if err != nil {
				t.Fatalf("%s: %v", field, err)
			}
			o.FieldSelector = sel
		}
		return o
	}
	for _, tc := range []struct {
		name      string
		namespace string
		opts      *metainternalversion.ListOptions
		want      listQuery
		err       string // a 400 saying this
	}{
		{name: "no options", namespace: "ns", want: listQuery{Unlimited: true, Query: Query{Limit: maxPage, Namespace: "ns"}}},
		{name: "paging", namespace: "ns", opts: opts("", "", 7, "tok"), want: listQuery{Query: Query{Namespace: "ns", Limit: 7, Continue: "tok"}}},
		{name: "a page larger than the server's", namespace: "ns", opts: opts("", "", 5000, ""), want: listQuery{Query: Query{Namespace: "ns", Limit: maxPage}}},
		{name: "groups, phase and result", namespace: "ns",
			opts: opts("changegroup.runservice.dev/a,changegroup.runservice.dev/b=,runservice.dev/phase=Finished,runservice.dev/result==Failed", "", 0, ""),
			want: listQuery{Unlimited: true, Query: Query{Limit: maxPage, Namespace: "ns", ChangeGroups: []string{"a", "b"}, Phase: "Finished", Result: "Failed"}}},
		{name: "a group given twice", namespace: "ns", opts: opts("changegroup.runservice.dev/a,changegroup.runservice.dev/a=", "", 0, ""),
			want: listQuery{Unlimited: true, Query: Query{Limit: maxPage, Namespace: "ns", ChangeGroups: []string{"a"}}}},
		{name: "by name", namespace: "ns", opts: opts("", "metadata.name=build", 0, ""), want: listQuery{Unlimited: true, Query: Query{Limit: maxPage, Namespace: "ns"}, Name: "build"}},
		{name: "namespace of an all-namespaces list", opts: opts("", "metadata.namespace=ns", 0, ""), want: listQuery{Unlimited: true, Query: Query{Limit: maxPage, Namespace: "ns"}}},
		{name: "the request's namespace again", namespace: "ns", opts: opts("", "metadata.namespace=ns", 0, ""), want: listQuery{Unlimited: true, Query: Query{Limit: maxPage, Namespace: "ns"}}},

		{name: "unknown label", namespace: "ns", opts: opts("team=infra", "", 0, ""), err: "team is not a selectable label"},
		{name: "group by value", namespace: "ns", opts: opts("changegroup.runservice.dev/a=x", "", 0, ""), err: "by existence only"},
		{name: "group absent", namespace: "ns", opts: opts("!changegroup.runservice.dev/a", "", 0, ""), err: "by existence only"},
		{name: "phase not final", namespace: "ns", opts: opts("runservice.dev/phase=Running", "", 0, ""), err: "one of Finished, Cancelled, SetupError"},
		{name: "phase by set", namespace: "ns", opts: opts("runservice.dev/phase in (Finished,Cancelled)", "", 0, ""), err: "by equality only"},
		{name: "result not equal", namespace: "ns", opts: opts("runservice.dev/result!=Failed", "", 0, ""), err: "by equality only"},
		{name: "two results", namespace: "ns", opts: opts("runservice.dev/result=Failed,runservice.dev/result=Success", "", 0, ""), err: "select nothing"},
		{name: "unknown field", namespace: "ns", opts: opts("", "status.phase=Finished", 0, ""), err: "metadata.name and metadata.namespace only"},
		{name: "field not equal", namespace: "ns", opts: opts("", "metadata.name!=x", 0, ""), err: "metadata.name=<name> and metadata.namespace=<namespace> only"},
		{name: "two names", namespace: "ns", opts: opts("", "metadata.name=a,metadata.name=b", 0, ""), err: "two names"},
		{name: "another namespace", namespace: "ns", opts: opts("", "metadata.namespace=other", 0, ""), err: `for namespace "ns"`},
		{name: "a name in every namespace", opts: opts("", "metadata.name=a", 0, ""), err: "a list by name is of one namespace"},
		{name: "a name in a namespace of an all-namespaces list", opts: opts("", "metadata.name=a,metadata.namespace=ns", 0, ""), want: listQuery{Unlimited: true, Query: Query{Limit: maxPage, Namespace: "ns"}, Name: "a"}},
		{name: "a name list continued", namespace: "ns", opts: opts("", "metadata.name=a", 0, "tok"), err: "never paged"},
		{name: "negative limit", namespace: "ns", opts: opts("", "", -1, ""), err: "must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := queryFor(tc.namespace, tc.opts)
			if tc.err != "" {
				if !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want a 400 saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("query %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestConvertFieldLabel(t *testing.T) {
	if l, v, err := convertFieldLabel("metadata.name", "x"); err != nil || l != "metadata.name" || v != "x" {
		t.Fatalf("metadata.name: %s %s %v", l, v, err)
	}
	if _, _, err := convertFieldLabel("spec.changeGroups", "a"); err == nil || !strings.Contains(err.Error(), "changegroup.runservice.dev/<group>") {
		t.Fatalf("spec.changeGroups: %v, want an error pointing at the labels", err)
	}
}

func TestWantsTable(t *testing.T) {
	for accept, want := range map[string]bool{
		// kubectl get
		"application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json": true,
		"application/json;as=Table;v=v1beta1;g=meta.k8s.io":                                                               true,
		// kubectl get -o yaml, client-go
		"application/json": false,
		"":                 false,
		"*/*":              false,
		"application/yaml": false,
		"application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json": false,
		// a Table version the server does not make, then a plain list
		"application/json;as=Table;v=v2;g=meta.k8s.io,application/json": false,
		// preferences
		"application/json;q=0.9,application/json;as=Table;v=v1;g=meta.k8s.io": true,
		"application/json;as=Table;v=v1;g=meta.k8s.io;q=0,application/json":   false,
	} {
		if got := wantsTable(accept); got != want {
			t.Errorf("Accept %q: a Table %v, want %v", accept, got, want)
		}
	}
}

func TestObjectOfIsTheEntry(t *testing.T) {
	at := func(m int) time.Time { return time.Date(2026, 3, 1, 8, m, 0, 0, time.UTC) }
	for _, e := range []archive.Entry{
		{Namespace: "ns", Name: "build", UID: "u1", ChangeGroups: []string{"a", "b"}, Phase: "Finished", Result: "Failed", Progress: "3/4",
			Created: at(0), Started: at(1), Ended: at(5), Archived: at(20)},
		{Namespace: "ns", Name: "never-started", UID: "u2", Phase: "SetupError", Result: "Unknown", Created: at(0), Archived: at(10)},
	} {
		run := objectOf(e)
		if got := archive.EntryOf(&run); !reflect.DeepEqual(got, e) {
			t.Errorf("the entry of objectOf(%+v) is %+v", e, got)
		}
		for _, g := range e.ChangeGroups {
			if _, ok := run.Labels["changegroup.runservice.dev/"+g]; !ok {
				t.Errorf("%s: no label of change group %s: %v", e.Name, g, run.Labels)
			}
		}
		if run.Labels["runservice.dev/phase"] != e.Phase || run.Labels["runservice.dev/result"] != e.Result {
			t.Errorf("%s: phase and result labels %v", e.Name, run.Labels)
		}
	}
}

func TestRow(t *testing.T) {
	at := func(s int) time.Time { return time.Date(2026, 3, 1, 8, 0, s, 0, time.UTC) }
	now := at(0).Add(3 * time.Hour)
	for _, tc := range []struct {
		e    archive.Entry
		want []any
	}{
		{archive.Entry{Name: "build", ChangeGroups: []string{"a", "b"}, Phase: "Finished", Result: "Success", Progress: "2/2", Created: at(0), Started: at(10), Ended: at(75)},
			[]any{"build", "a,b", "Finished", "Success", "2/2", "2026-03-01T08:00:10Z", "65s", "3h"}},
		{archive.Entry{Name: "broken", Phase: "SetupError", Result: "Unknown", Created: at(0)},
			[]any{"broken", "", "SetupError", "Unknown", "", "", "", "3h"}},
	} {
		if got := row(tc.e, now); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("row of %s: %q, want %q", tc.e.Name, got, tc.want)
		}
	}
}

// TestNoIndex: without an index, lists are empty (with a warning) and gets are 503s; while the
// index is rebuilt, both are 503s.
func TestNoIndex(t *testing.T) {
	s := &archivedRuns{}
	if list, err := s.List(context.Background(), nil); err != nil || len(list.(*arv1.ArchivedRunList).Items) != 0 {
		t.Errorf("list without an index: %v %v, want an empty list", list, err)
	}
	if _, err := s.Get(context.Background(), "x", nil); !apierrors.IsServiceUnavailable(err) {
		t.Errorf("get without an index: %v, want a 503", err)
	}
	// An index being rebuilt is not read: its lists would leave runs out.
	rebuilding := &archivedRuns{index: (*index.Index)(nil), ready: func() bool { return false }}
	if _, err := rebuilding.List(context.Background(), nil); !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "being rebuilt") {
		t.Errorf("list of an index being rebuilt: %v, want a 503", err)
	}
	if _, err := rebuilding.Get(context.Background(), "x", nil); !apierrors.IsServiceUnavailable(err) {
		t.Errorf("get of an index being rebuilt: %v, want a 503", err)
	}
}
