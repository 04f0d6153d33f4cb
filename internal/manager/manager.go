// Package manager builds the runservice manager process: a controller-runtime manager with the
// reconcilers, the Run webhook, leader election, probes and metrics. cmd/manager, `make run` and the
// benchmarks all start it through Run.
package manager

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/controllers"
	"runservice.dev/runservice/internal/archiveapi"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/shard"
	"runservice.dev/runservice/internal/webhookcert"
)

// Options configure the manager process.
type Options struct {
	MetricsAddr string
	// PprofAddr, when set, serves Go's profiles (/debug/pprof/) there: for finding what holds memory
	// or CPU in a running manager.
	PprofAddr        string
	ProbeAddr        string
	LeaderElection   bool
	LeaderElectionNS string
	// WebhookPort is the port of the webhook server; 0 disables the webhook.
	WebhookPort    int
	WebhookHost    string
	WebhookCertDir string
	Controllers    controllers.Options
	// ObjectStore is the URL of the object store for logs and archives; "" turns fetching off.
	ObjectStore string
	// SkipNameValidation allows several managers in one process (tests restart the manager).
	SkipNameValidation bool
	// WebhookCertSecret, when set, makes the manager keep the webhook's certificate itself (in that
	// Secret of Namespace, for WebhookService) instead of reading one provided in WebhookCertDir.
	WebhookCertSecret    string
	WebhookService       string
	WebhookConfiguration string
	// MutatingWebhookConfiguration is the Run defaulting webhook's configuration, whose caBundle is
	// kept beside WebhookConfiguration's.
	MutatingWebhookConfiguration string
	Namespace                    string
	// ArchiveAPI serves archived runs (archive.runservice.dev) on every replica when its Port is not
	// 0; its certificate is the webhook's unless it has a CertDir, its Store is ObjectStore, and its
	// Index the replica's own, kept in ArchiveIndexDir.
	ArchiveAPI      archiveapi.Options
	ArchiveIndexDir string
	// Shards is ShardsAuto (the replica is a member of the shard ring, see internal/shard) or
	// ShardsOff; "" is off. ShardIdentity is the member name (a label value);
	// ShardLeaseDuration the membership Lease's duration (default 15s). OnShardLeaseLost, when
	// set, is called when the replica could not renew its Lease (cmd/manager exits); the manager
	// stops in any case.
	Shards             string
	ShardIdentity      string
	ShardLeaseDuration time.Duration
	OnShardLeaseLost   func()
}

// Scheme returns the scheme of every kind the manager uses.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s) // static registrations; cannot fail
	_ = rsv1.AddToScheme(s)
	return s
}

// CacheOptions restrict what the manager caches of kinds it does not own: of Leases, only the
// executors' (labelled with their name), not every Lease of the cluster. A replica of a sharded
// manager (shard is its member name) caches only the Runs and ExecutorTasks labelled as its own.
//
// No cached object keeps its managedFields: no code of the manager reads them, and they were a
// third of the heap a live run cost it (make bench -live: 33 KiB before, 21 KiB after). A write from a cached copy loses none: a
// patch sends only what changed, and an update that carries no managedFields keeps the stored ones.
// Runs and ExecutorTasks are also cached without the task definitions the manager no longer reads
// (controllers.SlimRun, controllers.SlimExecutorTask).
func CacheOptions(shard string) cache.Options {
	executorLeases, _ := labels.Parse(rsv1.LabelExecutor) // "exists": a constant that parses
	stripManagedFields := cache.TransformStripManagedFields()
	slim := func(transform func(any) (any, error)) cache.ByObject {
		return cache.ByObject{Transform: func(o any) (any, error) {
			o, _ = stripManagedFields(o) // never fails
			return transform(o)
		}}
	}
	runs, tasks := slim(controllers.SlimRun), slim(controllers.SlimExecutorTask)
	if shard != "" {
		own := labels.SelectorFromSet(labels.Set{rsv1.LabelShard: shard})
		runs.Label, tasks.Label = own, own
	}
	byObject := map[client.Object]cache.ByObject{
		&coordinationv1.Lease{}: {Label: executorLeases}, &rsv1.Run{}: runs, &rsv1.ExecutorTask{}: tasks,
	}
	return cache.Options{ByObject: byObject, DefaultTransform: stripManagedFields}
}

// New builds the manager.
func New(ctx context.Context, cfg *rest.Config, opts Options) (ctrl.Manager, error) {
	sharding, cfg, err := newSharding(cfg, &opts)
	if err != nil {
		return nil, err
	}
	leaseDuration, renewDeadline := 15*time.Second, 10*time.Second
	mopts := ctrl.Options{
		Scheme:                        Scheme(),
		Metrics:                       metricsserver.Options{BindAddress: opts.MetricsAddr},
		HealthProbeBindAddress:        opts.ProbeAddr,
		PprofBindAddress:              opts.PprofAddr,
		LeaderElection:                opts.LeaderElection,
		LeaderElectionID:              leaderElectionID,
		LeaderElectionNamespace:       opts.LeaderElectionNS,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &leaseDuration,
		RenewDeadline:                 &renewDeadline,
		Controller:                    config.Controller{SkipNameValidation: &opts.SkipNameValidation},
		Cache:                         CacheOptions(shardName(opts.Controllers.Shard)),
	}
	setupWith, err := leaderElection(ctx, cfg, &opts, sharding, &mopts)
	if err != nil {
		return nil, err
	}
	var certs *webhookcert.Manager
	if opts.WebhookPort != 0 {
		if opts.WebhookCertSecret != "" {
			if opts.WebhookCertDir == "" {
				opts.WebhookCertDir = filepath.Join(os.TempDir(), "runservice-webhook-certs")
			}
			c, err := client.New(cfg, client.Options{Scheme: Scheme()})
			if err != nil {
				return nil, err
			}
			certs = &webhookcert.Manager{
				Client: c, Namespace: opts.Namespace, Secret: opts.WebhookCertSecret, Service: opts.WebhookService,
				WebhookConfiguration: opts.WebhookConfiguration, MutatingWebhookConfiguration: opts.MutatingWebhookConfiguration,
				CertDir: opts.WebhookCertDir,
			}
			if opts.ArchiveAPI.Port != 0 && opts.ArchiveAPI.CertDir == "" {
				certs.APIService = archiveapi.APIService // served with the same certificate
			}
			// Before the webhook server starts: it needs the files.
			if err := certs.Ensure(ctx); err != nil {
				return nil, fmt.Errorf("providing the webhook certificate: %w", err)
			}
		}
		mopts.WebhookServer = webhook.NewServer(webhook.Options{Host: opts.WebhookHost, Port: opts.WebhookPort, CertDir: opts.WebhookCertDir})
		opts.Controllers.Webhook = true
	}
	mgr, err := ctrl.NewManager(cfg, mopts)
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}
	if opts.ObjectStore != "" {
		store, err := objectstore.Open(ctx, opts.ObjectStore)
		if err != nil {
			return nil, err
		}
		opts.Controllers.Store = store
		context.AfterFunc(ctx, func() { _ = store.Close() })
	}
	if err := controllers.SetupWithManager(ctx, setupWith(mgr), opts.Controllers); err != nil {
		return nil, err
	}
	if err := addArchiveAPI(mgr, cfg, opts); err != nil {
		return nil, err
	}
	if certs != nil {
		// Every replica renews: the webhook server of each one serves.
		renew := manager.RunnableFunc(func(ctx context.Context) error { return certs.Run(ctx, 12*time.Hour) })
		if err := mgr.Add(nonLeader{renew}); err != nil {
			return nil, err
		}
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, fmt.Errorf("adding health check: %w", err)
	}
	ready := healthz.Ping
	if opts.WebhookPort != 0 {
		ready = mgr.GetWebhookServer().StartedChecker()
	}
	if err := mgr.AddReadyzCheck("readyz", ready); err != nil {
		return nil, fmt.Errorf("adding ready check: %w", err)
	}
	if sharding != nil {
		return &shardedManager{Manager: mgr, sharding: sharding}, nil
	}
	return mgr, nil
}

// shardName is the member name of a sharded replica, "" for an unsharded manager.
func shardName(v shard.View) string {
	if v == nil {
		return ""
	}
	return v.Me()
}

// nonLeader runs a runnable on every replica, not only the leader.
type nonLeader struct{ manager.Runnable }

func (nonLeader) NeedLeaderElection() bool { return false }
