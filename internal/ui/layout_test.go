package ui

import (
	"fmt"
	"testing"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

func tk(name string, parents ...string) rsv1.Task {
	t := rsv1.Task{Name: name}
	for _, p := range parents {
		t.Depends = append(t.Depends, rsv1.TaskDependency{Task: p})
	}
	return t
}

func on(t rsv1.Task, parent string, conds ...rsv1.DependCondition) rsv1.Task {
	t.Depends = append(t.Depends, rsv1.TaskDependency{Task: parent, Conditions: conds})
	return t
}

// places renders a layout as "task:col,row" in spec order.
func places(nodes []Node) string {
	s := ""
	for _, n := range nodes {
		s += fmt.Sprintf("%s:%d,%d ", n.Task, n.Col, n.Row)
	}
	return s
}

func TestLayout(t *testing.T) {
	cases := []struct {
		name  string
		tasks []rsv1.Task
		want  string
	}{
		{"one task", []rsv1.Task{tk("a")}, "a:0,0 "},
		{"column is the longest path from a root, not the shortest",
			[]rsv1.Task{tk("a"), tk("b", "a"), tk("c", "b"), tk("d", "a", "c")},
			"a:0,0 b:1,0 c:2,0 d:3,0 "},
		{"diamond", []rsv1.Task{tk("checkout"), tk("build", "checkout"), tk("test", "checkout"), tk("package", "build", "test")},
			"checkout:0,0 build:1,0 test:1,1 package:2,0 "},
		{"rows follow their parents so that edges do not cross",
			[]rsv1.Task{tk("a"), tk("b"), tk("from-b", "b"), tk("from-a", "a")},
			"a:0,0 b:0,1 from-b:1,1 from-a:1,0 "},
		{"a child column is ordered by its parents' rows",
			[]rsv1.Task{tk("x"), tk("y"), tk("z"), tk("p", "z"), tk("q", "x")},
			"x:0,0 y:0,1 z:0,2 p:1,1 q:1,0 "},
		{"unknown and self dependencies are ignored", []rsv1.Task{tk("a", "nope", "a")}, "a:0,0 "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			nodes, _ := Layout(c.tasks)
			if got := places(nodes); got != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}

func TestLayoutHasNoCrossingsWhereNoneAreNeeded(t *testing.T) {
	// Two independent chains whose second column is listed in the opposite order.
	tasks := []rsv1.Task{tk("a1"), tk("b1"), tk("b2", "b1"), tk("a2", "a1"), tk("b3", "b2"), tk("a3", "a2")}
	nodes, _ := Layout(tasks)
	row := map[string]int{}
	for _, n := range nodes {
		row[n.Task] = n.Row
	}
	if row["a1"] != row["a2"] || row["a2"] != row["a3"] || row["b1"] != row["b2"] || row["b2"] != row["b3"] {
		t.Errorf("each chain should keep one row: %s", places(nodes))
	}
}

func TestLayoutEdgeLabels(t *testing.T) {
	tasks := []rsv1.Task{
		tk("a"),
		on(tk("b"), "a", rsv1.DependOnSuccess),
		on(tk("c"), "a", rsv1.DependOnFailure),
		on(tk("d"), "a", rsv1.DependOnSuccess, rsv1.DependOnSkipped),
		tk("e", "a"),
	}
	_, edges := Layout(tasks)
	want := []Edge{{"a", "b", ""}, {"a", "c", "OnFailure"}, {"a", "d", "OnSuccess, OnSkipped"}, {"a", "e", ""}}
	if fmt.Sprint(edges) != fmt.Sprint(want) {
		t.Errorf("edges %v, want %v", edges, want)
	}
}
