package controllers

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/executorhttp"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/pki"
	"runservice.dev/runservice/pkg/dag"
)

// ExecutorTaskReconciler is the fetcher: once an ExecutorTask is final it copies the task's step logs
// and workspace archives from its executor into the object store and hands the outcome to the run
// controller (Outcomes), which records it in the run's status with the stored logs' keys; once the
// run's status records it, the fetcher tells the executor that its copy may go (ack). The fetch
// writes nothing to the apiserver of its own.
type ExecutorTaskReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	Store     *objectstore.Store
	// NewHTTP makes a client of executors' endpoints that trusts what it is given
	// (executorhttp.NewClient: address checks, timeouts); AllowHTTP lets it use http:// endpoints.
	NewHTTP   func(executorhttp.Trust) *http.Client
	AllowHTTP bool
	// Stall fails a response body that sends nothing for this long; FetchTimeout bounds one task's
	// whole fetch.
	Stall, FetchTimeout time.Duration
	// Workers is how many tasks are fetched at once in all; Slots bound those per executor.
	Workers int
	Slots   *fetchSlots
	// Guard, in a sharded manager, keeps the fetcher off the tasks of runs being handed over.
	Guard *handoverGuard
	// Outcomes carries the fetches' outcomes to the run controller.
	Outcomes *fetchOutcomes
	// Acking, when set, is called before the fetcher tells an executor that a task's copy may go;
	// an error is taken for an ack lost on its way: for fault tests.
	Acking func(et types.NamespacedName) error

	mu     sync.Mutex
	access map[string]*executorAccess // namespace -> how to reach its executors
	// forgotten holds what access held before it was forgotten: its client (and connections) is
	// kept when the CA read again is the same.
	forgotten map[string]*executorAccess
}

// executorAccess is how the fetcher reaches a namespace's executors: their token, and a client
// trusting their CA. Both are read from the namespace's Secrets when first needed and again after
// an executor refused the token (401: rotated) or its certificate did not verify (a renewed CA),
// so that a rotation needs no manager restart.
type executorAccess struct {
	token  string
	bundle []byte
	client *http.Client
}

var _ reconcile.Reconciler = (*ExecutorTaskReconciler)(nil)

// +kubebuilder:rbac:groups=runservice.dev,resources=executortasks,verbs=get;list;watch
// The executors' token Secret of each run namespace, and no other Secret.
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get,resourceNames=runservice-executor-token;runservice-executor-ca
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile implements reconcile.Reconciler.
func (r *ExecutorTaskReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	et := &rsv1.ExecutorTask{}
	if err := r.Client.Get(ctx, req.NamespacedName, et); err != nil {
		if apierrors.IsNotFound(err) {
			r.Outcomes.forget(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !et.Status.Phase.IsFinal() || et.Annotations[rsv1.AnnotationFetched] != "" {
		return ctrl.Result{}, nil // fetched (and the executor told) by a manager before this one
	}
	run, err := r.runOf(ctx, et)
	if err != nil || run == nil {
		return ctrl.Result{}, err // no run to record it in: the ExecutorTask goes with its run
	}
	if v := run.Status.RecordedFetch(et); v != "" {
		r.Outcomes.recorded(et)
		return r.ack(ctx, et, v)
	}
	if r.Outcomes.outcome(et) != "" {
		return ctrl.Result{}, nil // the run's status write to come records it, and brings it back
	}
	end, ok := r.Guard.begin(types.UID(et.Spec.RunUID))
	if !ok {
		// Its run is being handed over: the task leaves this replica's cache once relabelled, or
		// is fetched here when the handover was taken back.
		return ctrl.Result{RequeueAfter: time.Second}, nil
	}
	defer end()
	ex := &rsv1.Executor{}
	err = r.Client.Get(ctx, types.NamespacedName{Namespace: et.Namespace, Name: et.Spec.Executor}, ex)
	// An Executor being deleted may still serve: it releases its finalizer once its containers are gone.
	if apierrors.IsNotFound(err) || err == nil && executorRemoved(ex, et) {
		r.recordLost(ctx, et, "its executor was removed before they were fetched")
		return ctrl.Result{}, nil
	}
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("reading executor %s: %w", et.Spec.Executor, err)
	}
	if ex.Spec.Endpoint == "" {
		r.recordLost(ctx, et, "its executor has no endpoint to fetch them from")
		return ctrl.Result{}, nil
	}
	release, wait := r.Slots.acquire(ex.UID, client.ObjectKeyFromObject(et))
	if release == nil {
		return ctrl.Result{RequeueAfter: wait}, nil // the executor is busy or backing off
	}
	missing, err := r.fetchWithin(ctx, et, ex.Spec.Endpoint)
	if retry := release(err != nil); err != nil {
		r.fetchFailed(ctx, et, ex, err)
		return ctrl.Result{RequeueAfter: retry}, nil
	}
	if len(missing) > 0 {
		r.recordArchivesMissing(ctx, et, missing)
		return ctrl.Result{}, nil
	}
	r.Outcomes.put(ctx, et, time.Now().UTC().Format(time.RFC3339))
	return ctrl.Result{}, nil
}

// runOf is the run that controls et, from the cache; nil when it is gone.
func (r *ExecutorTaskReconciler) runOf(ctx context.Context, et *rsv1.ExecutorTask) (*rsv1.Run, error) {
	key, ok := ownerRun(et)
	if !ok {
		return nil, nil
	}
	run := &rsv1.Run{}
	if err := r.Client.Get(ctx, key, run); err != nil {
		return nil, client.IgnoreNotFound(err)
	}
	if !metav1.IsControlledBy(et, run) {
		return nil, nil // a run of the same name created since
	}
	return run, nil
}

// fetchWithin fetches within FetchTimeout, so that an executor trickling bytes slower than the
// stall timeout still cannot hold a worker for ever.
func (r *ExecutorTaskReconciler) fetchWithin(ctx context.Context, et *rsv1.ExecutorTask, endpoint string) ([]int, error) {
	ctx, cancel := context.WithTimeout(ctx, r.FetchTimeout)
	defer cancel()
	return r.fetch(ctx, et, endpoint)
}

// fetchFailed makes a failed fetch visible, as a Warning event on the ExecutorTask and a log line:
// a refused endpoint (EndpointRefused) needs its operator or the executor's owner to act.
func (r *ExecutorTaskReconciler) fetchFailed(ctx context.Context, et *rsv1.ExecutorTask, ex *rsv1.Executor, err error) {
	reason := rsv1.ReasonFetchFailed
	if _, refused := errors.AsType[*executorhttp.RefusedError](err); refused {
		reason = rsv1.ReasonEndpointRefused
	}
	ctrl.LoggerFrom(ctx).Info("fetching from the executor failed; trying again later",
		"executor", klog.KObj(ex), "endpoint", ex.Spec.Endpoint, "reason", reason, "error", err.Error())
	note := fmt.Sprintf("fetching logs and archives from executor %s: %v", ex.Name, err)
	if len(note) > maxEventNote {
		note = note[:maxEventNote-3] + "..."
	}
	r.Recorder.Eventf(et, ex, corev1.EventTypeWarning, reason, "Fetch", "%s", note)
}

// maxEventNote keeps an event's note under the API's limit of 1 kB.
const maxEventNote = 1000

// recordLost records that none of the task's data will be stored; losing archives a descendant
// restores is worth an event (the descendant fails on it).
func (r *ExecutorTaskReconciler) recordLost(ctx context.Context, et *rsv1.ExecutorTask, why string) {
	if saved := et.SavedArchives(); len(saved) > 0 {
		ctrl.LoggerFrom(ctx).Error(nil, "workspace archives lost", "executorTask", klog.KObj(et), "steps", saved, "reason", why)
		r.Recorder.Eventf(et, nil, corev1.EventTypeWarning, "ArchivesLost", "Fetch",
			"the workspace archives of steps %v are lost: %s", saved, why)
	}
	r.Outcomes.put(ctx, et, rsv1.FetchedLost)
}

// recordArchivesMissing records the successful saveToWorkspace steps whose archive the executor
// did not have: not "saved nothing", the descendants that restore them fail.
func (r *ExecutorTaskReconciler) recordArchivesMissing(ctx context.Context, et *rsv1.ExecutorTask, steps []int) {
	ctrl.LoggerFrom(ctx).Error(nil, "the executor did not have workspace archives", "executorTask", klog.KObj(et), "steps", steps)
	r.Recorder.Eventf(et, nil, corev1.EventTypeWarning, "ArchivesMissing", "Fetch",
		"executor %s did not have the workspace archives of steps %v", et.Spec.Executor, steps)
	idx := make([]string, len(steps))
	for j, i := range steps {
		idx[j] = strconv.Itoa(i)
	}
	r.Outcomes.put(ctx, et, rsv1.FetchedArchivesMissing+strings.Join(idx, ","))
}

// workspaceState says whether the manager is done with a task's archives, and which of its saved
// archives will never be in the object store and why, from v, what is known of its fetch (a
// status.tasks[].fetched value). A task whose executor was removed before it ended is never
// fetched: what it saved is gone with the executor.
func workspaceState(et *rsv1.ExecutorTask, v string, executorRemoved bool) (fetched bool, missing []dag.MissingArchive) {
	if v == "" && executorRemoved && !et.Status.Phase.IsFinal() {
		v = rsv1.FetchedLost
	}
	var steps []int
	why := ""
	switch {
	case v == rsv1.FetchedLost:
		steps, why = et.SavedArchives(), "its executor was removed before the archive was fetched"
	case strings.HasPrefix(v, rsv1.FetchedArchivesMissing):
		why = "its executor did not have the archive when the manager fetched it"
		for f := range strings.SplitSeq(strings.TrimPrefix(v, rsv1.FetchedArchivesMissing), ",") {
			if i, err := strconv.Atoi(f); err == nil {
				steps = append(steps, i)
			}
		}
	}
	for _, i := range steps {
		name := fmt.Sprintf("step-%d", i)
		if i >= 0 && i < len(et.Status.Steps) {
			name = et.Status.Steps[i].Name
		}
		missing = append(missing, dag.MissingArchive{Step: i, StepName: name, Why: why})
	}
	return v != "", missing
}

// fetch copies the task's logs and saved archives; it returns the saved archives the executor did
// not have (a step that never wrote a log simply has none).
func (r *ExecutorTaskReconciler) fetch(ctx context.Context, et *rsv1.ExecutorTask, endpoint string) ([]int, error) {
	get := func(url, key string) error {
		return r.withAccess(ctx, et.Namespace, func(acc *executorAccess) error { return r.copy(ctx, acc, url, key) })
	}
	store := objectstore.TaskOf(et)
	for i := range et.Spec.Task.Steps {
		if i < len(et.Status.Steps) && et.Status.Steps[i].Phase != rsv1.StepPhaseNotStarted {
			url := fmt.Sprintf("%s/v1/tasks/%s/steps/%d/log", endpoint, et.Name, i)
			if err := get(url, store.LogKey(i)); err != nil && !errors.Is(err, errNotOnExecutor) {
				return nil, err
			}
		}
	}
	var missing []int
	for _, i := range et.SavedArchives() {
		url := fmt.Sprintf("%s/v1/tasks/%s/archives/%d", endpoint, et.Name, i)
		err := get(url, store.ArchiveKey(i))
		switch {
		case errors.Is(err, errNotOnExecutor):
			missing = append(missing, i)
		case err != nil:
			return nil, err
		}
	}
	return missing, nil
}

// withAccess calls do with how to reach the executors of namespace; when they refuse the token or
// their certificate does not verify, it reads both again and calls do once more.
func (r *ExecutorTaskReconciler) withAccess(ctx context.Context, namespace string, do func(*executorAccess) error) error {
	acc, err := r.executorAccess(ctx, namespace)
	if err != nil {
		return err
	}
	err = do(acc)
	if !errors.Is(err, errUnauthorized) && !errors.As(err, new(*tls.CertificateVerificationError)) {
		return err
	}
	r.forget(namespace, acc)
	if acc, err = r.executorAccess(ctx, namespace); err != nil {
		return err
	}
	return do(acc)
}

// errNotOnExecutor is a 404 from the executor: it has no such file; errUnauthorized a 401: it does
// not take the token (rotated since the fetcher read it).
var (
	errNotOnExecutor = errors.New("not on the executor")
	errUnauthorized  = errors.New("the executor refused the token")
)

// copy streams url into the object store at key; a 404 stores nothing and returns errNotOnExecutor.
func (r *ExecutorTaskReconciler) copy(ctx context.Context, acc *executorAccess, url, key string) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := acc.do(ctx, http.MethodGet, url)
	if err != nil {
		return fmt.Errorf("fetching %s: %w", url, err)
	}
	defer resp.Body.Close()
	body := executorhttp.WatchStall(resp.Body, r.Stall, cancel)
	switch {
	case resp.StatusCode == http.StatusOK:
		if err := r.Store.Put(ctx, key, body); err != nil {
			if cause := context.Cause(ctx); errors.Is(cause, executorhttp.ErrStalled) {
				err = cause // the store saw a cancelled context; the executor's silence is why
			}
			return fmt.Errorf("fetching %s: %w", url, err)
		}
		return nil
	case resp.StatusCode == http.StatusNotFound:
		_, _ = io.Copy(io.Discard, body)
		return fmt.Errorf("fetching %s: %w", url, errNotOnExecutor)
	case resp.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("fetching %s: %w", url, errUnauthorized)
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return fmt.Errorf("fetching %s: %s to %q, not followed", url, resp.Status, resp.Header.Get("Location"))
	}
	return fmt.Errorf("fetching %s: %s", url, resp.Status)
}

// do sends a request with the token.
func (acc *executorAccess) do(ctx context.Context, method, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+acc.token)
	return acc.client.Do(req)
}

// executorAccess returns how to reach the executors of a namespace, reading their Secrets when
// it is not known: the token (required), and the CA (none yet: https endpoints do not verify).
func (r *ExecutorTaskReconciler) executorAccess(ctx context.Context, namespace string) (*executorAccess, error) {
	r.mu.Lock()
	acc, prev := r.access[namespace], r.forgotten[namespace]
	r.mu.Unlock()
	if acc != nil {
		return acc, nil
	}
	s := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: rsv1.ExecutorTokenSecret}, s); err != nil {
		return nil, fmt.Errorf("reading the executors' token: %w", err)
	}
	acc = &executorAccess{token: string(s.Data[rsv1.ExecutorTokenKey])}
	ca := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: rsv1.ExecutorCASecret}, ca); client.IgnoreNotFound(err) != nil {
		return nil, fmt.Errorf("reading the executors' CA: %w", err)
	}
	acc.bundle = pki.Bundle(ca.Data)
	if prev != nil && bytes.Equal(prev.bundle, acc.bundle) {
		acc.client = prev.client // the same trust: keep its connections
	} else {
		acc.client = r.NewHTTP(executorhttp.TrustPEM(acc.bundle, r.AllowHTTP))
	}
	r.mu.Lock()
	if r.access == nil {
		r.access, r.forgotten = map[string]*executorAccess{}, map[string]*executorAccess{}
	}
	r.access[namespace] = acc
	r.mu.Unlock()
	return acc, nil
}

// forget drops what the fetcher knows of a namespace's executors, when it is still acc: the next
// fetch reads it again.
func (r *ExecutorTaskReconciler) forget(namespace string, acc *executorAccess) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.access[namespace] == acc {
		delete(r.access, namespace)
		r.forgotten[namespace] = acc
	}
}

// SetupWithManager registers the reconciler.
func (r *ExecutorTaskReconciler) SetupWithManager(mgr ctrl.Manager) error {
	// Final tasks, deletions included (what is kept of them in Outcomes goes), but not those a
	// manager before this one fetched.
	final := predicate.NewPredicateFuncs(func(o client.Object) bool {
		et := o.(*rsv1.ExecutorTask)
		return et.Status.Phase.IsFinal() && et.Annotations[rsv1.AnnotationFetched] == ""
	})
	b := ctrl.NewControllerManagedBy(mgr).
		Named("executortask").
		For(&rsv1.ExecutorTask{}, builder.WithPredicates(final)).
		// A run's status write that records fetches brings their tasks back, to be acked.
		// A run arriving in this replica's cache (moved here from another shard, whose tasks were
		// relabelled before it and found no run then) brings back its ended tasks.
		Watches(&rsv1.Run{}, handler.Funcs{CreateFunc: endedTasksOf, UpdateFunc: fetchesRecorded}).
		// An executor that changed its spec (cordoned to drain and leave, registered anew) is told
		// at once of the recorded fetches it was not told of (an ack lost on its way).
		Watches(&rsv1.Executor{}, handler.EnqueueRequestsFromMapFunc(r.unacked), builder.WithPredicates(predicate.GenerationChangedPredicate{}))
	if r.Slots.wake != nil {
		// A task that waited for a slot of its executor, woken as one frees.
		b = b.WatchesRawSource(source.Channel(r.Slots.wake, &handler.EnqueueRequestForObject{}))
	}
	return b.WithOptions(controller.Options{MaxConcurrentReconciles: r.Workers, NeedLeaderElection: r.Guard.needLeaderElection()}).
		Complete(r)
}
