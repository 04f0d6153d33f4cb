package dag

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"runservice.dev/runservice/api/v1alpha1"
)

// Validate does the checks that the CRD schema does not: duplicate task names, dependencies on unknown
// tasks, self dependencies, duplicate dependency entries, cycles, duplicate change groups, a step
// that is not exactly one kind, resources other than cpu and memory, a restoreWorkspace step in a
// task without parents, and approvals of tasks that do not exist or need no approval. (The schema
// could say the step's and the resources' rules in CEL, but the apiserver would evaluate them again on
// every status write of the run.) Errors use field paths under path, so messages name the field.
func Validate(spec *v1alpha1.RunSpec, path *field.Path) field.ErrorList {
	if spec == nil {
		return nil
	}
	var errs field.ErrorList
	tasksPath := path.Child("tasks")

	// first is the spec index of each name's first occurrence, the one the graph keeps.
	first := make(map[string]int, len(spec.Tasks))
	for i, t := range spec.Tasks {
		if _, ok := first[t.Name]; ok {
			errs = append(errs, field.Duplicate(tasksPath.Index(i).Child("name"), t.Name))
			continue
		}
		first[t.Name] = i
	}

	for i, t := range spec.Tasks {
		taskPath := tasksPath.Index(i)
		seen := make(map[string]bool, len(t.Depends))
		for j, d := range t.Depends {
			p := taskPath.Child("depends").Index(j).Child("task")
			_, known := first[d.Task]
			switch {
			case seen[d.Task]:
				errs = append(errs, field.Duplicate(p, d.Task))
			case d.Task == t.Name:
				errs = append(errs, field.Invalid(p, d.Task, "a task cannot depend on itself"))
			case !known:
				errs = append(errs, field.NotFound(p, d.Task))
			}
			seen[d.Task] = true
		}
		for k, s := range t.Steps {
			if kinds := s.Kinds(); len(kinds) != 1 {
				set := "none"
				if len(kinds) > 0 {
					set = strings.Join(kinds, " and ")
				}
				errs = append(errs, field.Invalid(taskPath.Child("steps").Index(k), set,
					"a step must have exactly one of run, saveToWorkspace or restoreWorkspace"))
			}
		}
		for j, c := range t.Containers {
			if c.Resources == nil {
				continue
			}
			p := taskPath.Child("containers").Index(j).Child("resources")
			for _, r := range []struct {
				name string
				list corev1.ResourceList
			}{{"requests", c.Resources.Requests}, {"limits", c.Resources.Limits}} {
				for _, name := range slices.Sorted(maps.Keys(r.list)) {
					if name != corev1.ResourceCPU && name != corev1.ResourceMemory {
						errs = append(errs, field.NotSupported(p.Child(r.name).Key(string(name)), name, []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory}))
					}
				}
			}
		}
		if len(t.Depends) == 0 {
			for k, s := range t.Steps {
				if s.RestoreWorkspace == nil {
					continue
				}
				errs = append(errs, field.Invalid(taskPath.Child("steps").Index(k).Child("restoreWorkspace"),
					s.RestoreWorkspace.DestDir, "the task has no depends, so there is no parent workspace to restore"))
			}
		}
	}

	g := newGraph(spec)
	for _, cycle := range g.cycles() {
		names := make([]string, len(cycle.path))
		for k, i := range cycle.path {
			names[k] = g.names[i]
		}
		msg := fmt.Sprintf("tasks form a dependency cycle: %s -> %s (each depends on the next)",
			strings.Join(names, " -> "), names[0])
		if len(cycle.others) > 0 {
			others := make([]string, len(cycle.others))
			for k, i := range cycle.others {
				others[k] = g.names[i]
			}
			msg += "; also on a cycle with them: " + strings.Join(others, ", ")
		}
		start := g.names[cycle.path[0]]
		errs = append(errs, field.Invalid(tasksPath.Index(first[start]).Child("depends"), start, msg))
	}

	seenGroups := make(map[string]bool, len(spec.ChangeGroups))
	for i, cg := range spec.ChangeGroups {
		if seenGroups[cg] {
			errs = append(errs, field.Duplicate(path.Child("changeGroups").Index(i), cg))
		}
		seenGroups[cg] = true
	}
	return append(errs, ValidateApprovedTasks(spec, nil, path)...)
}

// ValidateApprovedTasks refuses the entries of spec.approvedTasks that are not in old and name a task
// that does not exist or does not have needsApproval: such an approval approves nothing, and the
// task the client meant keeps the run waiting. Only new entries are judged because tasks are
// immutable, so an entry that passed once passes again; one stored without passing (by an older
// manager, or with the webhook off) must not block every later update of the run, such as a stop.
func ValidateApprovedTasks(spec *v1alpha1.RunSpec, old []string, path *field.Path) field.ErrorList {
	if spec == nil {
		return nil
	}
	var errs field.ErrorList
	for i, name := range spec.ApprovedTasks {
		if slices.Contains(old, name) {
			continue
		}
		p := path.Child("approvedTasks").Index(i)
		k := slices.IndexFunc(spec.Tasks, func(t v1alpha1.Task) bool { return t.Name == name })
		switch {
		case k < 0:
			errs = append(errs, field.NotFound(p, name))
		case !spec.Tasks[k].IsNeedsApproval():
			errs = append(errs, field.Invalid(p, name, fmt.Sprintf("task %s does not have needsApproval, so there is nothing to approve", name)))
		}
	}
	return errs
}

// cycle is one cycle of the graph, to name in an error: path starts at the first task (in spec order) of
// a strongly connected component and each task depends on the next, the last on the first; others are
// the component's tasks the path does not go through.
type cycle struct {
	path   []int
	others []int
}

// cycles returns one cycle per strongly connected component with more than one task (self edges are not
// in the graph), ordered by their first task.
func (g *graph) cycles() []cycle {
	n := len(g.names)
	comp := g.components()
	members := make(map[int][]int)
	for i := range n {
		members[comp[i]] = append(members[comp[i]], i)
	}
	var out []cycle
	reported := make(map[int]bool)
	for start := range n {
		c := comp[start]
		if reported[c] || len(members[c]) < 2 {
			continue
		}
		reported[c] = true
		// Shortest way back to start, breadth first through the component.
		prev := make(map[int]int, len(members[c]))
		prev[start] = -1
		queue := []int{start}
		last := -1
		for len(queue) > 0 && last < 0 {
			u := queue[0]
			queue = queue[1:]
			for _, p := range g.parents[u] {
				if comp[p] != c {
					continue
				}
				if p == start {
					last = u
					break
				}
				if _, ok := prev[p]; !ok {
					prev[p] = u
					queue = append(queue, p)
				}
			}
		}
		var path []int
		for u := last; u >= 0; u = prev[u] {
			path = append(path, u)
		}
		// path runs from last back to start; reverse it so that it follows the depends edges.
		for l, r := 0, len(path)-1; l < r; l, r = l+1, r-1 {
			path[l], path[r] = path[r], path[l]
		}
		onPath := make(map[int]bool, len(path))
		for _, u := range path {
			onPath[u] = true
		}
		var others []int
		for _, u := range members[c] {
			if !onPath[u] {
				others = append(others, u)
			}
		}
		out = append(out, cycle{path: path, others: others})
	}
	return out
}

// components labels each task with its strongly connected component (Tarjan's algorithm).
func (g *graph) components() []int {
	n := len(g.names)
	index := make([]int, n)
	low := make([]int, n)
	onStack := make([]bool, n)
	comp := make([]int, n)
	for i := range n {
		index[i] = -1
	}
	var stack []int
	next, nComp := 0, 0
	var visit func(u int)
	visit = func(u int) {
		index[u], low[u] = next, next
		next++
		stack = append(stack, u)
		onStack[u] = true
		for _, p := range g.parents[u] {
			switch {
			case index[p] < 0:
				visit(p)
				low[u] = min(low[u], low[p])
			case onStack[p]:
				low[u] = min(low[u], index[p])
			}
		}
		if low[u] != index[u] {
			return
		}
		for {
			w := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			onStack[w] = false
			comp[w] = nComp
			if w == u {
				break
			}
		}
		nComp++
	}
	for i := range n {
		if index[i] < 0 {
			visit(i)
		}
	}
	return comp
}
