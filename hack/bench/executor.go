package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/testenv"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
	"runservice.dev/runservice/pkg/client/informers/externalversions"
)

// Lease timing of the bench's executors: renewed every second, like the brief of a fast executor.
const (
	leaseRenewEvery = time.Second
	leaseDuration   = 5 * time.Second
)

// executor plays a fast executor through the API, as its own process would: it registers an
// Executor, renews its Lease, watches the ExecutorTasks labelled with its name and, for each new one,
// reports Running and then Success at once, from `workers` goroutines.
type executor struct {
	name, ns string
	workers  int
	// endpoint, when set, is the Executor's spec.endpoint: where the manager fetches its logs from
	// (without one, the fetcher marks every task's logs lost at once).
	endpoint string
	// hold, when set, says which tasks (by name in their run) stay Running: reported Running and
	// never ended, as a long task is.
	hold    func(task string) bool
	rs      versioned.Interface
	kube    kubernetes.Interface
	tracker *tracker

	queue workqueue.TypedInterface[string]
	store cache.Store

	errMu sync.Mutex
	err   error // the first error that stops the executor
}

func newExecutor(cfg *rest.Config, ns, name string, workers int, t *tracker) (*executor, error) {
	rs, err := versioned.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("executor %s: runservice client: %w", name, err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("executor %s: kubernetes client: %w", name, err)
	}
	return &executor{name: name, ns: ns, workers: workers, rs: rs, kube: kube, tracker: t}, nil
}

// startFakeExecutors starts n executors named prefix-<i> in ns (configure, when set, sets each up
// before it starts), and returns them with a client for the runs once the manager reports them
// Ready, its webhook admits runs and t follows the namespace's runs.
func startFakeExecutors(ctx context.Context, wg *sync.WaitGroup, env *testenv.Env, ns, prefix string, n, workers int, t *tracker, configure func(*executor)) ([]*executor, versioned.Interface, error) {
	var exs []*executor
	for i := range n {
		ex, err := newExecutor(clientConfig(env.Config, newRequests()), ns, fmt.Sprintf("%s-%d", prefix, i), workers, t)
		if err != nil {
			return nil, nil, err
		}
		if configure != nil {
			configure(ex)
		}
		if err := ex.start(ctx, wg); err != nil {
			return nil, nil, err
		}
		exs = append(exs, ex)
	}
	sub, err := versioned.NewForConfig(env.Config)
	if err != nil {
		return nil, nil, err
	}
	if err := waitExecutorsReady(ctx, sub, ns, n); err != nil {
		return nil, nil, err
	}
	if err := waitWebhook(ctx, sub, ns); err != nil {
		return nil, nil, err
	}
	if err := watchRuns(ctx, sub, ns, t, wg); err != nil {
		return nil, nil, err
	}
	return exs, sub, nil
}

// start registers the executor, takes its Lease and starts watching and working until ctx ends.
// It returns once the executor's watch has synced.
func (e *executor) start(ctx context.Context, wg *sync.WaitGroup) error {
	ex := &rsv1.Executor{
		ObjectMeta: metav1.ObjectMeta{Name: e.name, Namespace: e.ns},
		Spec:       rsv1.ExecutorSpec{Driver: rsv1.DriverDocker, Permanent: true, Archs: []string{"amd64"}, Endpoint: e.endpoint},
	}
	if _, err := e.rs.RunserviceV1alpha1().Executors(e.ns).Create(ctx, ex, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("registering executor %s: %w", e.name, err)
	}
	lease, err := e.kube.CoordinationV1().Leases(e.ns).Create(ctx, e.renewed(&coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: e.name, Namespace: e.ns, Labels: map[string]string{rsv1.LabelExecutor: e.name}},
	}), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating lease of executor %s: %w", e.name, err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.heartbeat(ctx, lease)
	}()

	factory := externalversions.NewSharedInformerFactoryWithOptions(e.rs, 0,
		externalversions.WithNamespace(e.ns),
		externalversions.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = labels.Set{rsv1.LabelExecutor: e.name}.String()
		}))
	informer := factory.Runservice().V1alpha1().ExecutorTasks().Informer()
	e.queue = workqueue.NewTyped[string]()
	e.store = informer.GetStore()
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			et, ok := obj.(*rsv1.ExecutorTask)
			if !ok || et.Status.Phase != "" {
				return
			}
			// When the manager's create reached this executor: the end of the task's scheduling.
			e.tracker.scheduled(et.Spec.RunName, et.Spec.TaskName, time.Now())
			e.queue.Add(et.Name)
		},
	}); err != nil {
		return fmt.Errorf("executor %s: watching tasks: %w", e.name, err)
	}
	factory.Start(ctx.Done())
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		e.queue.ShutDown()
		factory.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return fmt.Errorf("executor %s: its task watch did not sync", e.name)
	}
	for range e.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e.work(ctx) {
			}
		}()
	}
	return nil
}

func (e *executor) renewed(lease *coordinationv1.Lease) *coordinationv1.Lease {
	now := metav1.NowMicro()
	lease.Spec.HolderIdentity = ptr.To(e.name)
	lease.Spec.LeaseDurationSeconds = ptr.To(int32(leaseDuration / time.Second))
	lease.Spec.RenewTime = &now
	return lease
}

// heartbeat renews the Lease every leaseRenewEvery; a failed renewal is retried at the next tick
// (the Lease lives leaseDuration, several ticks).
func (e *executor) heartbeat(ctx context.Context, lease *coordinationv1.Lease) {
	tick := time.NewTicker(leaseRenewEvery)
	defer tick.Stop()
	leases := e.kube.CoordinationV1().Leases(e.ns)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		updated, err := leases.Update(ctx, e.renewed(lease.DeepCopy()), metav1.UpdateOptions{})
		if err == nil {
			lease = updated
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if apierrors.IsConflict(err) {
			if fresh, gerr := leases.Get(ctx, e.name, metav1.GetOptions{}); gerr == nil {
				lease = fresh
			}
		}
	}
}

// work reports one task; it returns false once the queue is shut down.
func (e *executor) work(ctx context.Context) bool {
	name, shutdown := e.queue.Get()
	if shutdown {
		return false
	}
	defer e.queue.Done(name)
	if err := e.run(ctx, name); err != nil && ctx.Err() == nil {
		e.fail(err)
	}
	return true
}

// run reports the task Running, then Success, each as one status write of the latest object.
func (e *executor) run(ctx context.Context, name string) error {
	obj, ok, err := e.store.GetByKey(e.ns + "/" + name)
	if err != nil || !ok {
		return fmt.Errorf("executor %s: task %s is not in its watch cache (%v)", e.name, name, err)
	}
	et := obj.(*rsv1.ExecutorTask).DeepCopy()
	tasks := e.rs.RunserviceV1alpha1().ExecutorTasks(e.ns)
	write := func(phase rsv1.TaskPhase) error {
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			report(et, phase)
			updated, err := tasks.UpdateStatus(ctx, et, metav1.UpdateOptions{})
			if apierrors.IsConflict(err) {
				if fresh, gerr := tasks.Get(ctx, name, metav1.GetOptions{}); gerr == nil {
					et = fresh
				}
			}
			if err != nil {
				return err
			}
			et = updated
			return nil
		})
	}
	if err := write(rsv1.TaskPhaseRunning); err != nil {
		return fmt.Errorf("executor %s: reporting %s Running: %w", e.name, name, err)
	}
	if e.hold != nil && e.hold(et.Spec.TaskName) {
		return nil
	}
	if err := write(rsv1.TaskPhaseSuccess); err != nil {
		return fmt.Errorf("executor %s: reporting %s Success: %w", e.name, name, err)
	}
	e.tracker.finished(et.Spec.RunName, et.Spec.TaskName, time.Now())
	return nil
}

// report sets the status an executor reports in phase, with one step, like a one-step task.
func report(et *rsv1.ExecutorTask, phase rsv1.TaskPhase) {
	now := metav1.Now()
	if et.Status.StartTime == nil {
		et.Status.StartTime = &now
	}
	et.Status.Phase = phase
	step := rsv1.StepStatus{Name: "step-0", Phase: rsv1.StepPhaseRunning, StartTime: et.Status.StartTime}
	if phase.IsFinal() {
		et.Status.EndTime = &now
		step.Phase, step.ExitCode, step.EndTime = rsv1.StepPhase(phase), ptr.To(int32(0)), &now
	}
	et.Status.Steps = []rsv1.StepStatus{step}
}

func (e *executor) fail(err error) {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	if e.err == nil {
		e.err = err
	}
}

func (e *executor) failure() error {
	e.errMu.Lock()
	defer e.errMu.Unlock()
	return e.err
}
