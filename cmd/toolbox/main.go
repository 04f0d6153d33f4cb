// Command toolbox runs a task's steps inside the task's main container; the executor bind-mounts
// it there, so it is built static (CGO_ENABLED=0) and needs nothing from the image but the shells
// the steps name. See package runservice.dev/runservice/executor/toolbox for the protocol.
//
//	toolbox run [--dir DIR]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"runservice.dev/runservice/executor/toolbox"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 || args[0] != "run" {
		fmt.Fprintln(os.Stderr, "usage: toolbox run [--dir DIR]")
		return toolbox.ExitSetup
	}
	fs := flag.NewFlagSet("toolbox run", flag.ContinueOnError)
	dir := fs.String("dir", toolbox.DefaultDir, "Shared directory with the executor.")
	if err := fs.Parse(args[1:]); err != nil {
		return toolbox.ExitSetup
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "toolbox run: unexpected arguments %q\n", fs.Args())
		return toolbox.ExitSetup
	}

	// As PID 1 of the container the toolbox gets no default signal handling: without this,
	// SIGTERM from the runtime would be ignored until it gives up and sends SIGKILL.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		cancel(fmt.Errorf("received %v", s))
	}()

	return toolbox.Run(ctx, *dir)
}
