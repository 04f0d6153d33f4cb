// Package realnode_test runs the Kubernetes driver against a real single-node Kubernetes built and
// started here (hack/node/node.sh: kubelet + containerd + CNI, against the test apiserver): real pods,
// real containers, the same end-to-end scenarios as the Docker driver.
package realnode_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

// podGateway is where pods reach the host (the CNI bridge's address, hack/node's POD_SUBNET).
const podGateway = "10.88.0.1"

var (
	env        *testenv.Env
	k8s        client.Client
	h          *e2e.Harness
	bins       string
	kubeconfig string
	storeURL   string
	nodeName   string
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	level := zapcore.ErrorLevel
	if os.Getenv("TEST_LOG") != "" {
		level = zapcore.DebugLevel
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(level)))
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			return fail(fmt.Errorf("the real-node suite needs root (it runs a kubelet) and CI is set"))
		}
		fmt.Fprintln(os.Stderr, "realnode: not root, nothing to test")
		return 0
	}
	var err error
	if env, err = testenv.Start(); err != nil {
		return fail(err)
	}
	defer func() { _ = env.Stop() }()
	tmp, err := os.MkdirTemp("", "runservice-realnode-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	kubeconfig = filepath.Join(tmp, "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.Kubeconfig, 0o600); err != nil {
		return fail(err)
	}

	nodeSh := filepath.Join(env.Root, "hack", "node", "node.sh")
	if err := run(nodeSh, "build"); err != nil {
		return fail(err)
	}
	state := filepath.Join(tmp, "node")
	up := exec.Command(nodeSh, "up", kubeconfig, state)
	up.Stderr = os.Stderr
	out, err := up.Output()
	defer func() {
		if err := run(nodeSh, "down", state); err != nil {
			fmt.Fprintln(os.Stderr, "realnode: tearing the node down:", err)
		}
	}()
	if err != nil {
		return fail(fmt.Errorf("starting the node: %w", err))
	}
	lines := strings.Fields(string(out))
	nodeName = lines[len(lines)-1]

	bins = filepath.Join(tmp, "bin")
	build := exec.Command("go", "build", "-o", bins+"/", "./cmd/executor", "./cmd/toolbox", "./cmd/runctl")
	build.Dir, build.Env, build.Stderr = env.Root, append(os.Environ(), "CGO_ENABLED=0"), os.Stderr
	if err := build.Run(); err != nil {
		return fail(fmt.Errorf("building binaries: %w", err))
	}
	// The toolbox image, FROM scratch with the static toolbox at /toolbox, loaded into the node.
	rootfs := filepath.Join(tmp, "toolbox-rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return fail(err)
	}
	if err := run("cp", filepath.Join(bins, "toolbox"), filepath.Join(rootfs, "toolbox")); err != nil {
		return fail(err)
	}
	image := filepath.Join(tmp, "toolbox.tar")
	pack := exec.Command("go", "run", "./hack/node/ocipack", "-rootfs", rootfs, "-name", "docker.io/library/runservice-toolbox:dev", "-entrypoint", "/toolbox", "-o", image)
	pack.Dir, pack.Stderr = env.Root, os.Stderr
	if err := pack.Run(); err != nil {
		return fail(fmt.Errorf("packing the toolbox image: %w", err))
	}
	if err := run(nodeSh, "import", state, image); err != nil {
		return fail(err)
	}

	if k8s, err = client.New(env.Config, client.Options{Scheme: manager.Scheme()}); err != nil {
		return fail(err)
	}
	storeURL = objectstore.FileURL(filepath.Join(tmp, "store"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := env.ManagerOptions()
	opts.ObjectStore = storeURL
	mgr, err := manager.New(ctx, env.Config, opts)
	if err != nil {
		return fail(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = mgr.Start(ctx)
	}()
	h = &e2e.Harness{
		Client: k8s, Root: env.Root, Kubectl: env.Kubectl(), Kubeconfig: kubeconfig,
		Runctl: filepath.Join(bins, "runctl"), ObjectStore: storeURL, Timeout: 3 * time.Minute,
	}
	code := m.Run()
	cancel()
	<-done
	return code
}

func run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", filepath.Base(name), strings.Join(args, " "), err)
	}
	return nil
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, "realnode:", err)
	return 1
}

// startExecutor starts a Kubernetes-driver executor process for the namespace and waits until it is Ready.
func startExecutor(t *testing.T, ns, name string, extra ...string) {
	t.Helper()
	addr := e2e.FreeAddr(t, "0.0.0.0")
	_, port, _ := net.SplitHostPort(addr)
	h.StartExecutor(t, filepath.Join(bins, "executor"), ns, name, append([]string{
		"--driver", "Kubernetes", "--group", "real",
		"--node-name", nodeName, "--image-pull-policy", "Never", "--toolbox-image", "runservice-toolbox:dev",
		"--listen", addr, "--endpoint", "https://127.0.0.1:" + port, "--pod-endpoint", "https://" + podGateway + ":" + port,
		"--data-dir", filepath.Join(t.TempDir(), "data"), "--object-store", storeURL,
		"--lease-duration", "6s", "--renew-interval", "1s",
	}, extra...)...)
}

// nothingLeft checks that the namespace has no task pods or secrets once its runs ended.
func nothingLeft(t *testing.T, ns string) {
	t.Helper()
	h.Eventually(t, "no task pod or secret left", func() bool {
		var pods corev1.PodList
		var secrets corev1.SecretList
		_ = k8s.List(context.Background(), &pods, client.InNamespace(ns), client.HasLabels{rsv1.LabelExecutorTaskUID})
		_ = k8s.List(context.Background(), &secrets, client.InNamespace(ns), client.HasLabels{rsv1.LabelExecutorTaskUID})
		return len(pods.Items) == 0 && len(secrets.Items) == 0
	})
}

func TestSampleDiamondOnRealPods(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "n")
	startExecutor(t, ns, "node-1")
	e2e.SampleDiamond(t, h, ns)
	nothingLeft(t, ns)
}

func TestWorkspaceFanInOnRealPods(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "n")
	startExecutor(t, ns, "node-1")
	e2e.WorkspaceFanIn(t, h, ns)
	nothingLeft(t, ns)
}

func TestFailingStepOnRealPods(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "n")
	startExecutor(t, ns, "node-1")
	e2e.FailingStep(t, h, ns)
	nothingLeft(t, ns)
}

func TestStopAndTimeoutOnRealPods(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "n")
	startExecutor(t, ns, "node-1")
	e2e.StopAndTimeout(t, h, ns)
	nothingLeft(t, ns)
}

// TestBadInputOnRealPods: an image that cannot be pulled, a pod its node refuses (impossible node
// selector) and a privileged task on an executor that refuses it are clear task failures. Nothing is
// left behind.
func TestBadInputOnRealPods(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "n")
	startExecutor(t, ns, "node-1", "--labels", "pool=main")
	startExecutor(t, ns, "nowhere", "--labels", "pool=nowhere", "--pod-node-selector", "pool=nowhere")
	noImage := e2e.ShellTask("noimage", "true", func(t *rsv1.Task) {
		t.Containers[0].Image = "no-such-image.invalid/nothing:1"
		t.ExecutorSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "main"}}
	})
	nowhere := e2e.ShellTask("nowhere", "true", func(t *rsv1.Task) {
		t.ExecutorSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "nowhere"}}
	})
	h.Create(t, ns, "bad", noImage, nowhere)
	run := h.WaitRun(t, ns, "bad", rsv1.RunPhaseFinished)
	if ts := e2e.TaskStatus(run, "noimage"); ts.Phase != rsv1.TaskPhaseFailed || !strings.Contains(ts.Message, "no-such-image.invalid/nothing:1") {
		t.Fatalf("missing image: %+v", ts)
	}
	if ts := e2e.TaskStatus(run, "nowhere"); ts.Phase != rsv1.TaskPhaseFailed || !strings.Contains(ts.Message, "NodeAffinity") {
		t.Fatalf("impossible node selector: %+v", ts)
	}
	t.Logf("missing image: %q; impossible node selector: %q", e2e.TaskStatus(run, "noimage").Message, e2e.TaskStatus(run, "nowhere").Message)
	e2e.PrivilegedRefused(t, h, ns, "node-1", func(t *rsv1.Task) {
		t.ExecutorSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"pool": "main"}}
	})
	nothingLeft(t, ns)
}

func TestUserAndEnvironmentOnRealPods(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "n")
	startExecutor(t, ns, "node-1")
	e2e.UserAndEnvironment(t, h, ns)
}
