package controllers

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/objectstore"
)

// Values of the fetched annotation besides a time.
const (
	// fetchedLost says there was nothing to fetch: the task's executor is gone.
	fetchedLost = "lost"
)

// ExecutorTaskReconciler is the fetcher: once an ExecutorTask is final it copies the task's step logs
// and workspace archives from its executor into the object store, then marks the ExecutorTask
// fetched (the executor then deletes its copy, and the run's status points at the stored logs).
type ExecutorTaskReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Store     *objectstore.Store
	HTTP      *http.Client

	mu     sync.Mutex
	tokens map[string]string // namespace -> executors' bearer token
}

var _ reconcile.Reconciler = (*ExecutorTaskReconciler)(nil)

// +kubebuilder:rbac:groups=runservice.dev,resources=executortasks,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get

// Reconcile implements reconcile.Reconciler.
func (r *ExecutorTaskReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	et := &rsv1.ExecutorTask{}
	if err := r.Client.Get(ctx, req.NamespacedName, et); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !et.Status.Phase.IsFinal() || et.Annotations[rsv1.AnnotationFetched] != "" {
		return ctrl.Result{}, nil
	}
	ex := &rsv1.Executor{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: et.Namespace, Name: et.Spec.Executor}, ex)
	if apierrors.IsNotFound(err) || err == nil && (ex.DeletionTimestamp != nil || string(ex.UID) != et.Spec.ExecutorUID) {
		return ctrl.Result{}, r.markFetched(ctx, et, fetchedLost)
	}
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("reading executor %s: %w", et.Spec.Executor, err)
	}
	if ex.Spec.Endpoint == "" {
		return ctrl.Result{}, r.markFetched(ctx, et, fetchedLost)
	}
	if err := r.fetch(ctx, et, ex.Spec.Endpoint); err != nil {
		ctrl.LoggerFrom(ctx).V(1).Info("fetching from the executor failed; trying again", "error", err.Error())
		return ctrl.Result{RequeueAfter: 2 * time.Second}, nil
	}
	return ctrl.Result{}, r.markFetched(ctx, et, time.Now().UTC().Format(time.RFC3339))
}

func (r *ExecutorTaskReconciler) fetch(ctx context.Context, et *rsv1.ExecutorTask, endpoint string) error {
	token, err := r.token(ctx, et.Namespace)
	if err != nil {
		return err
	}
	for i, step := range et.Spec.Task.Steps {
		if i < len(et.Status.Steps) && et.Status.Steps[i].Phase != rsv1.StepPhaseNotStarted {
			url := fmt.Sprintf("%s/v1/tasks/%s/steps/%d/log", endpoint, et.Name, i)
			if err := r.copy(ctx, url, token, objectstore.LogKey(et.Namespace, et.Spec.RunName, et.Name, i)); err != nil {
				return err
			}
		}
		if step.SaveToWorkspace != nil && i < len(et.Status.Steps) && et.Status.Steps[i].Phase == rsv1.StepPhaseSuccess {
			url := fmt.Sprintf("%s/v1/tasks/%s/archives/%d", endpoint, et.Name, i)
			if err := r.copy(ctx, url, token, objectstore.ArchiveKey(et.Namespace, et.Spec.RunName, et.Name, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// copy streams url into the object store at key; a 404 (nothing was written) stores nothing.
func (r *ExecutorTaskReconciler) copy(ctx context.Context, url, token, key string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := r.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("fetching %s: %w", url, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return r.Store.Put(ctx, key, resp.Body)
	case http.StatusNotFound:
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return fmt.Errorf("fetching %s: %s", url, resp.Status)
}

func (r *ExecutorTaskReconciler) token(ctx context.Context, namespace string) (string, error) {
	r.mu.Lock()
	tok, ok := r.tokens[namespace]
	r.mu.Unlock()
	if ok {
		return tok, nil
	}
	s := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: rsv1.ExecutorTokenSecret}, s); err != nil {
		return "", fmt.Errorf("reading the executors' token: %w", err)
	}
	tok = string(s.Data[rsv1.ExecutorTokenKey])
	r.mu.Lock()
	if r.tokens == nil {
		r.tokens = map[string]string{}
	}
	r.tokens[namespace] = tok
	r.mu.Unlock()
	return tok, nil
}

func (r *ExecutorTaskReconciler) markFetched(ctx context.Context, et *rsv1.ExecutorTask, value string) error {
	patch := client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"metadata":{"annotations":{%q:%q}}}`, rsv1.AnnotationFetched, value))
	if err := r.Client.Patch(ctx, et, patch); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("marking %s fetched: %w", et.Name, err)
	}
	return nil
}

// SetupWithManager registers the reconciler.
func (r *ExecutorTaskReconciler) SetupWithManager(mgr ctrl.Manager) error {
	final := predicate.NewPredicateFuncs(func(o client.Object) bool {
		et := o.(*rsv1.ExecutorTask)
		return et.Status.Phase.IsFinal() && et.Annotations[rsv1.AnnotationFetched] == ""
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("executortask").
		For(&rsv1.ExecutorTask{}, builder.WithPredicates(final)).
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		Complete(r)
}
