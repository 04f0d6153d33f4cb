// Package manager builds the runservice manager process: a controller-runtime manager with the
// reconcilers, the Run webhook, leader election, probes and metrics. cmd/manager, `make run` and the
// benchmarks all start it through Run.
package manager

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/controllers"
	"runservice.dev/runservice/internal/objectstore"
)

// Options configure the manager process.
type Options struct {
	MetricsAddr      string
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
}

// Scheme returns the scheme of every kind the manager uses.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s) // static registrations; cannot fail
	_ = rsv1.AddToScheme(s)
	return s
}

// New builds the manager.
func New(ctx context.Context, cfg *rest.Config, opts Options) (ctrl.Manager, error) {
	leaseDuration, renewDeadline := 15*time.Second, 10*time.Second
	mopts := ctrl.Options{
		Scheme:                        Scheme(),
		Metrics:                       metricsserver.Options{BindAddress: opts.MetricsAddr},
		HealthProbeBindAddress:        opts.ProbeAddr,
		LeaderElection:                opts.LeaderElection,
		LeaderElectionID:              "runservice-manager.runservice.dev",
		LeaderElectionNamespace:       opts.LeaderElectionNS,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &leaseDuration,
		RenewDeadline:                 &renewDeadline,
		Controller:                    config.Controller{SkipNameValidation: &opts.SkipNameValidation},
	}
	if opts.WebhookPort != 0 {
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
	if err := controllers.SetupWithManager(ctx, mgr, opts.Controllers); err != nil {
		return nil, err
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
	return mgr, nil
}
