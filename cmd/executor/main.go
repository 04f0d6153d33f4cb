// Command executor runs tasks scheduled on it by the runservice manager, with the Docker driver:
// containers on the local Docker daemon. It registers a permanent Executor named after --name.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor"
	"runservice.dev/runservice/executor/driver/docker"
	"runservice.dev/runservice/internal/objectstore"
)

func main() {
	host, _ := os.Hostname()
	self, _ := os.Executable()
	opts := executor.Options{Driver: rsv1.DriverDocker, Permanent: true}
	var labels string
	flag.StringVar(&opts.Name, "name", host, "Name of the Executor; keep it across restarts to keep the executor's identity.")
	flag.StringVar(&opts.Namespace, "namespace", envOr("POD_NAMESPACE", "default"), "Namespace the executor takes tasks from.")
	flag.StringVar(&labels, "labels", "", "Labels of the Executor, k=v,k=v (what tasks' executorSelector matches).")
	var limit int
	flag.IntVar(&limit, "active-tasks-limit", 0, "Most tasks run at once; 0 means no limit.")
	flag.BoolVar(&opts.AllowPrivilegedContainers, "allow-privileged", false, "Run tasks that ask for privileged containers.")
	flag.StringVar(&opts.Listen, "listen", ":8090", "Address of the HTTP server for logs and archives.")
	flag.StringVar(&opts.Endpoint, "endpoint", "", "URL the manager reaches the HTTP server at (default http://127.0.0.1<listen port>).")
	flag.StringVar(&opts.DataDir, "data-dir", "", "Directory for tasks' logs and archives until fetched (default under ~/.local/share/runservice).")
	flag.StringVar(&opts.Toolbox, "toolbox", filepath.Join(filepath.Dir(self), "toolbox"), "Path of the static toolbox binary.")
	flag.StringVar(&opts.ObjectStore, "object-store", objectstore.DefaultURL(), "Object store URL (file:// or s3://) parents' workspaces are read from.")
	flag.DurationVar(&opts.LeaseDuration, "lease-duration", 15*time.Second, "Duration of the executor's Lease.")
	flag.DurationVar(&opts.RenewInterval, "renew-interval", 3*time.Second, "How often the Lease is renewed.")
	zopts := zap.Options{}
	zopts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zopts)))
	log := ctrl.Log.WithName("executor")

	opts.ActiveTasksLimit = int32(limit)
	if labels != "" {
		opts.Labels = map[string]string{}
		for _, kv := range strings.Split(labels, ",") {
			k, v, _ := strings.Cut(kv, "=")
			opts.Labels[k] = v
		}
	}
	if opts.Endpoint == "" {
		_, port, _ := strings.Cut(opts.Listen, ":")
		opts.Endpoint = "http://127.0.0.1:" + port
	}
	if opts.DataDir == "" {
		home, _ := os.UserHomeDir()
		opts.DataDir = filepath.Join(home, ".local", "share", "runservice", "executor", opts.Name)
	}
	if _, err := os.Stat(opts.Toolbox); err != nil {
		fmt.Fprintf(os.Stderr, "executor: toolbox binary %s: %v (build it with make build)\n", opts.Toolbox, err)
		os.Exit(1)
	}
	drv, err := docker.New(opts.Name)
	if err != nil {
		log.Error(err, "connecting to docker")
		os.Exit(1)
	}
	ctx := ctrl.SetupSignalHandler()
	if err := executor.Run(ctx, ctrl.GetConfigOrDie(), drv, opts); err != nil {
		log.Error(err, "executor failed")
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
