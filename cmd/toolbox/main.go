// Command toolbox runs a task's steps inside the task's main container; the executor bind-mounts
// it there, so it is built static (CGO_ENABLED=0) and needs nothing from the image but the shells
// the steps name. See package runservice.dev/runservice/executor/toolbox for the protocol.
//
//	toolbox run [--dir DIR] [--stream] [--task FILE] [--termination-log FILE]
//	toolbox install --to DIR [--workspace-url URL]
//
// install is the init container of a task's pod: it puts the toolbox and the parents' workspace
// archives into the pod's shared volume, for `toolbox run --stream` in the main container.
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

const usage = `usage:
  toolbox run [--dir DIR] [--stream] [--task FILE] [--termination-log FILE]
  toolbox install --to DIR [--workspace-url URL]`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, usage)
		return toolbox.ExitSetup
	}
	switch args[0] {
	case "run":
		return runSteps(args[1:])
	case "install":
		return install(args[1:])
	default:
		fmt.Fprintln(os.Stderr, usage)
		return toolbox.ExitSetup
	}
}

func runSteps(args []string) int {
	fs := flag.NewFlagSet("toolbox run", flag.ContinueOnError)
	dir := fs.String("dir", toolbox.DefaultDir, "Shared directory with the executor.")
	stream := fs.Bool("stream", false, "Start at once and report on stdout as well, as frames (in a pod).")
	task := fs.String("task", "", "Read the task from this file instead of task.json in --dir.")
	termLog := fs.String("termination-log", "", "Write the steps' results here on exit (default "+toolbox.DefaultTerminationLog+" with --stream).")
	if err := fs.Parse(args); err != nil {
		return toolbox.ExitSetup
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "toolbox run: unexpected arguments %q\n", fs.Args())
		return toolbox.ExitSetup
	}
	termLogSet := false
	fs.Visit(func(f *flag.Flag) { termLogSet = termLogSet || f.Name == "termination-log" })

	var opts []toolbox.Option
	if *task != "" {
		opts = append(opts, toolbox.WithTaskFile(*task))
	}
	if *stream {
		opts = append(opts, toolbox.WithStream(os.Stdout))
		if !termLogSet {
			*termLog = toolbox.DefaultTerminationLog
		}
	}
	if *termLog != "" {
		opts = append(opts, toolbox.WithTerminationLog(*termLog))
	}
	ctx, cancel := signalContext()
	defer cancel(nil)
	return toolbox.Run(ctx, *dir, opts...)
}

func install(args []string) int {
	fs := flag.NewFlagSet("toolbox install", flag.ContinueOnError)
	to := fs.String("to", "", "Shared directory to install the toolbox into (required).")
	wsURL := fs.String("workspace-url", "", "URL of the parents' workspace archives, fetched with $RUNSERVICE_TOKEN (the task's credential); an https URL is trusted with the CA certificates (PEM) in $RUNSERVICE_CA only.")
	if err := fs.Parse(args); err != nil {
		return toolbox.ExitSetup
	}
	if fs.NArg() != 0 || *to == "" {
		fmt.Fprintln(os.Stderr, "toolbox install: --to DIR is required, and nothing else")
		return toolbox.ExitSetup
	}
	ctx, cancel := signalContext()
	defer cancel(nil)
	err := toolbox.Install(ctx, toolbox.InstallOptions{Dir: *to, WorkspaceURL: *wsURL, Token: os.Getenv("RUNSERVICE_TOKEN"), CA: []byte(os.Getenv("RUNSERVICE_CA"))})
	if err != nil {
		fmt.Fprintf(os.Stderr, "toolbox install: %v\n", err)
		return 1
	}
	return 0
}

// signalContext is cancelled on SIGTERM and SIGINT. As PID 1 of the container the toolbox gets no
// default signal handling: without this, SIGTERM from the runtime would be ignored until it gives
// up and sends SIGKILL.
func signalContext() (context.Context, context.CancelCauseFunc) {
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		cancel(fmt.Errorf("received %v", s))
	}()
	return ctx, cancel
}
