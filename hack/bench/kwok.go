package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	rsexecutor "runservice.dev/runservice/executor"
	kubedriver "runservice.dev/runservice/executor/driver/kubernetes"
	"runservice.dev/runservice/internal/testenv"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
	"runservice.dev/runservice/pkg/client/informers/externalversions"
)

// The kwok section's shape: executors of one group, runs of parallel one-step tasks.
const (
	kwokExecutors   = 3
	kwokTasksPerRun = 10
	kwokGroup       = "bench"
	// kwokToolboxImage is only a name: kwok runs no container.
	kwokToolboxImage = "runservice-toolbox:dev"
)

// kwokBench measures the Kubernetes driver end to end: Kubernetes-driver executors of one group, in
// this process, run the tasks of fan-out runs as pods (and Secrets) that kwok, simulating one node,
// takes Pending -> Running (100ms) -> Succeeded (300ms). Beside it, against the same apiserver, the
// raw rate of creating as many pods of the same shape from as many writers as executors.
type kwokBench struct {
	env        *testenv.Env
	kube       kubernetes.Interface // the admin's, not counted: the bench's own watches and cleanup
	suffix     string
	runs       int
	submitters int
	managerReq *requests
	// managerExited is closed if the manager stops.
	managerExited <-chan struct{}
}

type kwokResult struct {
	runs, tasks int
	elapsed     time.Duration // first run create to last run Finished
	submittedIn time.Duration
	settled     time.Duration // last run Finished to the last pod and Secret gone
	raw         *rawResult
	manager     requestCounts
	executors   requestCounts
	submitter   requestCounts
	reconciles  reconcileCounts
	podCounts   map[int]int    // pods a task had -> how many tasks had that many
	perExecutor map[string]int // executor -> its tasks
	segments    [moments + 1][]time.Duration
}

func (b *kwokBench) run(ctx context.Context, out io.Writer) error {
	tmp, err := os.MkdirTemp("", "runservice-bench-kwok-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	kw, err := b.env.StartKwok(ctx, filepath.Join(tmp, "kwok"))
	if err != nil {
		return err
	}
	defer kw.Stop()
	if err := waitNodeReady(ctx, b.kube, kw.Node); err != nil {
		return err
	}
	ns, err := newPodNamespace(ctx, b.kube, "bench-kwok-"+b.suffix)
	if err != nil {
		return err
	}
	rawNS, err := newPodNamespace(ctx, b.kube, "bench-kwok-raw-"+b.suffix)
	if err != nil {
		return err
	}

	fmt.Fprintf(os.Stderr, "  ... kwok: raw pod creates, %d pods from %d writers\n", b.runs*kwokTasksPerRun, kwokExecutors)
	raw, err := b.raw(ctx, rawNS, kw.Node)
	if err != nil {
		return err
	}
	// The raw pods go before the service starts, so that kwok's writes for them do not overlap it.
	if err := removePods(ctx, b.kube, rawNS); err != nil {
		return err
	}

	fmt.Fprintf(os.Stderr, "  ... kwok: %d runs x %d tasks through %d Kubernetes-driver executors\n", b.runs, kwokTasksPerRun, kwokExecutors)
	res, err := b.service(ctx, ns, kw.Node, tmp)
	if err != nil {
		return err
	}
	res.raw = raw
	return printKwok(out, res)
}

// service runs the executors and the runs, and counts what they wrote.
func (b *kwokBench) service(ctx context.Context, ns, node, tmp string) (*kwokResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	tl := &timeline{at: map[string]*[moments]time.Time{}}
	pw, err := watchPods(ctx, &wg, b.kube, ns, tl)
	if err != nil {
		return nil, err
	}
	admin, err := versioned.NewForConfig(b.env.Config)
	if err != nil {
		return nil, err
	}
	if err := watchExecutorTasks(ctx, &wg, admin, ns, tl); err != nil {
		return nil, err
	}

	// The executors, each with its own client and connection as its own process would have; their
	// requests are counted together.
	exReq := newRequests()
	exited := make(chan error, kwokExecutors)
	exCtx, stopExecutors := context.WithCancel(ctx)
	running := 0
	defer func() {
		stopExecutors()
		timeout := time.After(30 * time.Second)
		for ; running > 0; running-- {
			select {
			case <-exited:
			case <-timeout:
				fmt.Fprintf(os.Stderr, "  ... kwok: %d executors did not stop within 30s\n", running)
				return
			}
		}
	}()
	for i := range kwokExecutors {
		name := fmt.Sprintf("bench-kwok-%d", i)
		cfg := clientConfig(b.env.Config, exReq)
		drv, err := kubedriver.New(exCtx, cfg, kubedriver.Options{
			Namespace: ns, Executor: name, ToolboxImage: kwokToolboxImage, NodeName: node,
			Archs: []string{runtime.GOARCH},
		})
		if err != nil {
			return nil, fmt.Errorf("starting the kubernetes driver of executor %s: %w", name, err)
		}
		running++
		go func() {
			err := rsexecutor.Run(exCtx, cfg, drv, rsexecutor.Options{
				Name: name, Namespace: ns, Driver: rsv1.DriverKubernetes, Group: kwokGroup,
				Listen: "127.0.0.1:0", InsecureHTTP: true, DataDir: filepath.Join(tmp, name), ObjectStore: "", // no logs from simulated pods
				LeaseDuration: leaseDuration, RenewInterval: leaseRenewEvery,
			})
			if err == nil {
				err = errors.New("it returned")
			}
			exited <- fmt.Errorf("executor %s stopped: %w", name, err)
		}()
	}

	subReq := newRequests()
	sub, err := versioned.NewForConfig(clientConfig(b.env.Config, subReq))
	if err != nil {
		return nil, fmt.Errorf("submitter client: %w", err)
	}
	if err := waitExecutorsReady(ctx, sub, ns, kwokExecutors); err != nil {
		return nil, err
	}
	t := newTracker(b.runs)
	if err := watchRuns(ctx, sub, ns, t, &wg); err != nil {
		return nil, err
	}

	mgrBefore, exBefore, subBefore := b.managerReq.snapshot(), exReq.snapshot(), subReq.snapshot()
	recBefore, err := reconciles()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	submitErr := make(chan error, 1)
	tasks := benchRun(ns, "", kwokTasksPerRun).Spec.Tasks
	go func() {
		submitErr <- (&serviceBench{ns: ns, runs: b.runs, submitters: b.submitters}).submit(ctx, sub, tasks, t)
	}()
	if err := b.wait(ctx, t, submitErr, exited, &running); err != nil {
		return nil, withFailedTasks(ctx, admin, ns, err)
	}
	end, lastCreated := t.last()

	// The executors remove a task's pod and Secret after its final status, so after the run may be
	// Finished: their writes count once they are gone.
	if err := b.waitRemoved(ctx, pw, ns); err != nil {
		return nil, err
	}
	settled := time.Since(end)
	mgrAfter, exAfter, subAfter := b.managerReq.snapshot(), exReq.snapshot(), subReq.snapshot()
	recAfter, err := reconciles()
	if err != nil {
		return nil, err
	}

	res := &kwokResult{
		runs:        b.runs,
		tasks:       b.runs * kwokTasksPerRun,
		elapsed:     end.Sub(start),
		submittedIn: lastCreated.Sub(start),
		settled:     settled,
		manager:     mgrAfter.since(mgrBefore),
		executors:   exAfter.since(exBefore),
		submitter:   subAfter.since(subBefore),
		reconciles:  recAfter.since(recBefore),
		perExecutor: map[string]int{},
		segments:    tl.segments(t),
	}
	var want []string
	for i := range b.runs {
		for _, task := range tasks {
			want = append(want, fmt.Sprintf("run-%05d/%s", i, task.Name))
		}
	}
	res.podCounts = pw.podsPerTask(want)
	ets, err := sub.RunserviceV1alpha1().ExecutorTasks(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing executor tasks: %w", err)
	}
	for _, et := range ets.Items {
		res.perExecutor[et.Spec.Executor]++
	}
	return res, nil
}

// wait waits until every run is Finished, and fails on the first failed run, submission, or
// executor or manager that stopped.
func (b *kwokBench) wait(ctx context.Context, t *tracker, submitErr <-chan error, exited <-chan error, running *int) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastReport := time.Now()
	for {
		select {
		case <-t.done:
			return nil
		case err := <-submitErr:
			if err != nil {
				return err
			}
			submitErr = nil
		case err := <-exited:
			*running--
			return err
		case <-b.managerExited:
			return errors.New("the manager stopped during the benchmark")
		case <-ctx.Done():
			n, _ := t.progress()
			return fmt.Errorf("%d of %d runs finished before the timeout: %w", n, b.runs, ctx.Err())
		case <-tick.C:
			n, failed := t.progress()
			if failed != nil {
				return failed
			}
			if time.Since(lastReport) >= 5*time.Second {
				fmt.Fprintf(os.Stderr, "  ... kwok: %d/%d runs finished\n", n, b.runs)
				lastReport = time.Now()
			}
		}
	}
}

// withFailedTasks adds to err what the runs say of their failed tasks, and their ExecutorTasks.
func withFailedTasks(ctx context.Context, rs versioned.Interface, ns string, err error) error {
	runs, lerr := rs.RunserviceV1alpha1().Runs(ns).List(ctx, metav1.ListOptions{})
	if lerr != nil {
		return err
	}
	var failed []string
	for _, run := range runs.Items {
		for _, ts := range run.Status.Tasks {
			if ts.Phase != rsv1.TaskPhaseFailed && ts.Phase != rsv1.TaskPhaseStopped {
				continue
			}
			line := fmt.Sprintf("%s/%s on %s: %s %s: %s", run.Name, ts.Name, ts.Executor, ts.Phase, ts.Reason, ts.Message)
			if ts.ExecutorTask != "" {
				if et, err := rs.RunserviceV1alpha1().ExecutorTasks(ns).Get(ctx, ts.ExecutorTask, metav1.GetOptions{}); err == nil {
					line += fmt.Sprintf(" (its ExecutorTask: %s: %s)", et.Status.Phase, et.Status.Message)
				} else {
					line += fmt.Sprintf(" (its ExecutorTask: %v)", err)
				}
			}
			failed = append(failed, line)
		}
	}
	if len(failed) == 0 {
		return err
	}
	const most = 5
	more := ""
	if len(failed) > most {
		more = fmt.Sprintf(" (and %d more)", len(failed)-most)
		failed = failed[:most]
	}
	return fmt.Errorf("%w; failed tasks: %s%s", err, strings.Join(failed, "; "), more)
}

// waitRemoved waits until the task's pods and Secrets are gone.
func (b *kwokBench) waitRemoved(ctx context.Context, pw *podWatch, ns string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	sel := metav1.ListOptions{LabelSelector: rsv1.LabelExecutorTaskUID}
	for {
		pods := len(pw.store.ListKeys())
		secrets, err := b.kube.CoreV1().Secrets(ns).List(ctx, sel)
		if err == nil && pods == 0 && len(secrets.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			n := -1
			if secrets != nil {
				n = len(secrets.Items)
			}
			return fmt.Errorf("waiting for the executors to remove their pods and secrets (%d pods, %d secrets left, last error %v): %w", pods, n, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// rawResult is what the raw pods measured.
type rawResult struct {
	create *baselineResult // first create to the last create returned
	// kwok's own pace: first create to the last pod seen Succeeded, and each pod's time from seen to
	// seen Succeeded.
	lifeElapsed time.Duration
	life        []time.Duration
	// usage, when measured (the cluster scenario), is the processes' CPU over the raw pods' life.
	usage *usage
}

func (r *rawResult) lifeRate() float64 { return float64(r.create.objects) / r.lifeElapsed.Seconds() }

// raw creates as many pods as the service has tasks, shaped like the driver's and bound to the
// simulated node, from one client per executor, and times them from the first create to the last
// create returned; then waits until kwok took them all to Succeeded, which is the most the service
// can do with this kwok.
func (b *kwokBench) raw(ctx context.Context, ns, node string) (*rawResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	tl := &timeline{at: map[string]*[moments]time.Time{}}
	if _, err := watchPods(ctx, &wg, b.kube, ns, tl); err != nil {
		return nil, err
	}
	reqs := newRequests()
	var cs []kubernetes.Interface
	for range kwokExecutors {
		c, err := kubernetes.NewForConfig(clientConfig(b.env.Config, reqs))
		if err != nil {
			return nil, fmt.Errorf("raw pods client: %w", err)
		}
		cs = append(cs, c)
	}
	pass := func(first, n int) error {
		var next atomic.Int64
		next.Store(int64(first))
		errs := make(chan error, len(cs))
		var wg sync.WaitGroup
		for _, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= first+n || ctx.Err() != nil {
						return
					}
					pod := rawPod(ns, node, i)
					if _, err := c.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
						errs <- fmt.Errorf("raw: creating pod %s: %w", pod.Name, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("raw pods: %w", err)
		}
		return nil
	}
	n := b.runs * kwokTasksPerRun
	// A warm-up pass, untimed, like the baseline's.
	warmup := max(20, n/10)
	if err := pass(0, warmup); err != nil {
		return nil, err
	}
	before := reqs.snapshot()
	start := time.Now()
	if err := pass(warmup, n); err != nil {
		return nil, err
	}
	res := &rawResult{create: &baselineResult{objects: n, elapsed: time.Since(start), writes: reqs.snapshot().since(before)}}

	wait, stop := context.WithTimeout(ctx, 2*time.Minute)
	defer stop()
	for {
		done, last := 0, time.Time{}
		res.life = res.life[:0]
		tl.mu.Lock()
		for i := warmup; i < warmup+n; i++ {
			if m := tl.at[rawKey(i)]; m != nil && !m[podDone].IsZero() {
				done++
				res.life = append(res.life, m[podDone].Sub(m[podSeen]))
				if m[podDone].After(last) {
					last = m[podDone]
				}
			}
		}
		tl.mu.Unlock()
		if done == n {
			res.lifeElapsed = last.Sub(start)
			res.life = sortedCopy(res.life)
			return res, nil
		}
		select {
		case <-wait.Done():
			return nil, fmt.Errorf("waiting for kwok to take the raw pods to Succeeded (%d of %d are): %w", done, n, wait.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// rawKey is the run/task of raw pod i.
func rawKey(i int) string {
	return fmt.Sprintf("raw-%05d/t%d", i/kwokTasksPerRun, i%kwokTasksPerRun)
}

// rawPod is a pod of the driver's shape for a task without environment (toolbox init container, main
// container, the task file in an annotation mounted through the downward API), of a task that does
// not exist.
func rawPod(ns, node string, i int) *corev1.Pod {
	name := fmt.Sprintf("raw-%05d", i)
	run, task, _ := strings.Cut(rawKey(i), "/")
	mounts := []corev1.VolumeMount{{Name: "runservice", MountPath: "/.runservice"}}
	noEscalation := &corev1.SecurityContext{Privileged: ptr.To(false), AllowPrivilegeEscalation: ptr.To(false)}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{
			rsv1.LabelExecutor:        "bench-raw",
			rsv1.LabelRun:             run,
			rsv1.LabelTask:            task,
			rsv1.LabelExecutorTaskUID: fmt.Sprintf("00000000-0000-0000-0000-%012d", i),
		}, Annotations: map[string]string{
			"runservice.dev/task": `{"steps":[{"name":"` + task + `","kind":"run","command":"true"}]}`,
		}},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  ptr.To(false),
			EnableServiceLinks:            ptr.To(false),
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr.To[int64](10),
			Volumes: []corev1.Volume{
				{Name: "runservice", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "task", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{{
					Path: "task.json", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['runservice.dev/task']"},
				}}}}},
			},
			InitContainers: []corev1.Container{{
				Name:            "toolbox",
				Image:           kwokToolboxImage,
				Command:         []string{"/toolbox", "install", "--to", "/.runservice"},
				VolumeMounts:    mounts,
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false)},
			}},
			Containers: []corev1.Container{{
				Name:    "main",
				Image:   "busybox:1.36",
				Command: []string{"/.runservice/toolbox", "run", "--stream", "--dir", "/.runservice", "--task", "/.runservice-task/task.json"},
				Env: []corev1.EnvVar{
					{Name: "RUNSERVICE_RUN", Value: run},
					{Name: "RUNSERVICE_TASK", Value: task},
				},
				VolumeMounts:    append(slices.Clone(mounts), corev1.VolumeMount{Name: "task", MountPath: "/.runservice-task", ReadOnly: true}),
				SecurityContext: noEscalation,
			}},
		},
	}
}

// removePods deletes the namespace's pods at once (grace period 0: they are the bench's own) and
// waits until they are gone. A busy apiserver may answer the deletion of thousands of pods with a
// timeout, or reset the request's stream, while it goes on deleting them: the deletion (idempotent)
// is then asked again, a few times.
func removePods(ctx context.Context, kube kubernetes.Interface, ns string) error {
	var err error
	for range 5 {
		err = kube.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{})
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("deleting the pods of %s: %w", ns, err)
	}
	return waitNoPods(ctx, kube, ns)
}

// The moments of a task's life the bench's watches see, in order.
const (
	etSeen  = iota // its ExecutorTask appeared (the manager scheduled it)
	podSeen        // its pod appeared (the executor started it)
	podDone        // its pod Succeeded (kwok)
	etFinal        // its ExecutorTask's status became final (the executor ended it)
	moments
)

// timeline records when the bench's watches first saw each moment of each task (run/task).
type timeline struct {
	mu sync.Mutex
	at map[string]*[moments]time.Time
}

func (tl *timeline) mark(key string, moment int, at time.Time) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	m := tl.at[key]
	if m == nil {
		m = &[moments]time.Time{}
		tl.at[key] = m
	}
	if m[moment].IsZero() {
		m[moment] = at
	}
}

// segments returns, for each step of a task's life, its durations over the tasks, sorted: created
// (the run's create returned) -> etSeen -> podSeen -> podDone -> etFinal -> the run seen Finished.
func (tl *timeline) segments(t *tracker) [moments + 1][]time.Duration {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	var out [moments + 1][]time.Duration
	for key, m := range tl.at {
		run, _, _ := strings.Cut(key, "/")
		points := append([]time.Time{t.created[run]}, m[:]...)
		points = append(points, t.finishedR[run])
		for i := range moments + 1 {
			if !points[i].IsZero() && !points[i+1].IsZero() {
				out[i] = append(out[i], points[i+1].Sub(points[i]))
			}
		}
	}
	for i := range out {
		out[i] = sortedCopy(out[i])
	}
	return out
}

// watchExecutorTasks marks when each ExecutorTask appeared and became final.
func watchExecutorTasks(ctx context.Context, wg *sync.WaitGroup, rs versioned.Interface, ns string, tl *timeline) error {
	factory := externalversions.NewSharedInformerFactoryWithOptions(rs, 0, externalversions.WithNamespace(ns))
	inf := factory.Runservice().V1alpha1().ExecutorTasks().Informer()
	seen := func(obj any) {
		et, ok := obj.(*rsv1.ExecutorTask)
		if !ok {
			return
		}
		now, key := time.Now(), et.Spec.RunName+"/"+et.Spec.TaskName
		tl.mark(key, etSeen, now)
		if et.Status.Phase.IsFinal() {
			tl.mark(key, etFinal, now)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    seen,
		UpdateFunc: func(_, obj any) { seen(obj) },
	}); err != nil {
		return fmt.Errorf("watching executor tasks: %w", err)
	}
	factory.Start(ctx.Done())
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		factory.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return errors.New("the watch on executor tasks did not sync")
	}
	return nil
}

// podWatch records every pod created in a namespace, by task (run/task), while ctx lasts.
type podWatch struct {
	store cache.Store // the pods that exist

	mu      sync.Mutex
	created map[string]map[types.UID]bool // run/task -> pod uids
}

func watchPods(ctx context.Context, wg *sync.WaitGroup, kube kubernetes.Interface, ns string, tl *timeline) (*podWatch, error) {
	pw := &podWatch{created: map[string]map[types.UID]bool{}}
	factory := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(ns))
	inf := factory.Core().V1().Pods().Informer()
	seen := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		now, key := time.Now(), pod.Labels[rsv1.LabelRun]+"/"+pod.Labels[rsv1.LabelTask]
		tl.mark(key, podSeen, now)
		if pod.Status.Phase == corev1.PodSucceeded {
			tl.mark(key, podDone, now)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			seen(obj)
			pod, ok := obj.(*corev1.Pod)
			if !ok {
				return
			}
			key := pod.Labels[rsv1.LabelRun] + "/" + pod.Labels[rsv1.LabelTask]
			pw.mu.Lock()
			defer pw.mu.Unlock()
			if pw.created[key] == nil {
				pw.created[key] = map[types.UID]bool{}
			}
			pw.created[key][pod.UID] = true
		},
		UpdateFunc: func(_, obj any) { seen(obj) },
	}); err != nil {
		return nil, fmt.Errorf("watching pods: %w", err)
	}
	pw.store = inf.GetStore()
	factory.Start(ctx.Done())
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		factory.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, errors.New("the watch on pods did not sync")
	}
	return pw, nil
}

// podsPerTask returns how many of the tasks had 0, 1, 2... pods; pods of other tasks count as tasks
// of their own.
func (pw *podWatch) podsPerTask(tasks []string) map[int]int {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	out := map[int]int{}
	seen := map[string]bool{}
	for _, key := range tasks {
		seen[key] = true
		out[len(pw.created[key])]++
	}
	for key, uids := range pw.created {
		if !seen[key] {
			out[len(uids)]++
		}
	}
	return out
}

func waitNodeReady(ctx context.Context, kube kubernetes.Interface, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		node, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for kwok to report node %s Ready (last error %v): %w", name, err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// newPodNamespace creates a namespace with the "default" ServiceAccount, which the ServiceAccount
// admission wants for every pod and which no controller creates here.
func newPodNamespace(ctx context.Context, kube kubernetes.Interface, name string) (string, error) {
	ns, err := newNamespace(ctx, kube, name)
	if err != nil {
		return "", err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating the default service account of %s: %w", ns, err)
	}
	return ns, nil
}

func printKwok(out io.Writer, r *kwokResult) error {
	secs := r.elapsed.Seconds()
	tasksPerSec := float64(r.tasks) / secs
	var spread []string
	for _, name := range sortedKeys(r.perExecutor) {
		spread = append(spread, fmt.Sprintf("%d", r.perExecutor[name]))
	}
	fmt.Fprintf(out, "kwok: %d tasks (%d runs x %d) through %d executors in %.2fs = %.1f tasks/s, first run create to last run Finished (tasks per executor %s; the last create returned at %.2fs; pods and secrets gone %.2fs after)\n",
		r.tasks, r.runs, kwokTasksPerRun, kwokExecutors, secs, tasksPerSec, strings.Join(spread, "/"), r.submittedIn.Seconds(), r.settled.Seconds())
	raw := r.raw
	fmt.Fprintf(out, "kwok raw: pod create %.0f pods/s (%d pods of the driver's shape, %d writers); kwok took them to Succeeded in %.2fs = %.1f pods/s (pod seen -> Succeeded p50 %s p99 %s; its stages say 400ms)\n",
		raw.create.rate(), raw.create.objects, kwokExecutors, raw.lifeElapsed.Seconds(), raw.lifeRate(), ms(percentile(raw.life, 0.5)), ms(percentile(raw.life, 0.99)))
	fmt.Fprintf(out, "kwok ratio: %.3f (service %.1f tasks/s / raw pod create %.0f pods/s); against kwok's own pace with the raw pods, %.1f pods/s: %.3f\n",
		tasksPerSec/raw.create.rate(), tasksPerSec, raw.create.rate(), raw.lifeRate(), tasksPerSec/raw.lifeRate())

	names := [moments + 1]string{
		"run created -> ExecutorTask seen (manager)",
		"-> pod seen (executor: Running write, pod, and a Secret if the task has an environment)",
		"-> pod Succeeded (kwok: 400ms)",
		"-> ExecutorTask final (executor)",
		"-> run Finished (manager)",
	}
	var segs []string
	for i, ds := range r.segments {
		segs = append(segs, fmt.Sprintf("%s p50 %s p99 %s", names[i], ms(percentile(ds, 0.5)), ms(percentile(ds, 0.99))))
	}
	fmt.Fprintf(out, "kwok task life, as the bench's watches saw it: %s\n", strings.Join(segs, "; "))

	var bad []string
	for _, n := range sortedKeys(r.podCounts) {
		if n != 1 {
			bad = append(bad, fmt.Sprintf("%d with %d", r.podCounts[n], n))
		}
	}
	podLine := fmt.Sprintf("every one of the %d tasks had exactly one pod", r.tasks)
	if len(bad) > 0 {
		podLine = fmt.Sprintf("%d tasks had exactly one pod, %s: WRONG", r.podCounts[1], strings.Join(bad, ", "))
	}
	fmt.Fprintf(out, "kwok pods per task: %s\n", podLine)

	per := func(n int) float64 { return float64(n) / float64(r.tasks) }
	byRes := func(rc requestCounts) string {
		var parts []string
		for _, rw := range rc.byResource() {
			parts = append(parts, fmt.Sprintf("%s %.2f", rw.resource, per(rw.writes)))
		}
		return strings.Join(parts, ", ")
	}
	mgrW, exW, subW := r.manager.totalWrites(), r.executors.totalWrites(), r.submitter.totalWrites()
	fmt.Fprintf(out, "kwok API writes per task: executors %.2f (%s), manager %.2f (%s), total %.2f (with the run creates, %.2f; kwok's own pod status writes not counted)\n",
		per(exW), byRes(r.executors), per(mgrW), byRes(r.manager), per(mgrW+exW+subW), per(subW))
	printRequests(out, "executors", r.executors, r.tasks)
	printRequests(out, "manager", r.manager, r.tasks)
	printRequests(out, "run submitter", r.submitter, r.tasks)
	var recs []string
	for _, n := range sortedKeys(r.reconciles) {
		if rc := r.reconciles[n]; rc.total > 0 {
			recs = append(recs, fmt.Sprintf("%s %.2f/task (%d errors)", n, per(rc.total), rc.errors))
		}
	}
	fmt.Fprintf(out, "kwok reconciles: %s\n", strings.Join(recs, ", "))
	if len(bad) > 0 {
		return fmt.Errorf("kwok: not every task had exactly one pod: %s", strings.Join(bad, ", "))
	}
	return nil
}

func sortedKeys[K interface{ ~int | ~string }, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}
