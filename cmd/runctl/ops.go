package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"runservice.dev/runservice/internal/runops"
)

func newApprove(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "approve RUN TASK...",
		Short: "Approve tasks that wait for approval (needsApproval)",
		Long: `Adds the tasks to the run's spec.approvedTasks, so that they run once their dependencies allow.
A task that does not exist, needs no approval or is already approved is an error, and nothing is
approved then. The same as:
  kubectl patch run RUN --type=json -p '[{"op":"add","path":"/spec/approvedTasks/-","value":"TASK"}]'`,
		Example: `  runctl approve release deploy
  runctl approve release deploy-eu deploy-us`,
		Args:              cobra.MinimumNArgs(2),
		ValidArgsFunction: o.completeRunTasks(approvableTasks),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.init(); err != nil {
				return err
			}
			if _, err := runops.Approve(cmd.Context(), o.rs, o.ns, args[0], args[1:]...); err != nil {
				return hint(err)
			}
			fmt.Fprintf(o.out, "run %s: approved %s\n", args[0], strings.Join(args[1:], ", "))
			return nil
		},
	}
}

func newStop(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "stop RUN",
		Short: "Stop a run: running tasks are stopped, the others cancelled",
		Long: `Sets the run's spec.stop: its running tasks are stopped, those not started are cancelled, and its
result is Stopped. It cannot be undone. Stopping a run that has ended is an error. The same as:
  kubectl patch run RUN --type=merge -p '{"spec":{"stop":true}}'`,
		Example: `  runctl stop release
  runctl stop release && runctl wait release   # until it has stopped`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeRuns,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.init(); err != nil {
				return err
			}
			if _, err := runops.Stop(cmd.Context(), o.rs, o.ns, args[0]); err != nil {
				return hint(err)
			}
			fmt.Fprintf(o.out, "run %s: stopping\n", args[0])
			return nil
		},
	}
}

func newRestart(o *options) *cobra.Command {
	var ro runops.RestartOptions
	cmd := &cobra.Command{
		Use:   "restart RUN",
		Short: "Create a run that restarts an ended run, and print its name",
		Long: `Creates a new run (named RUN-xxxxx) with the graph, environment, change groups and labels of RUN,
which must have ended (live or archived), and prints the new run's name. From scratch the whole
graph runs again; with --failed-only the tasks that succeeded are kept (not executed again; their
logs and saved workspaces serve the rest) and the others run again. The new run points back to
RUN (spec.restartFrom, status.restartedFrom, label runservice.dev/restarted-from). In change groups
with a limit, pass the groups' update token with --update-token as for any create: a stale token
is refused (409 Conflict). The same as creating a run with spec.restartFrom: {run: RUN}.`,
		Example: `  runctl restart release --failed-only
  new=$(runctl restart release) && runctl wait "$new"`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeRuns,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.init(); err != nil {
				return err
			}
			run, err := runops.Restart(cmd.Context(), o.rs, o.ns, args[0], ro)
			if err != nil {
				return hint(err)
			}
			fmt.Fprintln(o.out, run.Name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&ro.FailedTasksOnly, "failed-only", false, "Keep the tasks that succeeded; run again the others (failed, stopped, skipped, cancelled) and what depends on them.")
	cmd.Flags().StringVar(&ro.UpdateToken, "update-token", "", "The change groups' update token (runservice.dev/changegroups-update-token): the create then succeeds only if no group changed since it was read.")
	return cmd
}
