// Command executor runs tasks scheduled on it by the runservice manager. With --driver=Docker (the
// default) tasks are containers on the local Docker daemon and the executor registers a permanent
// Executor named --name; with --driver=Kubernetes tasks are pods in --namespace and the executor is a
// dynamic member of --group, which removes what a dead member left behind.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor"
	"runservice.dev/runservice/executor/driver/docker"
	"runservice.dev/runservice/executor/driver/kubernetes"
	"runservice.dev/runservice/executor/toolbox"
	"runservice.dev/runservice/internal/objectstore"
)

func main() {
	host, _ := os.Hostname()
	self, _ := os.Executable()
	opts := executor.Options{}
	var labels, driver, archs, pullPolicy string
	var kopts kubernetes.Options
	flag.StringVar(&driver, "driver", string(rsv1.DriverDocker), "Docker (containers on the local daemon, a permanent executor) or Kubernetes (pods, a member of --group).")
	flag.StringVar(&opts.Group, "group", "default", "Kubernetes driver: the group of executors of the namespace.")
	flag.StringVar(&kopts.ToolboxImage, "toolbox-image", "runservice-toolbox:dev", "Kubernetes driver: image with the static toolbox at /toolbox (the pods' init container).")
	flag.StringVar(&kopts.NodeName, "node-name", "", "Kubernetes driver: bind pods to this node (clusters without a scheduler).")
	flag.StringVar(&kopts.ExecutorURL, "pod-endpoint", "", "Kubernetes driver: URL pods reach this executor's HTTP server at (for workspaces; default: --endpoint).")
	var nodeSelector string
	flag.StringVar(&nodeSelector, "pod-node-selector", "", "Kubernetes driver: nodeSelector of the pods, k=v,k=v.")
	flag.StringVar(&pullPolicy, "image-pull-policy", "", "Kubernetes driver: imagePullPolicy of the pods' containers (default: Kubernetes').")
	flag.StringVar(&archs, "archs", runtime.GOARCH, "Kubernetes driver: architectures of the cluster's nodes, comma separated.")
	flag.StringVar(&opts.Name, "name", host, "Name of the Executor; keep it across restarts to keep the executor's identity.")
	flag.StringVar(&opts.Namespace, "namespace", envOr("POD_NAMESPACE", "default"), "Namespace the executor takes tasks from.")
	flag.StringVar(&labels, "labels", "", "Labels of the Executor, k=v,k=v (what tasks' executorSelector matches).")
	var limit int
	flag.IntVar(&limit, "active-tasks-limit", 0, "Most tasks run at once; 0 means no limit.")
	flag.BoolVar(&opts.AllowPrivilegedContainers, "allow-privileged", false, "Run tasks that ask for privileged containers.")
	flag.StringVar(&opts.Listen, "listen", ":8090", "Address of the HTTP server for logs and archives.")
	flag.StringVar(&opts.PprofAddr, "pprof-bind-address", "", "Address serving Go's profiles (/debug/pprof/, unauthenticated: keep it on loopback); empty (the default) disables it.")
	flag.StringVar(&opts.Endpoint, "endpoint", "", "URL the manager reaches the HTTP server at (default https://127.0.0.1<listen port>); https serves TLS with a certificate of the namespace's executor CA (the Secret "+rsv1.ExecutorCASecret+").")
	flag.BoolVar(&opts.InsecureHTTP, "insecure-http", false, "Allow http:// endpoints: the executors' token, logs and archives then cross the network in clear.")
	flag.StringVar(&opts.DataDir, "data-dir", "", "Directory for tasks' logs and archives until fetched (default under ~/.local/share/runservice).")
	flag.StringVar(&opts.Toolbox, "toolbox", filepath.Join(filepath.Dir(self), "toolbox"), "Path of the static toolbox binary.")
	flag.StringVar(&opts.ObjectStore, "object-store", objectstore.DefaultURL(), "Object store URL (file:// or s3://) parents' workspaces are read from.")
	flag.DurationVar(&opts.LeaseDuration, "lease-duration", 15*time.Second, "Duration of the executor's Lease.")
	flag.DurationVar(&opts.FetchWait, "fetch-wait", 30*time.Second, "With a dynamic executor (--group): on SIGTERM, how long at least to wait for the manager to fetch the finished tasks' logs and archives before leaving the group; past it (and --drain-timeout) the executor stays registered and records a Warning event.")
	flag.DurationVar(&opts.DrainTimeout, "drain-timeout", 0, "With a dynamic executor (--group): on SIGTERM, how long to take no new tasks and follow the running ones before exiting; 0 exits at once (set the pod's terminationGracePeriodSeconds above it).")
	flag.DurationVar(&opts.RenewInterval, "renew-interval", 3*time.Second, "How often the Lease is renewed.")
	flag.DurationVar(&opts.RunningStatusDelay, "running-status-delay", time.Second, "How long a task's main container runs before its status says Running (a pod waiting for a node is not running); a task that ends sooner costs one status write, its final one (with its start time). 0 records Running as soon as its containers run.")
	opts.Limits = toolbox.Limits{Log: toolbox.DefaultMaxLogSize, Archive: toolbox.DefaultMaxArchiveSize}
	flag.Func("max-log-size", "Most bytes of a step's log kept (a quantity: 64Mi); past it the log is cut and the task fails (default 64Mi).", sizeFlag("max-log-size", &opts.Limits.Log))
	flag.Func("max-archive-size", "Largest workspace archive kept (a quantity: 1Gi); a larger one is refused and the task fails (default 1Gi).", sizeFlag("max-archive-size", &opts.Limits.Archive))
	zopts := zap.Options{}
	zopts.BindFlags(flag.CommandLine)
	flag.Parse()
	if opts.RunningStatusDelay == 0 {
		opts.RunningStatusDelay = -1 // at once; a zero Options field takes the default
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zopts)))
	log := ctrl.Log.WithName("executor")
	// As the manager: Go's soft memory limit at 90% of the container's.
	if _, err := memlimit.Set(memlimit.WithLogger(slog.New(logr.ToSlogHandler(log)))); err != nil {
		log.Error(err, "setting Go's memory limit: running without one")
	}

	opts.ActiveTasksLimit = int32(limit)
	opts.Labels = keyValues(labels)
	kopts.NodeSelector = keyValues(nodeSelector)
	if opts.Endpoint == "" {
		_, port, _ := strings.Cut(opts.Listen, ":")
		opts.Endpoint = "https://127.0.0.1:" + port
	}
	if opts.DataDir == "" {
		home, _ := os.UserHomeDir()
		opts.DataDir = filepath.Join(home, ".local", "share", "runservice", "executor", opts.Name)
	}
	if _, err := os.Stat(opts.Toolbox); err != nil && driver == string(rsv1.DriverDocker) {
		fmt.Fprintf(os.Stderr, "executor: toolbox binary %s: %v (build it with make build)\n", opts.Toolbox, err)
		os.Exit(1)
	}
	ctx := ctrl.SetupSignalHandler()
	cfg := ctrl.GetConfigOrDie()
	var drv executor.Driver
	switch rsv1.ExecutorDriver(driver) {
	case rsv1.DriverDocker:
		opts.Driver, opts.Permanent, opts.Group = rsv1.DriverDocker, true, ""
		d, err := docker.New(opts.Name)
		if err != nil {
			log.Error(err, "connecting to docker")
			os.Exit(1)
		}
		drv = d
	case rsv1.DriverKubernetes:
		opts.Driver, opts.Permanent = rsv1.DriverKubernetes, false
		kopts.Namespace, kopts.Executor = opts.Namespace, opts.Name
		kopts.ImagePullPolicy = corev1.PullPolicy(pullPolicy)
		kopts.Archs = strings.Split(archs, ",")
		if kopts.ExecutorURL == "" {
			kopts.ExecutorURL = opts.Endpoint
		}
		opts.PodEndpoint = kopts.ExecutorURL
		// The driver's informer outlives the signal: a draining executor still follows its pods.
		d, err := kubernetes.New(context.WithoutCancel(ctx), cfg, kopts)
		if err != nil {
			log.Error(err, "starting the kubernetes driver")
			os.Exit(1)
		}
		drv = d
	default:
		fmt.Fprintf(os.Stderr, "executor: unknown --driver %q (Docker or Kubernetes)\n", driver)
		os.Exit(2)
	}
	if err := executor.Run(ctx, cfg, drv, opts); err != nil {
		log.Error(err, "executor failed")
		os.Exit(1)
	}
}

// sizeFlag parses a positive quantity of bytes (64Mi, 1G, 1048576) into n.
func sizeFlag(name string, n *int64) func(string) error {
	return func(v string) error {
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return fmt.Errorf("--%s %q: %w", name, v, err)
		}
		if q.Value() <= 0 {
			return fmt.Errorf("--%s %q: must be more than 0 bytes", name, v)
		}
		*n = q.Value()
		return nil
	}
}

// keyValues parses k=v,k=v; "" is nil.
func keyValues(s string) map[string]string {
	if s == "" {
		return nil
	}
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
