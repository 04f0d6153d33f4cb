// Command manager runs the runservice manager: the run, changegroup and executor controllers and the
// Run validating webhook.
package main

import (
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
)

// defaultIdentity is the replica's shard member name: its pod's name, else its host's.
func defaultIdentity() string {
	if name := os.Getenv("POD_NAME"); name != "" {
		return name
	}
	name, _ := os.Hostname()
	return name
}

func main() {
	var opts manager.Options
	flag.StringVar(&opts.MetricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus metrics endpoint; 0 disables it.")
	flag.StringVar(&opts.PprofAddr, "pprof-bind-address", "", "Address serving Go's profiles (/debug/pprof/, unauthenticated: keep it on loopback); empty (the default) disables it.")
	flag.StringVar(&opts.ProbeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz probes.")
	flag.BoolVar(&opts.LeaderElection, "leader-elect", false, "Elect a leader among manager replicas (a Lease in the manager's namespace).")
	flag.StringVar(&opts.LeaderElectionNS, "leader-election-namespace", "", "Namespace of the leader election Lease (default: the pod's namespace).")
	flag.IntVar(&opts.WebhookPort, "webhook-port", 9443, "Port of the Run webhooks (defaulting and validating); 0 disables them.")
	flag.StringVar(&opts.WebhookCertDir, "webhook-cert-dir", "", "Directory with tls.crt and tls.key for the webhook (default: controller-runtime's).")
	flag.StringVar(&opts.WebhookCertSecret, "webhook-cert-secret", "", "Keep the webhook's certificate in this Secret of --namespace, and the webhook configuration's caBundle, without cert-manager (default: read --webhook-cert-dir).")
	flag.StringVar(&opts.WebhookService, "webhook-service", "runservice-webhook-service", "Service of the webhook (with --webhook-cert-secret).")
	flag.StringVar(&opts.WebhookConfiguration, "webhook-configuration", "runservice-validating-webhook-configuration", "ValidatingWebhookConfiguration whose caBundle is kept (with --webhook-cert-secret).")
	flag.StringVar(&opts.MutatingWebhookConfiguration, "mutating-webhook-configuration", "runservice-mutating-webhook-configuration", "MutatingWebhookConfiguration whose caBundle is kept (with --webhook-cert-secret).")
	flag.StringVar(&opts.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "The manager's namespace (default: $POD_NAMESPACE).")
	flag.DurationVar(&opts.Controllers.PhantomGrace, "phantom-grace", 0, "How long a change-group entry of a run that never started is kept (default 1m).")
	flag.IntVar(&opts.Controllers.MaxConcurrentRuns, "max-concurrent-runs", 0, "Runs reconciled at once (default 16).")
	flag.DurationVar(&opts.Controllers.StartDelay, "status-report-delay", 5*time.Second, "How long what a run's tasks report (a start, steps' progress, a fetch's outcome) may wait to ride on the run's next status write; 0 writes each at once.")
	flag.DurationVar(&opts.Controllers.ProgressDelay, "status-progress-delay", time.Second, "How long a task's end, with the tasks it made ready scheduled, may wait before the run's status records it (siblings, or a parent and its children, ending within it cost one write); 0 writes it at once.")
	flag.DurationVar(&opts.Controllers.FinishWait, "status-finish-wait", 300*time.Millisecond, "How long, at most, a run's end waits for the fetches of its tasks under way, so that its last status write records them; 0 writes the end at once.")
	flag.BoolVar(&opts.Controllers.ExecutorInsecureHTTP, "executor-insecure-http", false, "Fetch from executors' http:// endpoints too (the executors' token then crosses the network in clear); by default only https, trusting the executor CA of each namespace (the Secret runservice-executor-ca).")
	flag.Var(&opts.Controllers.EndpointAllow, "executor-endpoint-allow", "Address ranges the fetcher may dial although executors' endpoints there are refused by default: comma-separated CIDRs and the words loopback, link-local (default none: loopback, link-local, unspecified and multicast addresses are refused).")
	flag.StringVar(&opts.ObjectStore, "object-store", objectstore.DefaultURL(), "Object store URL (file:///dir or s3://bucket?endpoint=...) for step logs and workspace archives.")
	flag.DurationVar(&opts.Controllers.ArchiveAfter, "archive-after", 10*time.Minute, "How long after its end a finished run is archived into the object store and deleted from etcd (0s: at once; negative: never).")
	flag.DurationVar(&opts.Controllers.ArchiveRetention, "archive-retention", 0, "How long an archived run is kept (by the hour it was archived) before it is deleted from the object store with its logs and workspace archives (default 0: for ever).")
	flag.IntVar(&opts.ArchiveAPI.Port, "archive-api-port", 0, "Port of the archive API (archivedruns.archive.runservice.dev, registered by an APIService); 0 disables it.")
	flag.StringVar(&opts.ArchiveAPI.Host, "archive-api-host", "", "Address the archive API listens on (default: every interface).")
	flag.StringVar(&opts.ArchiveIndexDir, "archive-index-dir", filepath.Join(objectstore.DataDir(), "archive-index"), "Directory of the archive API's index (disposable: rebuilt from the object store's index segments when missing).")
	flag.StringVar(&opts.ArchiveAPI.CertDir, "archive-api-cert-dir", "", "Directory with tls.crt and tls.key for the archive API (default: the webhook's certificate, and with --webhook-cert-secret the APIService's caBundle is kept too).")
	flag.StringVar(&opts.Shards, "shards", manager.ShardsAuto, "auto: every replica is a member of the shard ring (a Lease of its own in --namespace) and works on its share of the runs; off: the elected leader works on every run.")
	flag.StringVar(&opts.ShardIdentity, "shard-identity", defaultIdentity(), "This replica's member name in the shard ring, the value of the runservice.dev/shard label on its runs (default: $POD_NAME, else the hostname); a replica whose name is not a valid label value refuses to start.")
	flag.DurationVar(&opts.ShardLeaseDuration, "shard-lease-duration", 15*time.Second, "Duration of the membership Lease: a replica that stops renewing it is taken for gone, and its runs move, this long after its last renewal; it stops itself after 2/3 of it without a renewal.")
	zopts := zap.Options{Development: false}
	zopts.BindFlags(flag.CommandLine)
	flag.Parse()
	opts.Controllers.Archive = opts.Controllers.ArchiveAfter >= 0
	for _, d := range []*time.Duration{&opts.Controllers.StartDelay, &opts.Controllers.ProgressDelay, &opts.Controllers.FinishWait} {
		if *d <= 0 {
			*d = -1 // at once; a zero Options field takes the default
		}
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zopts)))
	klog.SetLogger(ctrl.Log) // the archive API's generic server and client-go log through klog
	log := ctrl.Log.WithName("setup")
	// Go's soft memory limit at 90% of the container's (its cgroup's), unless GOMEMLIMIT or
	// AUTOMEMLIMIT say otherwise: close to its limit a replica collects more often instead of
	// being killed for memory (its heap may grow to twice what it holds between collections).
	if _, err := memlimit.Set(memlimit.WithLogger(slog.New(logr.ToSlogHandler(log)))); err != nil {
		log.Error(err, "setting Go's memory limit: running without one")
	}
	opts.OnShardLeaseLost = func() {
		// At once, as controller-runtime does on a lost election: the others take this replica's
		// runs when its Lease expires, and no reconcile of it may still be writing then.
		log.Error(nil, "the shard membership Lease was lost: exiting")
		os.Exit(1)
	}

	ctx := ctrl.SetupSignalHandler()
	mgr, err := manager.New(ctx, ctrl.GetConfigOrDie(), opts)
	if err != nil {
		log.Error(err, "setting up the manager")
		os.Exit(1)
	}
	log.Info("starting manager")
	if err := mgr.Start(ctx); err != nil {
		log.Error(err, "running the manager")
		os.Exit(1)
	}
}
