package testenv

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
)

// StartManager starts a manager (controllers and webhooks) in this process, with ManagerOptions
// changed by change, and returns once its webhook serves (without a webhook, WebhookPort 0: once
// its cache has synced). stop stops it and waits for its end.
func (e *Env) StartManager(change func(*manager.Options)) (stop func(), err error) {
	opts := e.ManagerOptions()
	if change != nil {
		change(&opts)
	}
	ctx, cancel := context.WithCancel(context.Background())
	mgr, err := manager.New(ctx, e.Config, opts)
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
