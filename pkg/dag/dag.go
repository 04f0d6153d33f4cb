package dag

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"runservice.dev/runservice/api/v1alpha1"
)

// ExecutorTaskState is what the run controller knows of one task's ExecutorTask.
type ExecutorTaskState struct {
	Name            string // ExecutorTask name
	Executor        string
	Status          v1alpha1.ExecutorTaskStatus
	StopRequested   bool // the ExecutorTask's spec.stop is already true
	ExecutorRemoved bool // its Executor is gone (deleted, being deleted, or re-registered with another uid)
	// Fetched says the manager is done copying the task's logs and archives into the object store,
	// whatever it got: a task that restores this one's workspace waits until then.
	Fetched bool
	// MissingArchives are the archives of the task's successful saveToWorkspace steps that will
	// never be in the object store; a task that restores this one's workspace fails on them.
	MissingArchives []MissingArchive
}

// MissingArchive is a workspace archive a task saved that the manager could not store.
type MissingArchive struct {
	Step     int    // index of the saveToWorkspace step
	StepName string // its name in the ExecutorTask's status
	Why      string // why it is missing, for the restoring task's message
}

// Input is everything Advance decides from.
type Input struct {
	Spec *v1alpha1.RunSpec
	// Status is the current status; it may be nil or zero for a new run. It is never modified.
	Status *v1alpha1.RunStatus
	// Admitted says the run may start: it is not suspended and admitted in all its change groups.
	Admitted bool
	// ExecutorTasks are the run's ExecutorTasks, keyed by task name.
	ExecutorTasks map[string]ExecutorTaskState
	Now           metav1.Time
	// Kept are the statuses of the tasks a restart keeps from the run it restarts (final, with
	// fromRun): they enter a new run's status as they are, on its first advance, and are never
	// scheduled; their children find them final like any parent.
	Kept []v1alpha1.TaskStatus
}

// Output is what Advance decided.
type Output struct {
	// Status is the new status, a deep copy: the input is untouched. Progress is "done/total".
	Status v1alpha1.RunStatus
	// Schedule names the tasks that need an ExecutorTask now, in spec order.
	Schedule []string
	// Stop names the ExecutorTasks whose spec.stop must be set to true.
	Stop []string
}

// Advance computes the next status of a run and the ExecutorTasks to create and to stop. It is
// level-based: fed its own output status and the same ExecutorTasks it returns the same status, and it
// lists again the tasks that still have no ExecutorTask, so a failed create is simply retried.
func Advance(in Input) Output {
	spec := in.Spec
	if spec == nil {
		spec = &v1alpha1.RunSpec{}
	}
	a := &advancer{
		spec: spec,
		g:    newGraph(spec),
		ets:  in.ExecutorTasks,
		now:  in.Now,
		stop: spec.Stop != nil && *spec.Stop,
	}
	if in.Status != nil {
		in.Status.DeepCopyInto(&a.status)
	}

	switch a.status.Phase {
	case "", v1alpha1.RunPhaseQueued, v1alpha1.RunPhaseRunning:
		// The run can still move.
	default:
		// Final phases (and phases this version does not know) are left as they are.
		a.status.Progress = a.progress()
		return Output{Status: a.status}
	}

	if a.status.Phase == "" {
		a.status.Phase = v1alpha1.RunPhaseQueued
		a.status.Result = v1alpha1.RunResultUnknown
		a.status.QueueTime = a.nowPtr()
		a.seed(in.Kept)
	}
	a.alignTasks()

	if a.status.Phase == v1alpha1.RunPhaseQueued {
		a.queued(in.Admitted)
	}
	if a.status.Phase == v1alpha1.RunPhaseRunning {
		a.running()
	}

	a.status.Progress = a.progress()
	return Output{Status: a.status, Schedule: a.schedule, Stop: a.stopETs}
}

// advancer holds one Advance call. status.Tasks is aligned with g.names once alignTasks ran, so a graph
// index is also an index into status.Tasks.
type advancer struct {
	spec *v1alpha1.RunSpec
	g    *graph
	ets  map[string]ExecutorTaskState
	now  metav1.Time
	stop bool

	status   v1alpha1.RunStatus
	schedule []string
	stopETs  []string
}

// nowPtr returns a fresh pointer each time so that no two status fields share a time.
func (a *advancer) nowPtr() *metav1.Time {
	t := a.now
	return &t
}

// alignTasks rebuilds status.Tasks with exactly one entry per spec task, in spec order, keeping the
// entries that exist and adding missing ones as NotStarted. Entries for tasks the spec does not have are
// dropped: spec tasks are immutable, so they can only come from a hand-edited status.
func (a *advancer) alignTasks() {
	existing := make(map[string]*v1alpha1.TaskStatus, len(a.status.Tasks))
	for i := range a.status.Tasks {
		if _, ok := existing[a.status.Tasks[i].Name]; !ok {
			existing[a.status.Tasks[i].Name] = &a.status.Tasks[i]
		}
	}
	tasks := make([]v1alpha1.TaskStatus, 0, len(a.g.names))
	for _, name := range a.g.names {
		if ts, ok := existing[name]; ok {
			tasks = append(tasks, *ts)
			continue
		}
		tasks = append(tasks, v1alpha1.TaskStatus{Name: name, Phase: v1alpha1.TaskPhaseNotStarted})
	}
	a.status.Tasks = tasks
}

// seed puts the tasks a restart keeps into a new run's status, those of its spec that are final.
func (a *advancer) seed(kept []v1alpha1.TaskStatus) {
	for _, ts := range kept {
		if _, ok := a.g.index[ts.Name]; !ok || !ts.Phase.IsFinal() ||
			slices.ContainsFunc(a.status.Tasks, func(s v1alpha1.TaskStatus) bool { return s.Name == ts.Name }) {
			continue
		}
		a.status.Tasks = append(a.status.Tasks, *ts.DeepCopy())
	}
}

func (a *advancer) queued(admitted bool) {
	switch {
	case a.stop:
		a.status.Phase = v1alpha1.RunPhaseCancelled
		a.status.Result = v1alpha1.RunResultStopped
		for i := range a.status.Tasks {
			if !a.status.Tasks[i].Phase.IsFinal() { // a task a restart kept stays as it ended
				a.cancel(&a.status.Tasks[i])
			}
		}
		a.status.EndTime = a.nowPtr()
	case admitted:
		a.status.Phase = v1alpha1.RunPhaseRunning
		a.status.StartTime = a.nowPtr()
	}
}

func (a *advancer) cancel(ts *v1alpha1.TaskStatus) {
	ts.Phase = v1alpha1.TaskPhaseCancelled
	ts.Reason = v1alpha1.ReasonRunStopped
	ts.WaitingApproval = false
	ts.EndTime = a.nowPtr()
}

func (a *advancer) running() {
	a.fold()
	if a.stop {
		a.stopAll()
	} else {
		a.scheduleReady()
	}
	a.setResult()
	a.finish()
}

// fold copies what the executors reported into the task statuses.
func (a *advancer) fold() {
	for i := range a.status.Tasks {
		ts := &a.status.Tasks[i]
		et, ok := a.ets[ts.Name]
		if !ok {
			continue
		}
		ts.ExecutorTask = et.Name
		ts.Executor = et.Executor
		if decidedByManager(ts) {
			continue
		}
		switch {
		case et.Status.Phase.IsFinal():
			ts.Phase = et.Status.Phase
			ts.Steps = copySteps(et.Status.Steps)
			ts.StartTime = et.Status.StartTime.DeepCopy()
			// An executor should always report an end time with a final phase; if it does not, keep
			// the first one we recorded so that repeated calls do not move it.
			switch {
			case et.Status.EndTime != nil:
				ts.EndTime = et.Status.EndTime.DeepCopy()
			case ts.EndTime == nil:
				ts.EndTime = a.nowPtr()
			}
			ts.Message = v1alpha1.TruncateMessage(et.Status.Message)
			ts.Reason = ""
		case et.ExecutorRemoved:
			ts.Phase = v1alpha1.TaskPhaseFailed
			ts.Reason = v1alpha1.ReasonExecutorRemoved
			ts.Message = fmt.Sprintf("executor %s was removed", et.Executor)
			ts.EndTime = a.nowPtr()
		case et.Status.Phase == v1alpha1.TaskPhaseRunning:
			ts.Phase = v1alpha1.TaskPhaseRunning
			ts.StartTime = et.Status.StartTime.DeepCopy()
			ts.Steps = copySteps(et.Status.Steps)
		}
		// Otherwise the executor has not started the task yet: it stays as it is.
	}
}

// decidedByManager reports whether the manager, not an executor, made the task final. Such a decision
// is never overridden by a (late) ExecutorTask status.
func decidedByManager(ts *v1alpha1.TaskStatus) bool {
	switch ts.Phase {
	case v1alpha1.TaskPhaseSkipped, v1alpha1.TaskPhaseCancelled:
		return true
	case v1alpha1.TaskPhaseFailed:
		return ts.Reason == v1alpha1.ReasonExecutorRemoved || ts.Reason == v1alpha1.ReasonWorkspaceMissing
	}
	return false
}

func copySteps(steps []v1alpha1.StepStatus) []v1alpha1.StepStatus {
	if steps == nil {
		return nil
	}
	out := make([]v1alpha1.StepStatus, len(steps))
	for i := range steps {
		steps[i].DeepCopyInto(&out[i])
	}
	return out
}

// stopAll cancels the tasks that never got an ExecutorTask and asks the executors to stop the others.
func (a *advancer) stopAll() {
	for i := range a.status.Tasks {
		ts := &a.status.Tasks[i]
		if _, ok := a.ets[ts.Name]; ok || ts.Phase != v1alpha1.TaskPhaseNotStarted {
			continue
		}
		a.cancel(ts)
	}
	for _, name := range a.etOrder() {
		et := a.ets[name]
		if et.Status.IsActive() && !et.ExecutorRemoved && !et.StopRequested {
			a.stopETs = append(a.stopETs, et.Name)
		}
	}
}

// etOrder returns the keys of the ExecutorTasks in spec order, then any unknown ones sorted, so that
// Stop is deterministic.
func (a *advancer) etOrder() []string {
	keys := make([]string, 0, len(a.ets))
	for _, name := range a.g.names {
		if _, ok := a.ets[name]; ok {
			keys = append(keys, name)
		}
	}
	var extra []string
	for name := range a.ets {
		if _, ok := a.g.index[name]; !ok {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	return append(keys, extra...)
}

// scheduleReady decides the tasks whose parents are all final. Walking in topological order lets a skip
// cascade down a chain in one call.
func (a *advancer) scheduleReady() {
	scheduled := make([]bool, len(a.g.names))
	for _, i := range a.g.topo {
		ts := &a.status.Tasks[i]
		if _, ok := a.ets[ts.Name]; ok || ts.Phase != v1alpha1.TaskPhaseNotStarted {
			continue
		}
		task := a.g.tasks[i]
		ready, unmatched := a.parentsAllow(task)
		if !ready {
			continue
		}
		if unmatched != "" {
			a.end(ts, v1alpha1.TaskPhaseSkipped, v1alpha1.ReasonParentsNotMatched, unmatched)
			continue
		}
		unstored, missing := a.workspace(i)
		if missing != "" {
			// Run, it would restore a workspace with holes and could succeed on the wrong files.
			a.end(ts, v1alpha1.TaskPhaseFailed, v1alpha1.ReasonWorkspaceMissing, missing)
			continue
		}
		if task.IsNeedsApproval() && !a.approved(task.Name) {
			ts.WaitingApproval = true
			continue
		}
		if unstored {
			continue // scheduled once its ancestors' archives are in the object store
		}
		ts.WaitingApproval = false
		scheduled[i] = true
	}
	for i, name := range a.g.names {
		if scheduled[i] {
			a.schedule = append(a.schedule, name)
		}
	}
}

// end makes a task that never got an ExecutorTask final: the manager decided it.
func (a *advancer) end(ts *v1alpha1.TaskStatus, phase v1alpha1.TaskPhase, reason, msg string) {
	ts.Phase, ts.Reason, ts.Message = phase, reason, msg
	ts.WaitingApproval = false
	ts.EndTime = a.nowPtr()
}

// workspace reports, for a task that restores a workspace, whether an ancestor's archives are not
// stored yet (its fetch is pending), and describes the first archive that never will be ("" if
// none). A task that restores nothing needs neither; an ancestor without an ExecutorTask (skipped,
// cancelled) saved nothing.
func (a *advancer) workspace(i int) (unstored bool, missing string) {
	if !slices.ContainsFunc(a.g.tasks[i].Steps, func(s v1alpha1.Step) bool { return s.RestoreWorkspace != nil }) {
		return false, ""
	}
	for _, p := range a.g.ancestors(i) {
		et, ok := a.ets[a.g.names[p]]
		if !ok {
			continue
		}
		if len(et.MissingArchives) > 0 {
			m := et.MissingArchives[0]
			return false, fmt.Sprintf("workspace of task %q step %d (%s) is missing: %s", a.g.names[p], m.Step, m.StepName, m.Why)
		}
		if !et.Fetched {
			unstored = true
		}
	}
	return unstored, ""
}

// parentsAllow reports whether all the task's parents are final and, if so, describes the first
// dependency that does not match ("" when all match). A parent the run does not have is never final.
func (a *advancer) parentsAllow(task *v1alpha1.Task) (ready bool, unmatched string) {
	phases := make([]v1alpha1.TaskPhase, len(task.Depends))
	for j, d := range task.Depends {
		i, ok := a.g.index[d.Task]
		if !ok || !a.status.Tasks[i].Phase.IsFinal() {
			return false, ""
		}
		phases[j] = a.status.Tasks[i].Phase
	}
	for j, d := range task.Depends {
		conds := d.Conditions
		if len(conds) == 0 {
			conds = []v1alpha1.DependCondition{v1alpha1.DependOnSuccess}
		}
		if !matches(phases[j], conds) {
			wanted := make([]string, len(conds))
			for k, c := range conds {
				wanted[k] = string(c)
			}
			return true, fmt.Sprintf("parent %q is %s, wanted %s", d.Task, phases[j], strings.Join(wanted, " or "))
		}
	}
	return true, ""
}

// matches reports whether a parent's final phase satisfies any of the conditions. Cancelled and Stopped
// parents satisfy none.
func matches(phase v1alpha1.TaskPhase, conds []v1alpha1.DependCondition) bool {
	for _, c := range conds {
		switch {
		case c == v1alpha1.DependOnSuccess && phase == v1alpha1.TaskPhaseSuccess,
			c == v1alpha1.DependOnFailure && phase == v1alpha1.TaskPhaseFailed,
			c == v1alpha1.DependOnSkipped && phase == v1alpha1.TaskPhaseSkipped:
			return true
		}
	}
	return false
}

func (a *advancer) approved(name string) bool {
	for _, t := range a.spec.ApprovedTasks {
		if t == name {
			return true
		}
	}
	return false
}

// setResult sets the result as soon as it is known; a failure is known before the other tasks end.
func (a *advancer) setResult() {
	if a.status.Result != "" && a.status.Result != v1alpha1.RunResultUnknown {
		return
	}
	if a.stop {
		a.status.Result = v1alpha1.RunResultStopped
		return
	}
	for i, ts := range a.status.Tasks {
		if ts.Phase == v1alpha1.TaskPhaseFailed && !a.g.tasks[i].IsIgnoreFailure() {
			a.status.Result = v1alpha1.RunResultFailed
			return
		}
	}
}

// finish ends the run once every task is final and no executor may still be running one of them.
func (a *advancer) finish() {
	for _, ts := range a.status.Tasks {
		if !ts.Phase.IsFinal() {
			return
		}
	}
	if a.status.Result == "" || a.status.Result == v1alpha1.RunResultUnknown {
		a.status.Result = v1alpha1.RunResultSuccess
	}
	for _, et := range a.ets {
		if et.Status.IsActive() && !et.ExecutorRemoved {
			return
		}
	}
	a.status.Phase = v1alpha1.RunPhaseFinished
	a.status.EndTime = a.nowPtr()
}

// progress is "done/total" over the spec's tasks, whatever the order or completeness of status.Tasks.
func (a *advancer) progress() string {
	phases := make(map[string]v1alpha1.TaskPhase, len(a.status.Tasks))
	for _, ts := range a.status.Tasks {
		if _, ok := phases[ts.Name]; !ok {
			phases[ts.Name] = ts.Phase
		}
	}
	done := 0
	for _, name := range a.g.names {
		if phases[name].IsFinal() {
			done++
		}
	}
	return fmt.Sprintf("%d/%d", done, len(a.g.names))
}

// Ancestors returns the names of the task's ancestors (parents, their parents, ...) in a deterministic
// parents-before-children order (topological, ties by spec order), used to restore workspaces. It
// returns nil for an unknown task or a task without parents.
func Ancestors(spec *v1alpha1.RunSpec, task string) []string {
	if spec == nil {
		return nil
	}
	g := newGraph(spec)
	start, ok := g.index[task]
	if !ok {
		return nil
	}
	var out []string
	for _, i := range g.ancestors(start) {
		out = append(out, g.names[i])
	}
	return out
}

// ancestors returns the indexes of the task's ancestors in topological order.
func (g *graph) ancestors(start int) []int {
	seen := make([]bool, len(g.names))
	stack := append([]int(nil), g.parents[start]...)
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[i] {
			continue
		}
		seen[i] = true
		stack = append(stack, g.parents[i]...)
	}
	var out []int
	for _, i := range g.topo {
		// In a cycle the task is its own ancestor; it is never one of the workspaces it restores.
		if seen[i] && i != start {
			out = append(out, i)
		}
	}
	return out
}

// graph is the spec's tasks by index. Duplicate names resolve to their first occurrence; edges to
// unknown tasks, self edges and duplicate edges are left out, so the graph is well formed whatever the
// spec: Validate reports those problems, the engine only has to not trip on them.
type graph struct {
	names   []string
	index   map[string]int
	tasks   []*v1alpha1.Task
	parents [][]int
	// topo is every index in topological order, ties by spec order; tasks on a cycle (and the tasks
	// below them) come last, in spec order.
	topo []int
}

func newGraph(spec *v1alpha1.RunSpec) *graph {
	g := &graph{index: make(map[string]int, len(spec.Tasks))}
	for i := range spec.Tasks {
		t := &spec.Tasks[i]
		if _, ok := g.index[t.Name]; ok {
			continue
		}
		g.index[t.Name] = len(g.names)
		g.names = append(g.names, t.Name)
		g.tasks = append(g.tasks, t)
	}
	g.parents = make([][]int, len(g.names))
	for i, t := range g.tasks {
		seen := make(map[int]bool, len(t.Depends))
		for _, d := range t.Depends {
			p, ok := g.index[d.Task]
			if !ok || p == i || seen[p] {
				continue
			}
			seen[p] = true
			g.parents[i] = append(g.parents[i], p)
		}
	}
	g.topo = g.topoOrder()
	return g
}

// topoOrder is Kahn's algorithm, always taking the ready task that comes first in the spec.
func (g *graph) topoOrder() []int {
	n := len(g.names)
	pending := make([]int, n)
	children := make([][]int, n)
	for i, ps := range g.parents {
		pending[i] = len(ps)
		for _, p := range ps {
			children[p] = append(children[p], i)
		}
	}
	var ready []int
	for i := range n {
		if pending[i] == 0 {
			ready = append(ready, i)
		}
	}
	order := make([]int, 0, n)
	done := make([]bool, n)
	for len(ready) > 0 {
		i := ready[0]
		ready = ready[1:]
		order = append(order, i)
		done[i] = true
		for _, c := range children[i] {
			pending[c]--
			if pending[c] == 0 {
				at := sort.SearchInts(ready, c)
				ready = append(ready, 0)
				copy(ready[at+1:], ready[at:])
				ready[at] = c
			}
		}
	}
	for i := range n {
		if !done[i] {
			order = append(order, i)
		}
	}
	return order
}
