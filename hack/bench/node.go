package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	rsexecutor "runservice.dev/runservice/executor"
	k8sdriver "runservice.dev/runservice/executor/driver/kubernetes"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/testenv"
)

// nodeBench measures the Kubernetes driver on the real single-node Kubernetes of hack/node: the
// per-task overhead of the service (ExecutorTask created to final status, one task at a time) against
// a bare pod running the same command (created to Succeeded), both in this run.
type nodeBench struct {
	env   *testenv.Env
	ns    string
	tasks int
}

func (b *nodeBench) run(ctx context.Context, out io.Writer) (err error) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(out, "node: not root, the real-node figures are not measured")
		return nil
	}
	tmp, err := os.MkdirTemp("", "runservice-bench-node-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	nodeSh := filepath.Join(b.env.Root, "hack", "node", "node.sh")
	kubeconfig := filepath.Join(tmp, "kubeconfig")
	if err := os.WriteFile(kubeconfig, b.env.Kubeconfig, 0o600); err != nil {
		return err
	}
	if err := quiet(ctx, b.env.Root, nodeSh, "build"); err != nil {
		return err
	}
	state := filepath.Join(tmp, "node")
	up := exec.CommandContext(ctx, nodeSh, "up", kubeconfig, state)
	upOut, upErr := up.Output()
	defer func() { _ = quiet(context.Background(), b.env.Root, nodeSh, "down", state) }()
	if upErr != nil {
		return fmt.Errorf("starting the node: %w", upErr)
	}
	fields := strings.Fields(string(upOut))
	node := fields[len(fields)-1]

	// The toolbox image, loaded into the node.
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return err
	}
	if err := quiet(ctx, b.env.Root, "go", "build", "-o", filepath.Join(rootfs, "toolbox"), "./cmd/toolbox"); err != nil {
		return err
	}
	image := filepath.Join(tmp, "toolbox.tar")
	if err := quiet(ctx, b.env.Root, "go", "run", "./hack/node/ocipack", "-rootfs", rootfs, "-name", "docker.io/library/runservice-toolbox:dev", "-entrypoint", "/toolbox", "-o", image); err != nil {
		return err
	}
	if err := quiet(ctx, b.env.Root, nodeSh, "import", state, image); err != nil {
		return err
	}

	kube, err := kubernetes.NewForConfig(b.env.Config)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  ... node: %d bare pods\n", b.tasks)
	raw, err := b.bare(ctx, kube, node)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	drv, err := k8sdriver.New(ectx, b.env.Config, k8sdriver.Options{
		Namespace: b.ns, Executor: "bench-node", ToolboxImage: "runservice-toolbox:dev", ImagePullPolicy: corev1.PullNever,
		NodeName: node, ExecutorURL: fmt.Sprintf("http://10.88.0.1:%d", port), Archs: []string{"amd64"},
	})
	if err != nil {
		return err
	}
	exDone := make(chan error, 1)
	go func() {
		exDone <- rsexecutor.Run(ectx, b.env.Config, drv, rsexecutor.Options{
			Name: "bench-node", Namespace: b.ns, Driver: rsv1.DriverKubernetes, Group: "bench-node",
			Listen: fmt.Sprintf("0.0.0.0:%d", port), Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port),
			PodEndpoint: fmt.Sprintf("http://10.88.0.1:%d", port), InsecureHTTP: true,
			DataDir: filepath.Join(tmp, "data"), RenewInterval: time.Second, LeaseDuration: 5 * time.Second,
		})
	}()
	defer func() { cancel(); <-exDone }()
	c, err := client.NewWithWatch(rest.CopyConfig(b.env.Config), client.Options{Scheme: manager.Scheme()})
	if err != nil {
		return err
	}
	if err := waitReady(ctx, c, b.ns, "bench-node"); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  ... node: %d one-step tasks through the service, one at a time\n", b.tasks)
	svc, err := (&dockerBench{ns: b.ns, tasks: b.tasks}).service(ctx, c)
	if err != nil {
		return err
	}
	rawMean, svcMean := mean(raw), mean(svc)
	fmt.Fprintf(out, "node raw: bare busybox pod `true`, created -> Succeeded: %s (%d pods)\n", meanP50(raw), len(raw))
	fmt.Fprintf(out, "node service: one-step task, ExecutorTask created -> final status: %s (%d tasks, one at a time)\n", meanP50(svc), len(svc))
	fmt.Fprintf(out, "node ratio: service/bare pod = %.2f (overhead per task %s: secret, init container, log mirror, status writes)\n",
		float64(svcMean)/float64(rawMean), ms(svcMean-rawMean))
	return nil
}

// bare times pods running the same command without the service, created to Succeeded.
func (b *nodeBench) bare(ctx context.Context, kube kubernetes.Interface, node string) ([]time.Duration, error) {
	var out []time.Duration
	for i := range b.tasks + 1 {
		name := fmt.Sprintf("bare-%d", i)
		w, err := kube.CoreV1().Pods(b.ns).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
		if err != nil {
			return nil, err
		}
		start := time.Now()
		_, err = kube.CoreV1().Pods(b.ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{
				NodeName: node, RestartPolicy: corev1.RestartPolicyNever, AutomountServiceAccountToken: ptr.To(false),
				Containers: []corev1.Container{{Name: "main", Image: "busybox:1.36", ImagePullPolicy: corev1.PullNever, Command: []string{"/bin/sh", "-c", "true"}}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			w.Stop()
			return nil, err
		}
		var took time.Duration
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
				took = time.Since(start)
				break
			}
		}
		w.Stop()
		if err := kube.CoreV1().Pods(b.ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
			return nil, err
		}
		if i > 0 {
			out = append(out, took)
		}
	}
	return out, nil
}

// quiet runs a command in dir, showing its output only when it fails.
func quiet(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return nil
}
