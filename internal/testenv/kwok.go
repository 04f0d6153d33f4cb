package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Kwok is a running kwok: it simulates nodes and the life of the pods bound to them.
type Kwok struct {
	// Node is the name of the (first) simulated node.
	Node string
	// Nodes are the names of the simulated nodes.
	Nodes []string
	cmd   *exec.Cmd
}

// KwokPoolLabel labels the nodes of one kwok with their NodePrefix: a node selector on it keeps
// pods off the nodes of a kwok that stopped.
const KwokPoolLabel = "runservice.dev/kwok-pool"

// KwokOptions shape the simulated cluster.
type KwokOptions struct {
	// Nodes is how many nodes kwok simulates (default 1), named NodePrefix-0, NodePrefix-1...
	// (default kwok-node) and labelled KwokPoolLabel=NodePrefix.
	Nodes      int
	NodePrefix string
	// Running is how long a pod bound to a node stays Pending (default 100ms); Complete how long it
	// then runs before it Succeeds (default 300ms), except the SlowRun's and PartitionedRun's.
	Running, Complete time.Duration
}

// SlowRun is the name of the run whose pods run a long while (20s) on the simulated node; the
// others complete after a fraction of a second.
const SlowRun = "slow"

// PartitionedRun is the name of the run whose pods sit on a node cut off from the apiserver: they
// run and never end, and their deletion is never confirmed (the kubelet would remove the object once
// it stopped the containers); only a force delete (grace period 0) removes them.
const PartitionedRun = "partitioned"

// kwokStages are the pod life the tests simulate: Pending -> Running (100ms) -> Succeeded with exit
// code 0 (300ms, or 20s for the slow run, never for the partitioned one), and deletion (never
// confirmed for the partitioned run).
const kwokStages = `
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: runservice-node}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.phase', operator: DoesNotExist}
  next:
    statusTemplate: |
      phase: Running
      conditions:
      - {type: Ready, status: "True", reason: KubeletReady, message: simulated, lastHeartbeatTime: {{ Now | Quote }}, lastTransitionTime: {{ Now | Quote }}}
      allocatable: {cpu: "1000", memory: 1000Gi, pods: "100000"}
      capacity: {cpu: "1000", memory: 1000Gi, pods: "100000"}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: runservice-pod-running}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.phase', operator: In, values: [Pending]}
  delay: {durationMilliseconds: ${RUNNING_MS}}
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Running
      startTime: {{ $now | Quote }}
      conditions:
      - {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
      initContainerStatuses:
      {{ range .spec.initContainers }}
      - {name: {{ .name | Quote }}, image: {{ .image | Quote }}, ready: true, restartCount: 0, state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - {name: {{ .name | Quote }}, image: {{ .image | Quote }}, ready: true, started: true, restartCount: 0, state: {running: {startedAt: {{ $now | Quote }}}}}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: runservice-pod-complete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.phase', operator: In, values: [Running]}
    - {key: '.metadata.labels["runservice.dev/run"]', operator: NotIn, values: [slow, partitioned]}
  delay: {durationMilliseconds: ${COMPLETE_MS}}
  next:
    statusTemplate: |
      ${COMPLETED}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: runservice-pod-complete-slow}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchLabels: {runservice.dev/run: slow}
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.phase', operator: In, values: [Running]}
  delay: {durationMilliseconds: 20000}
  next:
    statusTemplate: |
      ${COMPLETED}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: runservice-pod-delete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: Exists}
    - {key: '.metadata.finalizers', operator: DoesNotExist}
    - {key: '.metadata.labels["runservice.dev/run"]', operator: NotIn, values: [partitioned]}
  next:
    delete: true
`

// completedStatus is the status of a pod whose containers all exited 0 (both complete stages).
const completedStatus = `{{ $now := Now }}
      phase: Succeeded
      containerStatuses:
      {{ range .spec.containers }}
      - {name: {{ .name | Quote }}, image: {{ .image | Quote }}, ready: false, started: false, restartCount: 0, state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}}
      {{ end }}`

// StartKwok builds (once, hack/kwok.sh) and starts kwok against the control plane, managing one
// simulated node it creates.
func (e *Env) StartKwok(ctx context.Context, dir string) (*Kwok, error) {
	return e.StartKwokWith(ctx, dir, KwokOptions{})
}

// StartKwokWith starts kwok managing the nodes it creates, as opts say.
func (e *Env) StartKwokWith(ctx context.Context, dir string, opts KwokOptions) (*Kwok, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 1
	}
	if opts.NodePrefix == "" {
		opts.NodePrefix = "kwok-node"
	}
	if opts.Running == 0 {
		opts.Running = 100 * time.Millisecond
	}
	if opts.Complete == 0 {
		opts.Complete = 300 * time.Millisecond
	}
	out, err := exec.Command(filepath.Join(e.Root, "hack", "kwok.sh")).Output()
	if err != nil {
		return nil, fmt.Errorf("building kwok with hack/kwok.sh: %w", err)
	}
	bin := strings.TrimSpace(string(out))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	stages := filepath.Join(dir, "stages.yaml")
	if err := os.WriteFile(kubeconfig, e.Kubeconfig, 0o600); err != nil {
		return nil, err
	}
	stageConfig := strings.NewReplacer("${COMPLETED}", completedStatus,
		"${RUNNING_MS}", strconv.FormatInt(opts.Running.Milliseconds(), 10),
		"${COMPLETE_MS}", strconv.FormatInt(opts.Complete.Milliseconds(), 10)).Replace(kwokStages)
	if err := os.WriteFile(stages, []byte(stageConfig), 0o644); err != nil {
		return nil, err
	}
	kube, err := kubernetes.NewForConfig(e.Config)
	if err != nil {
		return nil, err
	}
	var nodes []string
	for i := range opts.Nodes {
		node := fmt.Sprintf("%s-%d", opts.NodePrefix, i)
		_, err = kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name:        node,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake"},
			Labels:      map[string]string{"type": "kwok", "kubernetes.io/hostname": node, KwokPoolLabel: opts.NodePrefix},
		}}, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("creating the simulated node %s: %w", node, err)
		}
		nodes = append(nodes, node)
	}
	cmd := exec.Command(bin, "--kubeconfig", kubeconfig, "-c", stages,
		"--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake")
	logf, err := os.Create(filepath.Join(dir, "kwok.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting kwok: %w", err)
	}
	return &Kwok{Node: nodes[0], Nodes: nodes, cmd: cmd}, nil
}

// Stop stops kwok.
func (k *Kwok) Stop() {
	_ = k.cmd.Process.Kill()
	_ = k.cmd.Wait()
}
