package testenv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
)

// StartManager starts a manager (controllers and webhooks) in this process, with ManagerOptions
// changed by change, and returns once its webhook serves (without a webhook, WebhookPort 0: once
// its cache has synced). stop stops it and waits for its end.
func (e *Env) StartManager(change func(*manager.Options)) (stop func(), err error) {
	return e.StartManagerAs(e.Config, change)
}

// StartManagerAs is StartManager with the manager's requests made with cfg: as another user than
// the tests' admin.
func (e *Env) StartManagerAs(cfg *rest.Config, change func(*manager.Options)) (stop func(), err error) {
	opts := e.ManagerOptions()
	if change != nil {
		change(&opts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	mgr, err := manager.New(ctx, cfg, opts)
	if err != nil {
		cancel()
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	stop = func() { cancel(); <-done }
	if opts.WebhookPort == 0 {
		// (GetWebhookServer would add a server of its own.)
		if !mgr.GetCache().WaitForCacheSync(ctx) {
			stop()
			return nil, errors.New("the manager stopped before its cache synced")
		}
		return stop, nil
	}
	started := mgr.GetWebhookServer().StartedChecker()
	req, _ := http.NewRequest(http.MethodGet, "/", nil) // a constant request: cannot fail
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		select {
		case err := <-done:
			return false, fmt.Errorf("the manager stopped: %w", err)
		default:
		}
		return started(req) == nil, nil
	})
	if err != nil {
		stop()
		return nil, fmt.Errorf("waiting for the manager's webhook: %w", err)
	}
	return stop, nil
}

// Archiving returns the change to ManagerOptions that makes a manager archive into a file:// store
// under dir (runs that ask with runservice.dev/archive-after, the others an hour after their end)
// and serve the archive API, registered with the control plane; and the store's URL.
func (e *Env) Archiving(ctx context.Context, dir string) (change func(*manager.Options), storeURL string, err error) {
	api, err := e.ArchiveAPI(ctx)
	if err != nil {
		return nil, "", err
	}
	storeURL = objectstore.FileURL(filepath.Join(dir, "store"))
	return func(o *manager.Options) {
		o.ObjectStore = storeURL
		o.ArchiveAPI, o.ArchiveIndexDir = api, filepath.Join(dir, "index")
		o.Controllers.Archive, o.Controllers.ArchiveAfter = true, time.Hour
	}, storeURL, nil
}

// StartFakeExecutor registers a permanent Docker Executor named name in ns and renews its Lease
// until the test ends, as a live executor would; the test then plays its part by reporting on its
// ExecutorTasks (ReportTask). For tests of what reads runs, not of executors.
func StartFakeExecutor(t testing.TB, c client.Client, ns, name string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ex := &rsv1.Executor{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       rsv1.ExecutorSpec{Driver: rsv1.DriverDocker, Permanent: true, Archs: []string{"amd64"}},
	}
	if err := c.Create(ctx, ex); err != nil && !apierrors.IsAlreadyExists(err) {
		cancel()
		t.Fatalf("registering executor %s: %v", name, err)
	}
	renew := func() error {
		now := metav1.NowMicro()
		lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		err := c.Get(ctx, client.ObjectKeyFromObject(lease), lease)
		lease.Labels = map[string]string{rsv1.LabelExecutor: name}
		lease.Spec.HolderIdentity = ptr.To(name)
		lease.Spec.LeaseDurationSeconds = ptr.To[int32](10)
		lease.Spec.RenewTime = &now
		if apierrors.IsNotFound(err) {
			return c.Create(ctx, lease)
		}
		if err != nil {
			return err
		}
		return c.Update(ctx, lease)
	}
	if err := renew(); err != nil {
		cancel()
		t.Fatalf("renewing the lease of %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
				_ = renew()
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// ReportTask waits for the ExecutorTask of a run's task and writes its status as its executor
// would, returning the ExecutorTask's name.
func ReportTask(t testing.TB, c client.Client, ns, run, task string, status rsv1.ExecutorTaskStatus) string {
	t.Helper()
	ctx := context.Background()
	var name string
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		r := &rsv1.Run{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: run}, r); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		var list rsv1.ExecutorTaskList
		if err := c.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{rsv1.LabelRunUID: string(r.UID)}); err != nil {
			return false, err
		}
		for _, et := range list.Items {
			if et.Spec.TaskName == task {
				name = et.Name
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("waiting for the executor task of %s/%s: %v", run, task, err)
	}
	err = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		et := &rsv1.ExecutorTask{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, et); err != nil {
			return err
		}
		et.Status = status
		return c.Status().Update(ctx, et)
	})
	if err != nil {
		t.Fatalf("reporting on %s: %v", name, err)
	}
	return name
}

// FinishTasks ends every ExecutorTask of the executor in ns with Success once it has been seen for
// after, as the executor would report it, until the test ends.
func FinishTasks(t testing.TB, c client.Client, ns, executor string, after time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		seen := map[string]time.Time{}
		for ctx.Err() == nil {
			var list rsv1.ExecutorTaskList
			if err := c.List(ctx, &list, client.InNamespace(ns), client.MatchingLabels{rsv1.LabelExecutor: executor}); err == nil {
				for _, et := range list.Items {
					if et.Status.Phase.IsFinal() {
						continue
					}
					first, ok := seen[et.Name]
					if !ok {
						seen[et.Name] = time.Now()
						continue
					}
					if time.Since(first) >= after {
						now := metav1.Now()
						et.Status.Phase, et.Status.StartTime, et.Status.EndTime = rsv1.TaskPhaseSuccess, &now, &now
						_ = c.Status().Update(ctx, &et)
					}
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
}

// RaceSchedulers runs schedulers goroutines that start the suspended runs of ns, at random, each
// with a compare-and-swap on group's update token while fewer than limit runs are active, as a
// user's scheduler replicas would; it returns once total runs are Finished (or ctx ends), with how
// many runs they started and how many attempts conflicted. Any other error fails t.
func RaceSchedulers(ctx context.Context, t testing.TB, c client.Client, ns, group string, total, schedulers, limit int) (started, conflicts int64) {
	var s, k atomic.Int64
	var wg sync.WaitGroup
	for range schedulers {
		wg.Go(func() {
			for ctx.Err() == nil {
				cg := &rsv1.ChangeGroup{}
				if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: group}, cg); err != nil {
					continue
				}
				var list rsv1.RunList
				if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
					continue
				}
				var queued []rsv1.Run
				finished := 0
				for _, r := range list.Items {
					if r.Status.Phase == rsv1.RunPhaseFinished {
						finished++
					}
					if r.IsSuspended() {
						queued = append(queued, r)
					}
				}
				if finished == total {
					return
				}
				if len(cg.Status.ActiveRuns) >= limit || len(queued) == 0 {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				run := queued[rand.IntN(len(queued))]
				run.Spec.Suspend = ptr.To(false)
				run.Annotations = map[string]string{rsv1.AnnotationUpdateToken: rsv1.UpdateToken(cg)}
				switch err := c.Update(ctx, &run); {
				case err == nil:
					s.Add(1)
				case apierrors.IsConflict(err):
					k.Add(1)
				default:
					t.Errorf("starting run %s: %v", run.Name, err)
					return
				}
			}
		})
	}
	wg.Wait()
	return s.Load(), k.Load()
}

// LimitWatch follows a namespace's change groups and runs for a test's length: the most active
// runs any ledger listed, and the most runs Running at once.
type LimitWatch struct {
	MaxActive, MaxRunning atomic.Int64
	// Done is closed once ctx ended and the watch with it.
	Done chan struct{}
}

func WatchLimit(t testing.TB, ctx context.Context, cfg *rest.Config, ns string) *LimitWatch {
	t.Helper()
	wc, err := client.NewWithWatch(cfg, client.Options{Scheme: manager.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	cgWatch, err := wc.Watch(ctx, &rsv1.ChangeGroupList{}, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	runWatch, err := wc.Watch(ctx, &rsv1.RunList{}, client.InNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	w := &LimitWatch{Done: make(chan struct{})}
	go func() {
		defer close(w.Done)
		phases := map[string]rsv1.RunPhase{}
		for {
			select {
			case ev, ok := <-cgWatch.ResultChan():
				if !ok {
					return
				}
				if cg, ok := ev.Object.(*rsv1.ChangeGroup); ok {
					w.MaxActive.Store(max(w.MaxActive.Load(), int64(len(cg.Status.ActiveRuns))))
				}
			case ev, ok := <-runWatch.ResultChan():
				if !ok {
					return
				}
				run, ok := ev.Object.(*rsv1.Run)
				if !ok {
					continue
				}
				if ev.Type == watch.Deleted {
					delete(phases, run.Name)
				} else {
					phases[run.Name] = run.Status.Phase
				}
				n := 0
				for _, p := range phases {
					if p == rsv1.RunPhaseRunning {
						n++
					}
				}
				w.MaxRunning.Store(max(w.MaxRunning.Load(), int64(n)))
			}
		}
	}()
	return w
}

// CreateExecutorTask creates the ExecutorTask of run's first task on executor as a manager replica
// named shard would (shard "" leaves the label out): for tests of what a replica that left the ring
// created. run must have its uid (read back after its creation).
func CreateExecutorTask(t testing.TB, c client.Client, run *rsv1.Run, executor, shard string) *rsv1.ExecutorTask {
	t.Helper()
	ctx := context.Background()
	ex := &rsv1.Executor{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: run.Namespace, Name: executor}, ex); err != nil {
		t.Fatalf("reading executor %s: %v", executor, err)
	}
	task := run.Spec.Tasks[0]
	et := &rsv1.ExecutorTask{
		ObjectMeta: metav1.ObjectMeta{
			Name: rsv1.ExecutorTaskName(run.Name, run.UID, task.Name), Namespace: run.Namespace,
			Labels: map[string]string{
				rsv1.LabelRun: rsv1.LabelValue(run.Name), rsv1.LabelRunUID: string(run.UID), rsv1.LabelTask: task.Name,
				rsv1.LabelExecutor: executor,
			},
		},
		Spec: rsv1.ExecutorTaskSpec{
			RunName: run.Name, RunUID: string(run.UID), TaskName: task.Name,
			Executor: executor, ExecutorUID: string(ex.UID), Task: task,
		},
	}
	if shard != "" {
		et.Labels[rsv1.LabelShard] = shard
	}
	if err := controllerutil.SetControllerReference(run, et, c.Scheme()); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, et); err != nil {
		t.Fatalf("creating executor task %s: %v", et.Name, err)
	}
	return et
}
