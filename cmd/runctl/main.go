// Command runctl is the runservice command line: `runctl logs RUN TASK [STEP] [-f]` prints a step's
// log, live from the executor while the task runs and from the object store once fetched. Installed
// as kubectl-runs, it is the kubectl plugin `kubectl runs logs ...`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/runlogs"
	"runservice.dev/runservice/internal/ui"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

const usage = `usage: %[1]s logs RUN TASK [STEP] [-f] [-n NAMESPACE] [--object-store URL]
       %[1]s ui [-n NAMESPACE] [--addr 127.0.0.1:PORT]

Prints the log of a task's steps (all of them, or STEP given by name or index), live from the executor
while the task runs (-f follows it) and from the object store once the manager fetched it.
`

func main() {
	name := filepath.Base(os.Args[0])
	if len(os.Args) >= 2 && os.Args[1] == "ui" {
		os.Exit(serveUI(os.Args[2:]))
	}
	if len(os.Args) < 2 || os.Args[1] != "logs" {
		fmt.Fprintf(os.Stderr, usage, name)
		os.Exit(2)
	}
	fs := flag.NewFlagSet("logs", flag.ExitOnError)
	follow := fs.Bool("f", false, "Follow the log while the step runs.")
	namespace := fs.String("n", "", "Namespace of the run (default: the kubeconfig's).")
	store := fs.String("object-store", objectstore.DefaultURL(), "Object store URL (as the manager's; default $"+objectstore.EnvURL+" or the local directory).")
	insecure := fs.Bool("insecure-http", false, "Read from executors' http:// endpoints too (the executors' token then crosses the network in clear).")
	kubeconfig := fs.String("kubeconfig", "", "Path of the kubeconfig (default: KUBECONFIG or ~/.kube/config).")
	var args []string
	rest := os.Args[2:]
	for len(rest) > 0 { // flags may come after the positional arguments
		if err := fs.Parse(rest); err != nil {
			os.Exit(2)
		}
		if fs.NArg() == 0 {
			break
		}
		args = append(args, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(args) < 2 || len(args) > 3 {
		fmt.Fprintf(os.Stderr, usage, name)
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	defer cancel()
	r, err := reader(*kubeconfig, *namespace, *store, *insecure)
	if err == nil {
		step := ""
		if len(args) == 3 {
			step = args[2]
		}
		err = r.Print(ctx, os.Stdout, args[0], args[1], step, *follow)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "runctl:", err)
		os.Exit(1)
	}
}

// serveUI is `runctl ui`: the web view (internal/ui) with the kubeconfig's credentials.
func serveUI(argv []string) int {
	fs := flag.NewFlagSet("ui", flag.ExitOnError)
	namespace := fs.String("n", "", "Namespace the runs list opens on (default: the kubeconfig's).")
	addr := fs.String("addr", "127.0.0.1:0", "Loopback address and port to serve on (port 0: a free one).")
	store := fs.String("object-store", objectstore.DefaultURL(), "Object store URL (as the manager's), for the logs.")
	insecure := fs.Bool("insecure-http", false, "Read logs from executors' http:// endpoints too.")
	kubeconfig := fs.String("kubeconfig", "", "Path of the kubeconfig (default: KUBECONFIG or ~/.kube/config).")
	_ = fs.Parse(argv)
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = *kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{Context: clientcmdapi.Context{Namespace: *namespace}})
	cfg, err := cc.ClientConfig()
	if err == nil {
		ns, _, nerr := cc.Namespace()
		ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
		defer cancel()
		err = errors.Join(nerr, ui.Run(ctx, ui.Options{Config: cfg, Namespace: ns, Addr: *addr, Out: os.Stdout, ObjectStore: *store, InsecureHTTP: *insecure}))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "runctl ui:", err)
		return 1
	}
	return 0
}

// reader builds the log reader of the kubeconfig's (or the given) namespace.
func reader(kubeconfig, namespace, storeURL string, insecureHTTP bool) (*runlogs.Reader, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{Context: clientcmdapi.Context{Namespace: namespace}})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, err
	}
	r := &runlogs.Reader{StoreURL: storeURL, InsecureHTTP: insecureHTTP}
	if r.Namespace, _, err = cc.Namespace(); err != nil {
		return nil, err
	}
	if r.Runs, err = versioned.NewForConfig(cfg); err != nil {
		return nil, err
	}
	r.Kube, err = kubernetes.NewForConfig(cfg)
	return r, err
}
