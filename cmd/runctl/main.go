// Command runctl is the runservice command line: list, describe, approve, stop, restart and wait for
// runs, and read their logs. Installed as kubectl-runs, it is the kubectl plugin `kubectl runs ...`.
// It talks to the apiserver with the user's kubeconfig (the standard --kubeconfig, --context,
// -n/--namespace flags), so Kubernetes RBAC decides what it may do.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}

// run runs runctl with args and returns its exit code: 0, 1 on an error, or what the command chose
// (wait's codes).
func run(ctx context.Context, args []string, out, errOut io.Writer) int {
	root := newRoot(out, errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	var ex exitError
	switch {
	case errors.As(err, &ex):
		if ex.err != nil {
			fmt.Fprintln(errOut, "runctl:", ex.err)
		}
		return ex.code
	case err != nil:
		fmt.Fprintln(errOut, "runctl:", err)
		return 1
	}
	return 0
}

// exitError ends runctl with code, printing err when there is one.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit code %d", e.code)
	}
	return e.err.Error()
}

// options are what every command shares: the kubeconfig flags and the clients made from them.
type options struct {
	config   *genericclioptions.ConfigFlags
	out, err io.Writer

	cfg  *rest.Config
	ns   string
	rs   versioned.Interface
	kube kubernetes.Interface
}

// init makes the clients, once.
func (o *options) init() error {
	if o.rs != nil {
		return nil
	}
	cfg, err := o.config.ToRESTConfig()
	if err != nil {
		return err
	}
	if o.ns, _, err = o.config.ToRawKubeConfigLoader().Namespace(); err != nil {
		return err
	}
	cfg.UserAgent = rest.DefaultKubernetesUserAgent() + " runctl"
	if o.rs, err = versioned.NewForConfig(cfg); err != nil {
		return err
	}
	if o.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	o.cfg = cfg
	return nil
}

// hint adds what to do to an error about a run not found.
func hint(err error) error {
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("%w (runctl get lists the namespace's runs; -n chooses another)", err)
	}
	return err
}

func newRoot(out, errOut io.Writer) *cobra.Command {
	name := filepath.Base(os.Args[0])
	if name == "kubectl-runs" {
		name = "kubectl runs"
	} else {
		name = "runctl"
	}
	o := &options{config: genericclioptions.NewConfigFlags(true), out: out, err: errOut}
	root := &cobra.Command{
		Use:   "runctl",
		Short: "Operate runservice runs: list, describe, approve, stop, restart, wait, logs",
		Long: `runctl operates runservice runs with your kubeconfig's credentials (Kubernetes RBAC decides what
it may do). Installed as kubectl-runs it is also the kubectl plugin "kubectl runs".`,
		Example: strings.ReplaceAll(`  runctl get --phase Running
  runctl describe release
  runctl approve release deploy
  runctl wait release --timeout 10m && echo released
  runctl restart release --failed-only
  source <(runctl completion bash)`, "runctl", name),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	if name != "runctl" {
		root.Use = "kubectl-runs"
		root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: name}
	}
	root.SetOut(out)
	root.SetErr(errOut)
	o.config.AddFlags(root.PersistentFlags())
	_ = root.RegisterFlagCompletionFunc("namespace", o.completeNamespaces)
	root.AddCommand(newGet(o), newDescribe(o), newApprove(o), newStop(o), newRestart(o), newWait(o), newLogs(o), newUI(o))
	return root
}
