package ui

import (
	"slices"
	"sort"
	"strings"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// Node is a task's place in the drawn graph: its column and its row within the column.
type Node struct {
	Task string `json:"task"`
	Col  int    `json:"col"`
	Row  int    `json:"row"`
}

// Edge is a dependency, from parent to child; Label names its conditions when they are not the
// default (OnSuccess alone).
type Edge struct {
	From  string `json:"from"`
	To    string `json:"to"`
	Label string `json:"label,omitempty"`
}

// Layout places a run's tasks in columns by dependency depth (a task's column is the longest path
// from a root to it, so every edge points right) and orders each column's rows to reduce edge
// crossings with the barycenter heuristic: sweeps alternately left to right (a task's rank is the
// mean row of its parents) and right to left (of its children), keeping the ordering with the
// fewest crossings between adjacent columns. Ties keep the spec's order, so a layout is stable. The
// graph is acyclic (the webhook refuses cycles); dependencies on unknown tasks are ignored.
func Layout(tasks []rsv1.Task) ([]Node, []Edge) {
	index := make(map[string]int, len(tasks))
	for i, t := range tasks {
		index[t.Name] = i
	}
	var edges []Edge
	parents := make([][]int, len(tasks))
	children := make([][]int, len(tasks))
	for i, t := range tasks {
		for _, d := range t.Depends {
			p, ok := index[d.Task]
			if !ok || p == i {
				continue
			}
			parents[i] = append(parents[i], p)
			children[p] = append(children[p], i)
			edges = append(edges, Edge{From: d.Task, To: t.Name, Label: conditionsLabel(d.Conditions)})
		}
	}
	col := depths(parents)
	ncols := 0
	for _, c := range col {
		ncols = max(ncols, c+1)
	}
	layers := make([][]int, ncols)
	for i, c := range col { // spec order within a column to start
		layers[c] = append(layers[c], i)
	}
	row := make([]int, len(tasks))
	setRows := func() {
		for _, l := range layers {
			for r, i := range l {
				row[i] = r
			}
		}
	}
	setRows()
	best, bestCrossings := clone(layers), crossings(layers, children, row)
	for sweep := 0; sweep < 8 && bestCrossings > 0; sweep++ {
		if sweep%2 == 0 {
			for c := 1; c < ncols; c++ {
				orderBy(layers[c], parents, row)
				setRows()
			}
		} else {
			for c := ncols - 2; c >= 0; c-- {
				orderBy(layers[c], children, row)
				setRows()
			}
		}
		if n := crossings(layers, children, row); n < bestCrossings {
			best, bestCrossings = clone(layers), n
		}
	}
	layers = best
	setRows()
	nodes := make([]Node, len(tasks))
	for i, t := range tasks {
		nodes[i] = Node{Task: t.Name, Col: col[i], Row: row[i]}
	}
	return nodes, edges
}

// depths is each task's longest path from a root, in edges. A cycle (which admission refuses)
// ends the walk rather than looping.
func depths(parents [][]int) []int {
	depth := make([]int, len(parents))
	state := make([]int8, len(parents)) // 0 new, 1 visiting, 2 done
	var visit func(i int) int
	visit = func(i int) int {
		if state[i] != 0 {
			return depth[i]
		}
		state[i] = 1
		d := 0
		for _, p := range parents[i] {
			d = max(d, visit(p)+1)
		}
		depth[i], state[i] = d, 2
		return d
	}
	for i := range parents {
		visit(i)
	}
	return depth
}

// orderBy sorts a column by the mean row of each task's neighbours in the adjacent column; a task
// without any keeps its row.
func orderBy(layer []int, neighbours [][]int, row []int) {
	key := make(map[int]float64, len(layer))
	for _, i := range layer {
		key[i] = float64(row[i])
		if n := neighbours[i]; len(n) > 0 {
			sum := 0
			for _, j := range n {
				sum += row[j]
			}
			key[i] = float64(sum) / float64(len(n))
		}
	}
	sort.SliceStable(layer, func(a, b int) bool { return key[layer[a]] < key[layer[b]] })
}

// crossings counts pairs of edges that cross, between tasks in any columns, drawn as straight
// segments: two edges leaving the same column cross when their ends are in opposite orders.
func crossings(layers [][]int, children [][]int, row []int) int {
	type seg struct{ r0, c1, r1 int }
	byCol := make([][]seg, len(layers))
	col := map[int]int{}
	for c, l := range layers {
		for _, i := range l {
			col[i] = c
		}
	}
	for c, l := range layers {
		for _, i := range l {
			for _, j := range children[i] {
				byCol[c] = append(byCol[c], seg{row[i], col[j], row[j]})
			}
		}
	}
	n := 0
	for _, segs := range byCol {
		for a := range segs {
			for b := a + 1; b < len(segs); b++ {
				x, y := segs[a], segs[b]
				if x.c1 == y.c1 && (x.r0-y.r0)*(x.r1-y.r1) < 0 {
					n++
				}
			}
		}
	}
	return n
}

func clone(layers [][]int) [][]int {
	out := make([][]int, len(layers))
	for i, l := range layers {
		out[i] = slices.Clone(l)
	}
	return out
}

// conditionsLabel is an edge's label: empty for the default (no conditions, or OnSuccess alone).
func conditionsLabel(conds []rsv1.DependCondition) string {
	if len(conds) == 0 || (len(conds) == 1 && conds[0] == rsv1.DependOnSuccess) {
		return ""
	}
	s := make([]string, len(conds))
	for i, c := range conds {
		s[i] = string(c)
	}
	return strings.Join(s, ", ")
}
