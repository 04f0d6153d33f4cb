// Command localrun is `make run`: it runs the manager against the current cluster when one is
// reachable, and otherwise boots the local control plane (the same etcd and kube-apiserver as the
// tests), installs the CRDs and the webhook, writes the control plane's kubeconfig to bin/kubeconfig,
// starts the manager in the foreground and applies the samples.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/testenv"
)

func main() {
	local := flag.Bool("local", false, "Always boot the local control plane, even when a cluster is reachable.")
	samples := flag.Bool("samples", true, "Apply config/samples once the manager runs (local control plane only).")
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseDevMode(true)))
	if err := run(*local, *samples); err != nil {
		fmt.Fprintln(os.Stderr, "make run:", err)
		os.Exit(1)
	}
}

func run(forceLocal, samples bool) error {
	ctx := ctrl.SetupSignalHandler()
	if !forceLocal {
		if cfg, ok := reachableCluster(); ok {
			return onCluster(ctx, cfg)
		}
	}
	fmt.Println("no reachable cluster: booting the local control plane (the first time builds it, several minutes)")
	env, err := testenv.Start()
	if err != nil {
		return err
	}
	defer func() { _ = env.Stop() }()
	kubeconfig := filepath.Join(env.Root, "bin", "kubeconfig")
	if err := os.MkdirAll(filepath.Dir(kubeconfig), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(kubeconfig, env.Kubeconfig, 0o600); err != nil {
		return err
	}
	kubectl := filepath.Join(env.Root, "bin", "kubectl")
	_ = os.Remove(kubectl)
	if err := os.Symlink(env.Kubectl(), kubectl); err != nil {
		return err
	}
	opts := env.ManagerOptions()
	opts.MetricsAddr, opts.ProbeAddr = ":8080", ":8081"
	mgr, err := manager.New(ctx, env.Config, opts)
	if err != nil {
		return err
	}
	fmt.Printf(`
local control plane is up; from another terminal:

  export KUBECONFIG=%s PATH=%s:$PATH
  kubectl apply -f config/samples/
  kubectl get runservice

metrics: http://localhost:8080/metrics   probes: http://localhost:8081/readyz
Ctrl-C stops the manager and the control plane.

`, kubeconfig, filepath.Dir(kubectl))
	if samples {
		go applySamples(ctx, env, kubeconfig)
	}
	return mgr.Start(ctx)
}

// applySamples applies config/samples once the webhook answers.
func applySamples(ctx context.Context, env *testenv.Env, kubeconfig string) {
	for i := 0; i < 60 && ctx.Err() == nil; i++ {
		cmd := exec.CommandContext(ctx, env.Kubectl(), "--kubeconfig", kubeconfig, "apply", "-f", filepath.Join(env.Root, "config", "samples"))
		out, err := cmd.CombinedOutput()
		if err == nil {
			fmt.Printf("applied the samples:\n%s\n", out)
			return
		}
		time.Sleep(time.Second)
	}
	fmt.Println("could not apply the samples; apply them by hand")
}

// reachableCluster returns the current context's config when its apiserver answers.
func reachableCluster() (*rest.Config, bool) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return nil, false
	}
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = 3 * time.Second
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, false
	}
	if _, err := dc.ServerVersion(); err != nil {
		return nil, false
	}
	cfg.Timeout = 0
	return cfg, true
}

// onCluster installs the CRDs into a reachable cluster and runs the manager there. The webhook needs
// a certificate the cluster trusts, so out of a cluster the manager runs without it (the run
// controller still rejects bad graphs with phase SetupError); deploy with config/default for it.
func onCluster(ctx context.Context, cfg *rest.Config) error {
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	fmt.Println("cluster reachable: installing the CRDs and running the manager against it (webhook off)")
	if _, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{filepath.Join(root, "config", "crd", "bases")}, ErrorIfPathMissing: true}); err != nil {
		return fmt.Errorf("installing CRDs: %w", err)
	}
	mgr, err := manager.New(ctx, cfg, manager.Options{MetricsAddr: ":8080", ProbeAddr: ":8081", LeaderElection: true, LeaderElectionNS: "default"})
	if err != nil {
		return err
	}
	return mgr.Start(ctx)
}
