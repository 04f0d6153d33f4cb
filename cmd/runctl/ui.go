package main

import (
	"github.com/spf13/cobra"

	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/ui"
)

func newUI(o *options) *cobra.Command {
	u := ui.Options{Addr: "127.0.0.1:0", ObjectStore: objectstore.DefaultURL()}
	cmd := &cobra.Command{
		Use:   "ui",
		Short: "Serve the web view of runs on this machine's loopback",
		Long: `Serves a web page on 127.0.0.1 (the runs list, each run's graph, its tasks' steps and live logs,
approve, stop and restart) and prints its URL, which carries a secret each request must present.
Every call to Kubernetes is made with your kubeconfig's credentials, so RBAC decides what you see
and do. It runs until interrupted.`,
		Example: `  runctl ui                       # opens on the kubeconfig's namespace, a free port
  runctl ui -n ci --addr 127.0.0.1:8080`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.init(); err != nil {
				return err
			}
			u.Config, u.Namespace, u.Out = o.cfg, o.ns, o.out
			return ui.Run(cmd.Context(), u)
		},
	}
	f := cmd.Flags()
	f.StringVar(&u.Addr, "addr", u.Addr, "Loopback address and port to serve on (port 0: a free one).")
	f.StringVar(&u.ObjectStore, "object-store", u.ObjectStore, "Object store URL (as the manager's; default $"+objectstore.EnvURL+" or the local directory), for the logs.")
	f.BoolVar(&u.InsecureHTTP, "insecure-http", false, "Read logs from executors' http:// endpoints too (the executors' token then crosses the network in clear).")
	return cmd
}
