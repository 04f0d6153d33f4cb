package main

import (
	"github.com/spf13/cobra"

	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/runlogs"
)

func newLogs(o *options) *cobra.Command {
	var follow bool
	r := &runlogs.Reader{StoreURL: objectstore.DefaultURL()}
	cmd := &cobra.Command{
		Use:   "logs RUN TASK [STEP]",
		Short: "Print the log of a task's steps",
		Long: `Prints the log of a task's steps (all of them, or STEP given by name or index), live from the
executor while the task runs (-f follows it) and from the object store once the manager fetched it.
Archived runs' logs are read as well.`,
		Example: `  runctl logs diamond build            # every step of build
  runctl logs diamond build compile -f # follow one step while it runs
  runctl logs diamond build 0 --object-store 's3://logs?endpoint=...'`,
		Args:              cobra.RangeArgs(2, 3),
		ValidArgsFunction: o.completeRunTaskStep,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.init(); err != nil {
				return err
			}
			r.Runs, r.Kube, r.Namespace = o.rs, o.kube, o.ns
			step := ""
			if len(args) == 3 {
				step = args[2]
			}
			return hint(r.Print(cmd.Context(), o.out, args[0], args[1], step, follow))
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "Follow the log while the step runs.")
	f.StringVar(&r.StoreURL, "object-store", r.StoreURL, "Object store URL (as the manager's; default $"+objectstore.EnvURL+" or the local directory).")
	f.BoolVar(&r.InsecureHTTP, "insecure-http", false, "Read from executors' http:// endpoints too (the executors' token then crosses the network in clear).")
	return cmd
}
