package main

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/runops"
)

func newDescribe(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "describe RUN",
		Short: "Show a run and its graph as an indented tree",
		Long: `Shows a run (live or archived): its phase, result, change groups and times, then its graph as an
indented tree. Each task is under its first dependency ("after" names the others, and conditions
other than OnSuccess); roots and children are in the order of the run's spec. Each line gives the
task's phase, executor and duration, and why it is where it is: the failed step and its exit code,
waiting for approval, or the run it was kept from (a restart from failed tasks).`,
		Example: `  runctl describe release
  kubectl runs describe release -n ci`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeRuns,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.init(); err != nil {
				return err
			}
			run, archived, err := runops.Get(cmd.Context(), o.rs, o.ns, args[0])
			if err != nil {
				return hint(err)
			}
			return describe(o.out, run, archived, time.Now())
		},
	}
}

// describe writes the run and its task tree; now is when durations of what still runs end.
func describe(out io.Writer, run *rsv1.Run, archived bool, now time.Time) error {
	var buf bytes.Buffer
	w := tabwriter.NewWriter(&buf, 0, 8, 2, ' ', 0)
	st := run.Status
	phase := string(st.Phase)
	if phase == "" {
		phase = string(rsv1.RunPhaseQueued)
	}
	if archived {
		phase += " (archived)"
	} else if run.IsStopped() && !st.Phase.IsFinal() {
		phase += " (stopping)"
	} else if run.IsSuspended() {
		phase += " (suspended)"
	}
	field := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%s:\t%s\n", k, v)
		}
	}
	field("Name", run.Name)
	field("Namespace", run.Namespace)
	field("Phase", phase)
	field("Result", string(st.Result))
	field("Tasks", st.Progress)
	field("ChangeGroups", strings.Join(run.Spec.ChangeGroups, ", "))
	if rf := run.Spec.RestartFrom; rf != nil {
		how := "from scratch"
		if rf.FailedTasksOnly {
			how = "from failed tasks"
		}
		field("Restarts", rf.Run+" ("+how+")")
	}
	field("Created", timestamp(&run.CreationTimestamp))
	field("Started", timestamp(st.StartTime))
	field("Ended", timestamp(st.EndTime))
	field("Duration", span(st.StartTime, st.EndTime, now))
	for _, c := range st.Conditions { // those that hold a run back say why
		if c.Status == metav1.ConditionFalse {
			field(c.Type, strings.TrimSpace(c.Reason+": "+c.Message))
		}
	}
	fmt.Fprintln(w, "Graph:")
	fmt.Fprintln(w, "  TASK\tPHASE\tEXECUTOR\tDURATION\tDETAIL")
	for _, l := range tree(run) {
		ts := taskStatus(run, l.task.Name)
		fmt.Fprintf(w, "  %s%s\t%s\t%s\t%s\t%s\n", l.prefix, l.task.Name, taskPhase(ts), orNone(ts.Executor), orNone(span(ts.StartTime, ts.EndTime, now)), why(run, l.task, ts))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for line := range strings.Lines(buf.String()) { // no padding after a line's last cell
		if _, err := io.WriteString(out, strings.TrimRight(line, " \n")+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// line is one task of the tree, with the prefix drawing its branch.
type line struct {
	prefix string
	task   *rsv1.Task
}

// tree lays the graph out: each task under its first dependency, in the spec's order.
func tree(run *rsv1.Run) []line {
	children := map[string][]*rsv1.Task{}
	var roots []*rsv1.Task
	for i := range run.Spec.Tasks {
		t := &run.Spec.Tasks[i]
		if len(t.Depends) == 0 || !hasTask(run, t.Depends[0].Task) {
			roots = append(roots, t)
			continue
		}
		children[t.Depends[0].Task] = append(children[t.Depends[0].Task], t)
	}
	var out []line
	var walk func(ts []*rsv1.Task, indent string, top bool)
	walk = func(ts []*rsv1.Task, indent string, top bool) {
		for i, t := range ts {
			last := i == len(ts)-1
			branch, next := "├─ ", "│  "
			if last {
				branch, next = "└─ ", "   "
			}
			if top {
				branch, next = "", ""
			}
			out = append(out, line{prefix: indent + branch, task: t})
			walk(children[t.Name], indent+next, false)
		}
	}
	walk(roots, "", true)
	// Tasks whose first dependencies form a cycle hang from no root: admission refuses such a
	// graph, but a tree must not hide a task whatever it is given.
	for i := range run.Spec.Tasks {
		t := &run.Spec.Tasks[i]
		if !slices.ContainsFunc(out, func(l line) bool { return l.task.Name == t.Name }) {
			out = append(out, line{task: t})
		}
	}
	return out
}

func hasTask(run *rsv1.Run, name string) bool {
	return slices.ContainsFunc(run.Spec.Tasks, func(t rsv1.Task) bool { return t.Name == name })
}

func taskStatus(run *rsv1.Run, name string) rsv1.TaskStatus {
	for _, ts := range run.Status.Tasks {
		if ts.Name == name {
			return ts
		}
	}
	return rsv1.TaskStatus{Name: name, Phase: rsv1.TaskPhaseNotStarted}
}

func taskPhase(ts rsv1.TaskStatus) string {
	if ts.WaitingApproval {
		return "WaitingApproval"
	}
	return string(ts.Phase)
}

// why says what a task's line needs beyond its phase: its other dependencies, the step that
// failed, approval, the run it was kept from, or the manager's message.
func why(run *rsv1.Run, t *rsv1.Task, ts rsv1.TaskStatus) string {
	var parts []string
	var after []string
	for i, d := range t.Depends {
		conds := ""
		if len(d.Conditions) > 0 && !slices.Equal(d.Conditions, []rsv1.DependCondition{rsv1.DependOnSuccess}) {
			conds = " " + joinAny(d.Conditions)
		}
		if i > 0 || conds != "" {
			after = append(after, d.Task+conds)
		}
	}
	if len(after) > 0 {
		parts = append(parts, "after "+strings.Join(after, "; "))
	}
	switch {
	case ts.WaitingApproval:
		parts = append(parts, fmt.Sprintf("needs approval: runctl approve %s %s", run.Name, t.Name))
	case t.IsNeedsApproval() && slices.Contains(run.Spec.ApprovedTasks, t.Name):
		parts = append(parts, "approved")
	}
	if ts.FromRun != "" {
		parts = append(parts, "kept from run "+ts.FromRun)
	}
	stepFailed := false
	for i, s := range ts.Steps {
		if s.Phase == rsv1.StepPhaseFailed || (s.ExitCode != nil && *s.ExitCode != 0) {
			code := "no exit code"
			if s.ExitCode != nil {
				code = fmt.Sprintf("exit code %d", *s.ExitCode)
			}
			parts = append(parts, fmt.Sprintf("step %d %q failed, %s", i, s.Name, code))
			stepFailed = true
			break
		}
	}
	if !stepFailed && ts.Message != "" && ts.Phase != rsv1.TaskPhaseSuccess {
		parts = append(parts, ts.Message)
	}
	return strings.Join(parts, "; ")
}

func timestamp(t *metav1.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// span is how long from start to end, or to now when it has not ended.
func span(start, end *metav1.Time, now time.Time) string {
	if start == nil {
		return ""
	}
	until := now
	if end != nil {
		until = end.Time
	}
	d := until.Sub(start.Time)
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return duration.HumanDuration(d)
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
