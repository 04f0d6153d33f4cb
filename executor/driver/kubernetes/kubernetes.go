// Package kubernetes is the executor's Kubernetes driver: a task runs as a pod in the executor's
// namespace, with a Secret when it has an environment or fetches workspaces. An init container copies the toolbox into
// an emptyDir (and fetches the parents' workspaces from the executor); the main container runs the
// steps through it, reporting each step as frames in the pod's log and its results in the
// termination message; services run as native sidecars. Pods are owned by nothing a cascade could
// delete early: the executor, or a sibling of its group, removes them.
package kubernetes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor"
	"runservice.dev/runservice/executor/toolbox"
)

// The Kubernetes driver's permissions, in the executor's namespace (config/rbac/executor). Secrets
// are only written: a task's is created and later deleted by its labels (deletecollection, never
// read back). The admission policy of config/executor limits both to task objects: what an executor
// creates carries its own name, what it deletes carries an executor's.
// +kubebuilder:rbac:groups="",namespace=system,resources=pods,verbs=list;watch;create;patch;deletecollection
// +kubebuilder:rbac:groups="",namespace=system,resources=pods/log,verbs=get
// +kubebuilder:rbac:groups="",namespace=system,resources=secrets,verbs=create;deletecollection

// Options configure the driver.
type Options struct {
	// Namespace of the pods: the executor's.
	Namespace string
	// Executor is the executor's name.
	Executor string
	// ToolboxImage holds the static toolbox at /toolbox; it runs as the pods' init container.
	ToolboxImage string
	// ImagePullPolicy of the pods' containers ("" lets Kubernetes decide).
	ImagePullPolicy corev1.PullPolicy
	// NodeName, when set, binds the pods to that node directly (clusters without a scheduler).
	NodeName string
	// NodeSelector is put on every pod: the nodes the executor's tasks may run on.
	NodeSelector map[string]string
	// ExecutorURL is where pods reach the executor's HTTP server to fetch their parents' workspaces.
	ExecutorURL string
	// Archs are the architectures the cluster's nodes run.
	Archs []string
	// UnschedulableAfter fails a task whose pod stays unschedulable that long.
	UnschedulableAfter time.Duration
}

// Driver runs tasks as pods.
type Driver struct {
	opts   Options
	client kubernetes.Interface
	pods   *podIndex
	reaper *reaper
	logs   *logGate
	// openLog opens the main container's log of a pod (podLog); tests put a log source of their own
	// in its place.
	openLog func(ctx context.Context, pod *corev1.Pod, follow bool) (io.ReadCloser, error)
}

var (
	_ executor.Driver       = (*Driver)(nil)
	_ executor.Follower     = (*Driver)(nil)
	_ executor.GroupRemover = (*Driver)(nil)
	_ executor.EndedRemover = (*Driver)(nil)
)

// New starts the driver's pod informer (pods labelled with the executor's name) and waits for it to sync.
func New(ctx context.Context, cfg *rest.Config, opts Options) (*Driver, error) {
	if opts.UnschedulableAfter == 0 {
		opts.UnschedulableAfter = 5 * time.Minute
	}
	// Pods and Secrets travel as protobuf, as the Kubernetes components' own do: the pod watch and
	// creates cost the apiserver (and the executor) less to encode and decode than JSON.
	cfg = rest.CopyConfig(cfg)
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	d := &Driver{opts: opts, client: c}
	d.openLog = d.podLog
	d.reaper = newReaper(d)
	d.logs = newLogGate(func(node string) { d.pods.wakeNode(node) })
	go d.reaper.run(ctx)
	factory := informers.NewSharedInformerFactoryWithOptions(c, 10*time.Minute, informers.WithNamespace(opts.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = labels.SelectorFromSet(labels.Set{rsv1.LabelExecutor: opts.Executor}).String()
		}),
		informers.WithTransform(slimPod))
	if d.pods, err = newPodIndex(factory.Core().V1().Pods().Informer()); err != nil {
		return nil, err
	}
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return nil, fmt.Errorf("syncing the %v informer", typ)
		}
	}
	return d, nil
}

// slimPod drops what the driver never reads of a pod before the informer keeps it: its managed
// fields (an entry per writer: the executor, the scheduler, the kubelet), the task file a pod
// without a Secret carries in an annotation (up to maxTaskAnnotation, read by the pod's own
// downward-API volume only), and its spec but the node and the volumes (its containers, with
// their commands, environment and mounts, and what the apiserver defaults: the driver reads the
// containers' statuses only, and writes pods by patch, never from a cached copy). With a thousand
// tasks in flight their pods are most of the executor's heap.
func slimPod(obj any) (any, error) {
	if pod, ok := obj.(*corev1.Pod); ok {
		// The object is the informer's own, fresh from the watch (or the create's answer).
		pod.ManagedFields = nil
		delete(pod.Annotations, annotationTask)
		pod.Spec = corev1.PodSpec{NodeName: pod.Spec.NodeName, Volumes: pod.Spec.Volumes}
	}
	return obj, nil
}

// Archs implements executor.Driver.
func (d *Driver) Archs(context.Context) ([]string, error) { return d.opts.Archs, nil }

// names of a task's objects: the pod and its Secret share one.
func podName(et *rsv1.ExecutorTask) string {
	name := "rs-" + string(et.UID)[:8] + "-" + et.Spec.TaskName
	if len(name) > 63 {
		name = name[:63]
	}
	return strings.TrimRight(name, "-")
}

const (
	sharedDir  = toolbox.DefaultDir
	taskDir    = "/.runservice-task"
	mainName   = "main"
	envPrefix  = "env."
	tokenKey   = "token"
	caKey      = "ca.crt"
	taskKey    = "task.json"
	toolboxBin = sharedDir + "/toolbox"
	// annotationTask holds the task file of a pod without a Secret; annotations may take 256 KiB in all.
	annotationTask    = "runservice.dev/task"
	maxTaskAnnotation = 128 << 10
)

// Start implements executor.Driver: the task's Secret, then its pod.
func (d *Driver) Start(ctx context.Context, t *executor.Task) error {
	et := t.ExecutorTask
	spec := &et.Spec.Task
	tf, err := toolbox.ReadTaskFile(t.Dir)
	if err != nil {
		return err
	}
	taskJSON, err := json.Marshal(tf)
	if err != nil {
		return err
	}
	name := podName(et)
	fetch := hasRestore(tf) && len(tf.WorkspaceSources) > 0
	// What stays out of the pod spec goes into the task's Secret: the containers' environment, and the
	// task's own credential (and the CA it trusts) for the init container's workspace fetch, which
	// opens that task's workspace only (never the namespace's executor token, which reads every
	// task's logs). A task with neither gets none (two writes fewer): its task file travels in a
	// pod annotation, mounted through the downward API.
	sec := &taskSecret{name: name, data: map[string][]byte{}}
	env := sec.env(0, t.Env)
	for _, kv := range t.Builtin {
		k, v, _ := strings.Cut(kv, "=")
		env = append(env, corev1.EnvVar{Name: k, Value: v})
	}
	svcEnv := make([][]corev1.EnvVar, len(spec.Containers))
	for i, svc := range spec.Containers[1:] {
		var kvs []string
		for _, e := range append(slices.Clone(et.Spec.Environment), svc.Env...) {
			kvs = append(kvs, e.Name+"="+e.Value)
		}
		svcEnv[i+1] = sec.env(i+1, kvs)
	}
	var installEnv []corev1.EnvVar
	if fetch {
		sec.data[tokenKey] = []byte(t.WorkspaceCredential)
		installEnv = []corev1.EnvVar{{Name: "RUNSERVICE_TOKEN", ValueFrom: sec.ref(tokenKey)}}
		if len(t.WorkspaceCA) > 0 {
			sec.data[caKey] = t.WorkspaceCA
			installEnv = append(installEnv, corev1.EnvVar{Name: "RUNSERVICE_CA", ValueFrom: sec.ref(caKey)})
		}
	}
	withSecret := len(sec.data) > 0 || len(taskJSON) > maxTaskAnnotation ||
		slices.ContainsFunc(tf.Steps, func(s toolbox.Step) bool { return len(s.Env) > 0 })
	taskVolume := corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{{
		Path: taskKey, FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['" + annotationTask + "']"},
	}}}}
	if withSecret {
		sec.data[taskKey] = taskJSON
		secret := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: d.opts.Namespace, Labels: t.Labels},
			Data:       sec.data,
		}
		if _, err := d.client.CoreV1().Secrets(d.opts.Namespace).Create(ctx, secret, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating the task's secret: %w", err)
		}
		taskVolume = corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: name, Items: []corev1.KeyToPath{{Key: taskKey, Path: taskKey}},
		}}
	}

	main := spec.Containers[0]
	mainSC, err := securityContext(&main)
	if err != nil {
		return err
	}
	mounts := []corev1.VolumeMount{{Name: "runservice", MountPath: sharedDir}}
	install := []string{"/toolbox", "install", "--to", sharedDir}
	if fetch {
		if d.opts.ExecutorURL == "" {
			return errors.New("the task restores a workspace, but the executor has no URL pods can reach it at (--pod-endpoint)")
		}
		install = append(install, "--workspace-url", fmt.Sprintf("%s/v1/tasks/%s/workspace", d.opts.ExecutorURL, et.Name))
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: d.opts.Namespace, Labels: t.Labels},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  ptr.To(false),
			EnableServiceLinks:            ptr.To(false),
			NodeName:                      d.opts.NodeName,
			NodeSelector:                  d.opts.NodeSelector,
			TerminationGracePeriodSeconds: ptr.To[int64](10),
			Volumes: []corev1.Volume{
				{Name: "runservice", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "task", VolumeSource: taskVolume},
			},
			InitContainers: []corev1.Container{{
				Name:            "toolbox",
				Image:           d.opts.ToolboxImage,
				ImagePullPolicy: d.opts.ImagePullPolicy,
				Command:         install,
				Env:             installEnv,
				VolumeMounts:    mounts,
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false)},
			}},
			Containers: []corev1.Container{{
				Name:            mainName,
				Image:           main.Image,
				ImagePullPolicy: d.opts.ImagePullPolicy,
				Command:         []string{toolboxBin, "run", "--stream", "--dir", sharedDir, "--task", taskDir + "/" + taskKey},
				Env:             env,
				VolumeMounts:    append(slices.Clone(mounts), corev1.VolumeMount{Name: "task", MountPath: taskDir, ReadOnly: true}),
				SecurityContext: mainSC,
				Resources:       resources(&main),
			}},
		},
	}
	if !withSecret {
		pod.Annotations = map[string]string{annotationTask: string(taskJSON)}
	}
	for i, svc := range spec.Containers[1:] {
		sc, err := securityContext(&svc)
		if err != nil {
			return err
		}
		c := corev1.Container{
			Name:            fmt.Sprintf("service-%d", i+1),
			Image:           svc.Image,
			ImagePullPolicy: d.opts.ImagePullPolicy,
			Command:         svc.Command,
			RestartPolicy:   ptr.To(corev1.ContainerRestartPolicyAlways), // a native sidecar
			SecurityContext: sc,
			Resources:       resources(&svc),
			Env:             svcEnv[i+1],
		}
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, c)
	}
	created, err := d.client.CoreV1().Pods(d.opts.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		if apierrors.IsAlreadyExists(err) {
			// The name is this task's pod (adopted), or another task's whose uid shares its first 8
			// characters (left alone).
			if _, perr := d.pod(ctx, string(et.UID)); perr == nil {
				return fmt.Errorf("%w: pod %s", executor.ErrExists, name)
			}
		}
		return fmt.Errorf("creating the task's pod: %w", err)
	}
	_, _ = slimPod(created)
	d.pods.noteCreated(string(et.UID), created)
	return t.Started()
}

// taskSecret collects the data of a task's Secret.
type taskSecret struct {
	name string
	data map[string][]byte
}

// env puts container c's environment (NAME=value, in order) into the Secret, and returns the
// container's variables that refer to it.
func (s *taskSecret) env(c int, kvs []string) []corev1.EnvVar {
	var env []corev1.EnvVar
	for i, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		key := fmt.Sprintf("%s%d.%d.%s", envPrefix, c, i, k) // keeps the order and allows a name twice
		s.data[key] = []byte(v)
		env = append(env, corev1.EnvVar{Name: k, ValueFrom: s.ref(key)})
	}
	return env
}

func (s *taskSecret) ref(key string) *corev1.EnvVarSource {
	return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: s.name}, Key: key}}
}

func resources(c *rsv1.Container) corev1.ResourceRequirements {
	if c.Resources == nil {
		return corev1.ResourceRequirements{}
	}
	return corev1.ResourceRequirements{Requests: c.Resources.Requests, Limits: c.Resources.Limits}
}

func hasRestore(tf *toolbox.TaskFile) bool {
	return slices.ContainsFunc(tf.Steps, func(s toolbox.Step) bool { return s.Kind == toolbox.StepKindRestoreWorkspace })
}

// securityContext maps a container's user and privileged request; Kubernetes needs numeric ids.
func securityContext(c *rsv1.Container) (*corev1.SecurityContext, error) {
	sc := &corev1.SecurityContext{Privileged: ptr.To(c.IsPrivileged())}
	if !c.IsPrivileged() {
		sc.AllowPrivilegeEscalation = ptr.To(false)
	}
	if c.User != nil {
		uid, gid, hasGID := strings.Cut(*c.User, ":")
		u, err := strconv.ParseInt(uid, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("user %q: the Kubernetes driver needs a numeric uid[:gid]", *c.User)
		}
		sc.RunAsUser = &u
		if hasGID {
			g, err := strconv.ParseInt(gid, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("user %q: the Kubernetes driver needs a numeric uid[:gid]", *c.User)
			}
			sc.RunAsGroup = &g
		}
	}
	return sc, nil
}

// Inspect implements executor.Driver. A pod that can never run (its image cannot be pulled, it
// cannot be scheduled, its node rejected it) counts as ended, with the reason as the message.
func (d *Driver) Inspect(ctx context.Context, uid string) (*executor.State, error) {
	pod, err := d.pod(ctx, uid)
	if err != nil {
		return nil, err
	}
	return d.state(pod), nil
}

// pullErrors are waiting reasons a pod does not recover from by itself.
var pullErrors = []string{"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}

func (d *Driver) state(pod *corev1.Pod) *executor.State {
	for _, cs := range append(slices.Clone(pod.Status.InitContainerStatuses), pod.Status.ContainerStatuses...) {
		if cs.Name == mainName && cs.State.Terminated != nil {
			t := cs.State.Terminated
			st := &executor.State{Started: true, ExitCode: int(t.ExitCode), Message: ""}
			if t.Reason == "OOMKilled" {
				st.Message = "the container ran out of memory"
			}
			return st
		}
		if w := cs.State.Waiting; w != nil && slices.Contains(pullErrors, w.Reason) {
			return &executor.State{ExitCode: -1, Message: fmt.Sprintf("container %s (image %s) cannot start: %s: %s", cs.Name, cs.Image, w.Reason, w.Message)}
		}
		if t := cs.State.Terminated; t != nil && cs.Name == "toolbox" && t.ExitCode != 0 {
			return &executor.State{ExitCode: -1, Message: fmt.Sprintf("the toolbox init container failed (exit code %d): %s", t.ExitCode, strings.TrimSpace(t.Message))}
		}
	}
	switch pod.Status.Phase {
	case corev1.PodFailed, corev1.PodSucceeded:
		msg := strings.TrimSpace(pod.Status.Reason + ": " + pod.Status.Message)
		return &executor.State{ExitCode: -1, Message: "the pod ended before its main container ran: " + strings.Trim(msg, ": ")}
	}
	for _, c := range pod.Status.Conditions {
		if unschedulable(c) && time.Since(pod.CreationTimestamp.Time) >= d.opts.UnschedulableAfter {
			return &executor.State{ExitCode: -1, Message: "the pod cannot be scheduled: " + c.Message}
		}
	}
	return &executor.State{Running: true, Started: mainStarted(pod)}
}

// Wait implements executor.Driver: it looks at the pod when the pod changes, and when its state
// changes by time alone (an unschedulable pod's deadline).
func (d *Driver) Wait(ctx context.Context, uid string) (*executor.State, error) {
	changed, unsubscribe := d.pods.subscribe(uid)
	defer unsubscribe()
	for {
		pod, seen, err := d.find(ctx, uid)
		if err != nil {
			return nil, err
		}
		if st := d.state(pod); !st.Running {
			return st, nil
		}
		if err := await(ctx, changed, d.changesAt(pod, seen)); err != nil {
			return nil, err
		}
	}
}

// Stop implements executor.Driver: the pod's deadline is cut so that the kubelet stops its containers
// (SIGTERM, then SIGKILL after the pod's grace period) and the pod stays to report how they ended.
func (d *Driver) Stop(ctx context.Context, uid string, _ time.Duration) error {
	pod, err := d.pod(ctx, uid)
	if errors.Is(err, executor.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if pod.Spec.NodeName == "" {
		return d.Remove(ctx, uid) // never ran: nothing to report
	}
	patch := []byte(`{"spec":{"activeDeadlineSeconds":1}}`)
	_, err = d.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("stopping pod %s: %w", pod.Name, err)
	}
	return nil
}

// Remove implements executor.Driver: the task's pod and Secret.
func (d *Driver) Remove(ctx context.Context, uid string) error {
	d.pods.forget(uid)
	sel := labels.SelectorFromSet(labels.Set{rsv1.LabelExecutorTaskUID: uid})
	pods := d.pods.cachedPods(uid)
	if len(pods) == 1 && !hasSecret(pods[0]) {
		// A pod known to have no Secret: the secrets' delete would be a write for nothing.
		return d.deletePods(ctx, sel)
	}
	return d.removeSelected(ctx, sel)
}

// RemoveEnded implements executor.EndedRemover: the pod of a task whose final status is written,
// and its Secret, removed with those of the tasks that end within reapWait of it in one request
// (the reaper); a pod the cache does not show ended (a container that cannot start, a task stopped
// on a node that does not answer) is removed on its own, gracefully, as Remove does.
func (d *Driver) RemoveEnded(ctx context.Context, uid string) error {
	pods := d.pods.cachedPods(uid)
	if len(pods) != 1 || !podEnded(pods[0]) {
		return d.Remove(ctx, uid)
	}
	d.pods.forget(uid)
	return d.reaper.remove(ctx, uid, hasSecret(pods[0]))
}

// hasSecret says whether a task's pod mounts its Secret.
func hasSecret(pod *corev1.Pod) bool {
	return slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Secret != nil })
}

// RemoveExecutor implements executor.GroupRemover: every pod and Secret of an executor of the group
// (another one, or this one when its Executor is deleted), waiting until they are gone: each pod
// terminal (its node reported its containers ended) or its object removed after the graceful delete
// (its node confirmed). A pod on a node that does not answer keeps it waiting, until ctx ends.
// Secrets are not waited for: one has no graceful deletion, so it is gone when the delete returns,
// and executors may not list Secrets.
func (d *Driver) RemoveExecutor(ctx context.Context, name string) error {
	set := labels.Set{rsv1.LabelExecutor: name}
	if err := d.removeSelected(ctx, labels.SelectorFromSet(set)); err != nil {
		return err
	}
	for {
		pods, err := d.client.CoreV1().Pods(d.opts.Namespace).List(ctx, metav1.ListOptions{LabelSelector: set.String()})
		if err != nil {
			return fmt.Errorf("listing the pods of executor %s: %w", name, err)
		}
		var running []string
		for _, p := range pods.Items {
			if !podEnded(&p) {
				running = append(running, p.Name)
			}
		}
		if len(running) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pods %v not confirmed gone by their node: %w", running, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// podEnded says whether the kubelet reported that a pod's containers ended for good.
func podEnded(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// deletePods deletes the selected pods gracefully: the API object stays, Terminating, until the
// kubelet stopped the containers and confirms by removing it, so that "gone" means the containers
// are gone. (The apiserver removes a pod that ended, Succeeded or Failed, at once. A grace period
// of 0 removes the object at once, whatever the node still runs.)
func (d *Driver) deletePods(ctx context.Context, sel labels.Selector) error {
	opts := metav1.ListOptions{LabelSelector: sel.String()}
	if err := d.client.CoreV1().Pods(d.opts.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, opts); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pods %s: %w", sel, err)
	}
	return nil
}

func (d *Driver) removeSelected(ctx context.Context, sel labels.Selector) error {
	if err := d.deletePods(ctx, sel); err != nil {
		return err
	}
	return d.deleteSecrets(ctx, sel)
}

func (d *Driver) deleteSecrets(ctx context.Context, sel labels.Selector) error {
	opts := metav1.ListOptions{LabelSelector: sel.String()}
	if err := d.client.CoreV1().Secrets(d.opts.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, opts); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting secrets %s: %w", sel, err)
	}
	return nil
}

// Tasks implements executor.Driver: the tasks the pod index holds.
func (d *Driver) Tasks(context.Context) ([]string, error) {
	return d.pods.indexer.ListIndexFuncValues(byTaskUID), nil
}

// followBackoff spaces the follows of a log that fail or end while its pod runs: 1s, doubling
// up to 30s.
var followBackoff = wait.Backoff{Duration: time.Second, Factor: 2, Steps: 16, Cap: 30 * time.Second}

// mainStarted says whether the main container has a log to follow.
func mainStarted(pod *corev1.Pod) bool {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == mainName {
			return cs.State.Running != nil || cs.State.Terminated != nil
		}
	}
	return false
}

// readLog reads the main container's log into dir, following it while it runs when follow is set:
// how many bytes of log it read, whether the log's node answered (how the request began goes to
// the log gate) and whether the stream then broke (a read of it failed).
func (d *Driver) readLog(ctx context.Context, pod *corev1.Pod, dir string, steps int, lim toolbox.Limits, follow bool) copyResult {
	stream, err := d.openLog(ctx, pod, follow)
	if ctx.Err() == nil {
		d.logs.answered(pod.Spec.NodeName, err)
	}
	if err != nil {
		return copyResult{follow: follow, err: err}
	}
	defer stream.Close()
	r := &countingReader{r: stream}
	err = toolbox.Demux(r, dir, steps, lim)
	return copyResult{follow: follow, read: r.n, began: true, broke: r.err != nil, err: err}
}

// podLog asks the apiserver for the main container's log, which it streams from the pod's node.
func (d *Driver) podLog(ctx context.Context, pod *corev1.Pod, follow bool) (io.ReadCloser, error) {
	return d.client.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{Container: mainName, Follow: follow}).Stream(ctx)
}

// countingReader counts what it read, and keeps how a read of it failed (nil: none did, or EOF).
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

// cutShort says whether the copy in dir misses the end of a step that the main container's
// termination message reports ended: the log the copy was read from stopped early.
func (d *Driver) cutShort(pod *corev1.Pod, dir string, steps int) bool {
	for i, r := range terminationMessage(pod) {
		if r == nil || i >= steps || r.Phase == rsv1.StepPhaseRunning {
			continue
		}
		if have, err := toolbox.ReadResult(dir, i); err != nil || have.Phase == rsv1.StepPhaseRunning {
			return true
		}
	}
	return false
}

// terminationMessage is the step results the main container's termination message holds; none
// when it has none, or one that is not the toolbox's (a simulated pod, an image that replaced it).
func terminationMessage(pod *corev1.Pod) []*toolbox.StepResult {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name != mainName || cs.State.Terminated == nil || cs.State.Terminated.Message == "" {
			continue
		}
		if results, err := toolbox.ParseTermination(cs.State.Terminated.Message); err == nil {
			return results
		}
	}
	return nil
}

// terminationResults writes the step results of the main container's termination message, which
// the kubelet keeps even when the log stream was cut; entries past the task's steps are not its.
func (d *Driver) terminationResults(pod *corev1.Pod, dir string, steps int) error {
	for i, r := range terminationMessage(pod) {
		if r == nil || i >= steps {
			continue
		}
		if have, err := toolbox.ReadResult(dir, i); err == nil && have.Phase != rsv1.StepPhaseRunning {
			continue // the log's copy is whole; the message may have been cut
		}
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		path := toolbox.StepResultPath(dir, i)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
