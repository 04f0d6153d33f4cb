// Command localrun is `make run`: it runs the manager against the current cluster when one is
// reachable, and otherwise boots the local control plane (the same etcd and kube-apiserver as the
// tests), installs the CRDs and the webhook, writes the control plane's kubeconfig to bin/kubeconfig,
// starts the manager and a Docker executor in the foreground, applies the samples and follows the
// sample diamond run to its end and its logs.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor"
	"runservice.dev/runservice/executor/driver/docker"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

func main() {
	local := flag.Bool("local", false, "Always boot the local control plane, even when a cluster is reachable.")
	samples := flag.Bool("samples", true, "Apply config/samples once the manager runs (local control plane only).")
	archiveAfter := flag.Duration("archive-after", 10*time.Minute, "How long after its end a finished run is archived into the object store and deleted from etcd (0s: at once; negative: never); a run's runservice.dev/archive-after annotation overrides it.")
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseDevMode(true)))
	if err := run(*local, *samples, *archiveAfter); err != nil {
		fmt.Fprintln(os.Stderr, "make run:", err)
		os.Exit(1)
	}
}

func run(forceLocal, samples bool, archiveAfter time.Duration) error {
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
	bin := filepath.Join(env.Root, "bin")
	store := objectstore.FileURL(filepath.Join(bin, "store"))
	opts := env.ManagerOptions()
	opts.MetricsAddr, opts.ProbeAddr = ":8080", ":8081"
	opts.ObjectStore = store
	opts.Controllers.Archive, opts.Controllers.ArchiveAfter = archiveAfter >= 0, archiveAfter
	// The archive API, registered with the control plane as config/ registers it in a cluster, and
	// its index beside the store it follows.
	if opts.ArchiveAPI, err = env.ArchiveAPI(ctx); err != nil {
		return err
	}
	opts.ArchiveIndexDir = filepath.Join(bin, "archive-index")
	mgr, err := manager.New(ctx, env.Config, opts)
	if err != nil {
		return err
	}
	// The manager and the executor stop together, and before the control plane (whose teardown
	// removes the webhook's serving certificate under the manager).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	running := 1
	go func() { errc <- mgr.Start(ctx) }()
	withExecutor := startExecutor(ctx, env, bin, store, errc)
	if withExecutor {
		running++
	}
	fmt.Printf(`
local control plane is up; from another terminal:

  export KUBECONFIG=%s PATH=%s:$PATH RUNSERVICE_OBJECT_STORE='%s'
  kubectl get runservice
  kubectl runs logs diamond build        # or: runctl logs diamond build
  kubectl get archivedruns               # finished runs archived out of etcd

metrics: http://localhost:8080/metrics   probes: http://localhost:8081/readyz
Ctrl-C stops the manager, the executor and the control plane.

`, kubeconfig, bin, store)
	if samples {
		go func() {
			if applySamples(ctx, env, kubeconfig) && withExecutor {
				follow(ctx, env, kubeconfig, bin, store, "diamond")
			}
		}()
	}
	err = <-errc
	cancel()
	for running--; running > 0; running-- {
		<-errc
	}
	return err
}

// startExecutor builds the toolbox and runctl and starts a Docker executor in this process, when a
// Docker daemon answers (hack/docker.sh starts one where the machine allows).
func startExecutor(ctx context.Context, env *testenv.Env, bin, store string, errc chan<- error) bool {
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "./cmd/toolbox", "./cmd/runctl")
	build.Dir, build.Env = env.Root, append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Println("building the toolbox failed; no executor:", err)
		return false
	}
	plugin := filepath.Join(bin, "kubectl-runs")
	_ = os.Remove(plugin)
	_ = os.Symlink("runctl", plugin)
	setup := exec.CommandContext(ctx, filepath.Join(env.Root, "hack", "docker.sh"))
	setup.Stdout, setup.Stderr = os.Stderr, os.Stderr
	if err := setup.Run(); err != nil {
		fmt.Println("no Docker daemon: running without an executor (runs wait for one):", err)
		return false
	}
	drv, err := docker.New("docker-local")
	if err != nil {
		fmt.Println("no Docker daemon: running without an executor:", err)
		return false
	}
	go func() {
		errc <- executor.Run(ctx, env.Config, drv, executor.Options{
			Name: "docker-local", Namespace: "default", Driver: rsv1.DriverDocker, Permanent: true,
			Listen: "127.0.0.1:8090", Endpoint: "https://127.0.0.1:8090",
			DataDir: filepath.Join(bin, "executor-data"), Toolbox: filepath.Join(bin, "toolbox"), ObjectStore: store,
		})
	}()
	return true
}

// follow prints a run's progress until it is final, then its tasks' logs.
func follow(ctx context.Context, env *testenv.Env, kubeconfig, bin, store, run string) {
	last := ""
	for ctx.Err() == nil {
		out, _ := exec.CommandContext(ctx, env.Kubectl(), "--kubeconfig", kubeconfig, "get", "run", run, "--no-headers",
			"-o", "custom-columns=PHASE:.status.phase,RESULT:.status.result,TASKS:.status.progress,STATES:.status.tasks[*].phase").Output()
		line := strings.TrimSpace(string(out))
		if line != last {
			fmt.Printf("run %s: %s\n", run, line)
			last = line
		}
		if strings.HasPrefix(line, "Finished") || strings.HasPrefix(line, "Cancelled") || strings.HasPrefix(line, "SetupError") {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // the fetcher copies the last logs
	for _, task := range []string{"checkout", "build", "test", "package"} {
		out, _ := exec.CommandContext(ctx, filepath.Join(bin, "runctl"), "logs", run, task, "--kubeconfig", kubeconfig, "--object-store", store).CombinedOutput()
		fmt.Printf("--- runctl logs %s %s\n%s", run, task, out)
	}
	// The archive: the run moves out of etcd into the object store and is read back from there.
	kubectl := func(args ...string) string {
		out, _ := exec.CommandContext(ctx, env.Kubectl(), append([]string{"--kubeconfig", kubeconfig}, args...)...).CombinedOutput()
		return string(out)
	}
	fmt.Printf("--- kubectl annotate run %s %s=0s (archive it now instead of after -archive-after)\n%s", run, rsv1.AnnotationArchiveAfter,
		kubectl("annotate", "run", run, rsv1.AnnotationArchiveAfter+"=0s"))
	for i := 0; i < 60 && ctx.Err() == nil; i++ {
		if out := kubectl("get", "archivedruns", run); strings.Contains(out, run) && strings.Contains(kubectl("get", "run", run), "NotFound") {
			fmt.Printf("--- kubectl get runs (%s has left etcd)\n%s--- kubectl get archivedruns\n%s", run, kubectl("get", "runs"), out)
			return
		}
		time.Sleep(time.Second)
	}
	fmt.Printf("the run %s was not archived within a minute: see kubectl describe run %s\n", run, run)
}

// applySamples applies config/samples once the webhook answers.
func applySamples(ctx context.Context, env *testenv.Env, kubeconfig string) bool {
	for i := 0; i < 60 && ctx.Err() == nil; i++ {
		cmd := exec.CommandContext(ctx, env.Kubectl(), "--kubeconfig", kubeconfig, "apply", "-f", filepath.Join(env.Root, "config", "samples"))
		out, err := cmd.CombinedOutput()
		if err == nil {
			fmt.Printf("applied the samples:\n%s\n", out)
			return true
		}
		time.Sleep(time.Second)
	}
	fmt.Println("could not apply the samples; apply them by hand")
	return false
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

// onCluster installs the CRDs and their admission policies into a reachable cluster and runs the manager there. The webhook needs
// a certificate the cluster trusts, so out of a cluster the manager runs without it (the run
// controller still rejects bad graphs with phase SetupError, but nothing refuses a change of a run's
// immutable fields); deploy with config/default for it.
func onCluster(ctx context.Context, cfg *rest.Config) error {
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	fmt.Println("cluster reachable: installing the CRDs and running the manager against it (webhook off)")
	if _, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{filepath.Join(root, "config", "crd", "bases")}, ErrorIfPathMissing: true}); err != nil {
		return fmt.Errorf("installing CRDs: %w", err)
	}
	if err := testenv.InstallPolicies(ctx, cfg, root); err != nil {
		return err
	}
	mgr, err := manager.New(ctx, cfg, manager.Options{MetricsAddr: ":8080", ProbeAddr: ":8081", LeaderElection: true, LeaderElectionNS: "default"})
	if err != nil {
		return err
	}
	return mgr.Start(ctx)
}
