package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/runops"
)

// wait's exit codes, for scripts.
const (
	exitSuccess  = 0 // the run finished with result Success
	exitFailed   = 1 // the run finished with result Failed
	exitStopped  = 2 // the run ended without a result of its own: Stopped, Cancelled or SetupError
	exitTimeout  = 3 // --timeout passed first
	exitWaitFail = 4 // runctl could not wait: the run is not there, the apiserver refused, bad flags
)

func newWait(o *options) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait RUN",
		Short: "Wait for a run to end; the exit code tells its result",
		Long: `Waits until the run has ended (phase Finished, Cancelled or SetupError; archived runs have) and
prints its phase and result. The exit code is for scripts:
  0  the run finished with result Success
  1  the run finished with result Failed
  2  the run ended without a result of its own: result Stopped, phase Cancelled or SetupError
  3  --timeout passed before the run ended
  4  runctl could not wait (the run is neither live nor archived, an API error, a bad flag)
A run's result can be Failed while tasks still run: wait waits for its end all the same.`,
		Example: `  runctl wait release
  runctl wait release --timeout 10m; echo "exit $?"`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeRuns,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.init(); err != nil {
				return exitError{exitWaitFail, err}
			}
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			run, err := o.waitEnd(ctx, args[0])
			if errors.Is(err, context.DeadlineExceeded) && timeout > 0 {
				return exitError{exitTimeout, fmt.Errorf("run %s has not ended after %s", args[0], timeout)}
			}
			if err != nil {
				return exitError{exitWaitFail, hint(err)}
			}
			fmt.Fprintf(o.out, "run %s: %s, %s\n", run.Name, run.Status.Phase, run.Status.Result)
			return exitError{code: exitCode(run)}
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "How long to wait at most (e.g. 30s, 10m); 0 waits as long as it takes.")
	return cmd
}

// exitCode is wait's exit code for an ended run.
func exitCode(run *rsv1.Run) int {
	switch {
	case run.Status.Phase == rsv1.RunPhaseFinished && run.Status.Result == rsv1.RunResultSuccess:
		return exitSuccess
	case run.Status.Phase == rsv1.RunPhaseFinished && run.Status.Result == rsv1.RunResultFailed:
		return exitFailed
	}
	return exitStopped
}

// waitEnd returns the run once it has ended: read, then watched from that read on (read again
// when the apiserver ends the watch). A run deleted meanwhile is looked for in the archive.
func (o *options) waitEnd(ctx context.Context, name string) (*rsv1.Run, error) {
	runs := o.rs.RunserviceV1alpha1().Runs(o.ns)
	for {
		run, _, err := runops.Get(ctx, o.rs, o.ns, name)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		if run.Status.Phase.IsFinal() {
			return run, nil
		}
		w, err := runs.Watch(ctx, metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("metadata.name", name).String(),
			ResourceVersion: run.ResourceVersion,
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, err
		}
		if run := untilEnded(ctx, w); run != nil {
			return run, nil
		}
		select { // the watch ended early: read again, without hammering an apiserver that ends it at once
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// untilEnded returns the run of the watch's first event that shows it ended, or nil when the
// watch ends first (closed, an error, the run deleted: the caller reads it again).
func untilEnded(ctx context.Context, w watch.Interface) *rsv1.Run {
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil
			}
			run, isRun := ev.Object.(*rsv1.Run)
			switch {
			case !isRun || ev.Type == watch.Deleted:
				return nil
			case run.Status.Phase.IsFinal():
				return run
			}
		}
	}
}
