// Package testenv starts the local control plane (etcd + kube-apiserver built by
// hack/control-plane.sh) with the runservice CRDs, their admission policies and the Run webhook
// installed. The integration
// tests, the benchmarks and `make run` all boot it through Start, so they share one setup.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"runservice.dev/runservice/internal/archiveapi"
	"runservice.dev/runservice/internal/executorhttp"
	"runservice.dev/runservice/internal/manager"
)

// Env is a running control plane.
type Env struct {
	*envtest.Environment
	// Config is an admin's config.
	Config *rest.Config
	// Kubeconfig is an admin's kubeconfig file content.
	Kubeconfig []byte
	// Assets is the directory of the control-plane binaries (etcd, kube-apiserver, kubectl).
	Assets string
	// Root is the repository root.
	Root string

	dir        string              // the front proxy's and the archive API's certificates
	archiveAPI *archiveapi.Options // set by ArchiveAPI
}

// RepoRoot finds the repository root from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Assets returns the control-plane binaries' directory: KUBEBUILDER_ASSETS, or what
// hack/control-plane.sh builds (once) and prints.
func Assets(root string) (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	cmd := exec.Command(filepath.Join(root, "hack", "control-plane.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("building the control plane with hack/control-plane.sh: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Option changes how Start boots the control plane.
type Option func(*options)

type options struct {
	auditLog   string
	auditReads bool
}

// WithAuditLog makes the apiserver write an audit event for every write request (create, update,
// patch, delete, deletecollection: who, with which user agent, on what, with which response code)
// into the JSON-lines file path, in batches of at most a second: what the benchmark counts writes
// by component from.
func WithAuditLog(path string) Option {
	return func(o *options) { o.auditLog = path }
}

// WithAuditedReads adds the reads (get, list; not watches) to WithAuditLog's log.
func WithAuditedReads() Option {
	return func(o *options) { o.auditReads = true }
}

// auditPolicy logs the metadata of writes only.
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
`

// Start boots the control plane with the CRDs and the webhook configuration installed.
func Start(opts ...Option) (*Env, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	assets, err := Assets(root)
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			Paths: []string{filepath.Join(root, "config", "webhook")},
		},
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	dir, err := os.MkdirTemp("", "runservice-testenv-")
	if err != nil {
		return nil, err
	}
	if err := configureAggregation(env, dir); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("configuring API aggregation: %w", err)
	}
	if o.auditLog != "" {
		policy := filepath.Join(filepath.Dir(o.auditLog), "audit-policy.yaml")
		text := auditPolicy
		if o.auditReads {
			text = strings.Replace(text, "[create, update, patch, delete, deletecollection]", "[create, update, patch, delete, deletecollection, get, list]", 1)
		}
		if err := os.WriteFile(policy, []byte(text), 0o644); err != nil {
			return nil, fmt.Errorf("writing the audit policy: %w", err)
		}
		args := env.ControlPlane.GetAPIServer().Configure()
		args.Set("audit-policy-file", policy)
		args.Set("audit-log-path", o.auditLog)
		args.Set("audit-log-format", "json")
		args.Set("audit-log-mode", "batch")
		args.Set("audit-log-batch-max-wait", "1s")
		// The log is never rotated (the default rotates at 100 MB): the benchmark reads it by offset.
		args.Set("audit-log-maxsize", "1000000")
	}
	e := &Env{Environment: env, Assets: assets, Root: root, dir: dir}
	cfg, err := env.Start()
	if err != nil {
		_ = e.Stop() // a failed CRD or webhook install leaves etcd and the apiserver running
		return nil, fmt.Errorf("starting the control plane: %w", err)
	}
	admin, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, cfg)
	if err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("adding the admin user: %w", err)
	}
	if e.Kubeconfig, err = admin.KubeConfig(); err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("writing the admin kubeconfig: %w", err)
	}
	e.Config = admin.Config()
	ctx := context.Background()
	if err := InstallPolicies(ctx, e.Config, root); err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("installing the admission policies: %w", err)
	}
	if err := waitForPolicies(ctx, e.Config); err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("installing the admission policies: %w", err)
	}
	return e, nil
}

// Stop stops the control plane and removes its files.
func (e *Env) Stop() error {
	err := e.Environment.Stop()
	_ = os.RemoveAll(e.dir)
	return err
}

// ManagerOptions are the manager options that serve the webhook where the control plane calls it.
// Metrics and probes are off (several managers may run in one process). The executors run here
// listen on loopback, so the fetcher is allowed to dial it, as an operator would allow a local
// executor with --executor-endpoint-allow=loopback.
func (e *Env) ManagerOptions() manager.Options {
	w := e.WebhookInstallOptions
	opts := manager.Options{
		MetricsAddr:    "0",
		ProbeAddr:      "0",
		WebhookHost:    w.LocalServingHost,
		WebhookPort:    w.LocalServingPort,
		WebhookCertDir: w.LocalServingCertDir,

		SkipNameValidation: true,
	}
	opts.Controllers.EndpointAllow, _ = executorhttp.ParseAllow("loopback") // a constant: cannot fail
	return opts
}

// Kubectl returns the path of the kubectl binary built with the control plane.
func (e *Env) Kubectl() string { return filepath.Join(e.Assets, "kubectl") }
