package main

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// Dynamic completion: cobra calls these through the hidden __complete command, with the flags
// already parsed, so -n and --kubeconfig choose where the names come from. Any error completes
// nothing rather than printing it into the user's shell.

const noFiles = cobra.ShellCompDirectiveNoFileComp

// completionTimeout bounds each request a completion makes: the user's shell waits for it, and an
// apiserver that does not answer (a dropped connection, a VPN down) must cost a pause, not the shell.
const completionTimeout = 5 * time.Second

func completionContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(cmd.Context(), completionTimeout)
}

// completeRuns completes the first argument with the names of the namespace's runs.
func (o *options) completeRuns(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 && cmd.Name() != "get" {
		return nil, noFiles
	}
	if err := o.init(); err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	ctx, cancel := completionContext(cmd)
	defer cancel()
	list, err := o.rs.RunserviceV1alpha1().Runs(o.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	return prefixed(list.Items, func(r rsv1.Run) string { return r.Name }, prefix, args), noFiles
}

// taskFilter says which of a run's tasks a command completes.
type taskFilter func(run *rsv1.Run, t *rsv1.Task) bool

func allTasks(*rsv1.Run, *rsv1.Task) bool { return true }

// approvableTasks are those that need approval and are not approved yet.
func approvableTasks(run *rsv1.Run, t *rsv1.Task) bool {
	return t.IsNeedsApproval() && !slices.Contains(run.Spec.ApprovedTasks, t.Name)
}

// completeRunTasks completes RUN, then the run's task names that keep says (each once).
func (o *options) completeRunTasks(keep taskFilter) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
		if len(args) == 0 {
			return o.completeRuns(cmd, args, prefix)
		}
		run, ok := o.completionRun(cmd, args[0])
		if !ok {
			return nil, cobra.ShellCompDirectiveError
		}
		var names []string
		for i := range run.Spec.Tasks {
			t := &run.Spec.Tasks[i]
			if keep(run, t) && strings.HasPrefix(t.Name, prefix) && !slices.Contains(args[1:], t.Name) {
				names = append(names, t.Name)
			}
		}
		return names, noFiles
	}
}

// completeRunTaskStep completes logs' RUN, TASK and STEP (the step names the run's status has).
func (o *options) completeRunTaskStep(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
	switch len(args) {
	case 0, 1:
		return o.completeRunTasks(allTasks)(cmd, args, prefix)
	case 2:
		run, ok := o.completionRun(cmd, args[0])
		if !ok {
			return nil, cobra.ShellCompDirectiveError
		}
		return prefixed(taskStatus(run, args[1]).Steps, func(s rsv1.StepStatus) string { return s.Name }, prefix, nil), noFiles
	}
	return nil, noFiles
}

func (o *options) completionRun(cmd *cobra.Command, name string) (*rsv1.Run, bool) {
	if err := o.init(); err != nil {
		return nil, false
	}
	ctx, cancel := completionContext(cmd)
	defer cancel()
	run, err := o.rs.RunserviceV1alpha1().Runs(o.ns).Get(ctx, name, metav1.GetOptions{})
	return run, err == nil
}

func (o *options) completeNamespaces(cmd *cobra.Command, _ []string, prefix string) ([]string, cobra.ShellCompDirective) {
	if err := o.init(); err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	ctx, cancel := completionContext(cmd)
	defer cancel()
	list, err := o.kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	return prefixed(list.Items, func(ns corev1.Namespace) string { return ns.Name }, prefix, nil), noFiles
}

func (o *options) completeChangeGroups(cmd *cobra.Command, _ []string, prefix string) ([]string, cobra.ShellCompDirective) {
	if err := o.init(); err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	ctx, cancel := completionContext(cmd)
	defer cancel()
	list, err := o.rs.RunserviceV1alpha1().ChangeGroups(o.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	return prefixed(list.Items, func(g rsv1.ChangeGroup) string { return g.Name }, prefix, nil), noFiles
}

// prefixed returns the names of items that start with prefix, but not those in skip (arguments
// already given).
func prefixed[T any](items []T, name func(T) string, prefix string, skip []string) []string {
	var out []string
	for _, it := range items {
		if n := name(it); strings.HasPrefix(n, prefix) && !slices.Contains(skip, n) {
			out = append(out, n)
		}
	}
	return out
}

func fixedCompletion[T ~string](values []T) cobra.CompletionFunc {
	s := make([]string, len(values))
	for i, v := range values {
		s[i] = string(v)
	}
	return cobra.FixedCompletions(s, noFiles)
}
