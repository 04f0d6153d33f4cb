package executor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor/toolbox"
	"runservice.dev/runservice/internal/objectstore"
)

// Options configure an executor.
type Options struct {
	// Name of the Executor; with the same name after a restart the executor keeps its identity.
	Name      string
	Namespace string
	Driver    rsv1.ExecutorDriver
	Permanent bool
	Group     string
	Labels    map[string]string
	// ActiveTasksLimit is the most tasks run at once; 0 means no limit.
	ActiveTasksLimit          int32
	AllowPrivilegedContainers bool
	// Endpoint is the URL the manager fetches logs and archives from (the Listen address as seen by
	// it). An https URL makes the server serve TLS with a certificate of the namespace's CA.
	Endpoint string
	// PodEndpoint is the URL task pods fetch their workspaces from (Kubernetes driver); its host
	// goes into the serving certificate too. It has Endpoint's scheme.
	PodEndpoint string
	// InsecureHTTP allows http:// endpoints: the token, logs and archives then cross the network
	// in clear, so only when the operator says so (a local executor, tests).
	InsecureHTTP bool
	// Listen is the address of the HTTP server for logs and archives.
	Listen string
	// PprofAddr, when set, serves Go's profiles (/debug/pprof/) there: for finding what costs CPU or
	// holds memory in a running executor.
	PprofAddr string
	// DataDir holds the tasks' directories (logs, archives) until the manager fetched them.
	DataDir string
	// Toolbox is the path of the static toolbox binary.
	Toolbox string
	// ObjectStore is the URL of the object store the parents' workspace archives are read from.
	ObjectStore string
	// LeaseDuration and RenewInterval of the executor's Lease.
	LeaseDuration time.Duration
	RenewInterval time.Duration
	// StopGrace is how long a stopped task's containers get before they are killed.
	StopGrace time.Duration
	// MaxConcurrentReconciles bounds how many tasks are started at once.
	MaxConcurrentReconciles int
	// Limits bound the tasks' files the executor reads and keeps (logs, archives).
	Limits toolbox.Limits
	// DrainTimeout is how long a dynamic executor, told to stop, keeps following its running tasks
	// (taking no new ones) before it exits; 0 exits at once.
	DrainTimeout time.Duration
	// ServerTimeouts bound the HTTP server's connections; zero fields take the defaults.
	ServerTimeouts ServerTimeouts
	// RunningStatusDelay is how long a task's main container runs (State.Started: not while its pod
	// waits for a node or an image) before its status says Running: nothing is written
	// of a task before its containers exist, and a task that ends sooner gets one status write, its
	// final one, which carries its start time. 0 takes the default (1s); a negative delay writes
	// Running as soon as the containers run.
	RunningStatusDelay time.Duration
	// FetchWait is how long a dynamic executor, told to stop with no task running, waits at least for
	// the manager to fetch its finished tasks' logs and archives (a drain waits up to DrainTimeout);
	// past it the executor stays registered rather than have them recorded lost. 0 does not wait.
	FetchWait time.Duration
}

// ServerTimeouts bound what a client of the executor's HTTP server can hold: the manager's
// fetcher, runctl and task pods are its clients, but anyone who reaches the port can connect.
type ServerTimeouts struct {
	// ReadHeader bounds reading a request's headers (a client trickling them is cut off).
	ReadHeader time.Duration
	// Read bounds reading a whole request (none has a body).
	Read time.Duration
	// Idle bounds a kept-alive connection's wait for its next request.
	Idle time.Duration
	// WriteStall cuts off a client that takes no data for this long. It bounds each write, not the
	// response: a followed log streams as long as its step runs.
	WriteStall time.Duration
}

func (o *Options) defaults() {
	if o.LeaseDuration == 0 {
		o.LeaseDuration = 15 * time.Second
	}
	if o.RenewInterval == 0 {
		o.RenewInterval = 3 * time.Second
	}
	if o.StopGrace == 0 {
		o.StopGrace = 10 * time.Second
	}
	if o.RunningStatusDelay == 0 {
		o.RunningStatusDelay = time.Second
	}
	if o.MaxConcurrentReconciles == 0 {
		o.MaxConcurrentReconciles = 4
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.ServerTimeouts.ReadHeader, 10*time.Second)
	def(&o.ServerTimeouts.Read, 30*time.Second)
	def(&o.ServerTimeouts.Idle, 2*time.Minute)
	def(&o.ServerTimeouts.WriteStall, time.Minute)
	o.Limits = o.Limits.WithDefaults()
}

// Executor executes the tasks scheduled on it.
type Executor struct {
	opts    Options
	driver  Driver
	client  client.Client
	reader  client.Reader
	store   *objectstore.Store
	creds   *credentials
	cert    *servingCert // nil: plain http (InsecureHTTP)
	uid     types.UID
	baseCtx context.Context
	// instance is this process's identity in its Lease (lease.go); holding is set once it renewed
	// the Lease: from then on, the Lease held by any other process means this one was taken over.
	instance string
	holding  bool

	mu      sync.Mutex
	runners map[types.UID]*runner
	names   map[string]types.UID // ExecutorTask name -> uid of its runner
	gate    startGate            // whether a task may start (removal.go)

	// starting serialises fresh starts under ActiveTasksLimit (slots.go); wake requeues the tasks
	// waiting for a slot when one may have come free.
	starting sync.Mutex
	wake     chan event.GenericEvent
}

// Scheme is the scheme of the executor's clients: the kinds it reads and writes, not every group of
// client-go's scheme (each registered type costs the executor's heap, for as long as it runs).
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, coordinationv1.AddToScheme, eventsv1.AddToScheme, rsv1.AddToScheme} {
		_ = add(s)
	}
	return s
}

// An executor's permissions, in its own namespace only (config/rbac/executor). Executors and Leases
// are read live (the API reader), ExecutorTasks through the cache. Which objects of a kind it may
// write (its own Executor and Lease, its tasks' status) RBAC cannot tell apart: the admission policy
// of config/executor does, by the pod name its token carries.
// +kubebuilder:rbac:groups=runservice.dev,namespace=system,resources=executors,verbs=get;list;create;update
// +kubebuilder:rbac:groups=runservice.dev,namespace=system,resources=executortasks,verbs=get;list;watch
// +kubebuilder:rbac:groups=runservice.dev,namespace=system,resources=executortasks/status,verbs=update
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=system,resources=leases,verbs=get;list;create;update
// The token and CA Secrets are read and renewed by name; a create cannot be limited to a name (the
// admission policy does).
// +kubebuilder:rbac:groups="",namespace=system,resources=secrets,verbs=get;update;patch,resourceNames=runservice-executor-token;runservice-executor-ca
// +kubebuilder:rbac:groups="",namespace=system,resources=secrets,verbs=create

// Run runs the executor until ctx ends or its Executor is deleted.
func Run(ctx context.Context, cfg *rest.Config, driver Driver, opts Options) error {
	opts.defaults()
	log := ctrl.LoggerFrom(ctx).WithValues("executor", opts.Name)
	ctx = ctrl.LoggerInto(ctx, log)
	if err := os.MkdirAll(filepath.Join(opts.DataDir, "tasks"), 0o755); err != nil {
		return fmt.Errorf("creating data dir: %w", err)
	}
	sel := labels.SelectorFromSet(labels.Set{rsv1.LabelExecutor: opts.Name})
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 Scheme(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		PprofBindAddress:       opts.PprofAddr,
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		Cache: cache.Options{
			DefaultNamespaces: map[string]cache.Config{opts.Namespace: {}},
			// Nothing the executor reads of its tasks is in their managed fields.
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				&rsv1.ExecutorTask{}: {Label: sel},
			},
		},
	})
	if err != nil {
		return fmt.Errorf("creating the executor's manager: %w", err)
	}
	e := &Executor{
		opts: opts, driver: driver, client: mgr.GetClient(), reader: mgr.GetAPIReader(),
		runners: map[types.UID]*runner{}, names: map[string]types.UID{},
		instance: newInstance(), wake: make(chan event.GenericEvent, 1024),
	}
	log = log.WithValues("instance", e.instance)
	ctx = ctrl.LoggerInto(ctx, log)
	if opts.ObjectStore != "" {
		if e.store, err = objectstore.Open(ctx, opts.ObjectStore); err != nil {
			return err
		}
		defer e.store.Close()
	}
	if err = EnsureToken(ctx, mgr.GetAPIReader(), mgr.GetClient(), opts.Namespace); err != nil {
		return err
	}
	e.creds = newCredentials(mgr.GetAPIReader(), opts.Namespace)
	if err := e.setupTLS(ctx, mgr.GetAPIReader(), mgr.GetClient()); err != nil {
		return err
	}
	if err := e.waitLease(ctx); err != nil {
		return err
	}
	if err := e.register(ctx); errors.Is(err, errRemoved) {
		log.Info("the executor was deleted while it was down: its tasks' containers are gone, the deletion is complete; exiting")
		return nil
	} else if err != nil {
		return err
	}
	if err := e.renew(ctx); err != nil {
		return err
	}
	if err := ctrl.NewControllerManagedBy(mgr).
		Named("executortask-" + opts.Name).
		For(&rsv1.ExecutorTask{}).
		WatchesRawSource(source.Channel(e.wake, &handler.EnqueueRequestForObject{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: opts.MaxConcurrentReconciles}).
		Complete(e); err != nil {
		return fmt.Errorf("setting up the task controller: %w", err)
	}

	// The executor's own context outlives ctx while it drains.
	stop := ctx
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	e.baseCtx = ctx
	errc := make(chan error, 3)
	go func() { errc <- mgr.Start(ctx) }()
	go func() { errc <- e.heartbeat(ctx) }()
	go func() { errc <- e.serve(ctx) }()
	var reaper sync.WaitGroup
	reaper.Go(func() { e.reapLoop(ctx) })
	defer reaper.Wait()
	go func() {
		if mgr.GetCache().WaitForCacheSync(ctx) {
			e.sweep(ctx)
			e.sweepDirs(ctx, dirSweepInterval)
		}
	}()
	log.Info("executor running", "uid", e.uid, "endpoint", opts.Endpoint)
	select {
	case err = <-errc:
	case <-stop.Done():
		err = e.drain(ctx, errc)
	}
	cancel()
	e.wait()
	if errors.Is(err, errRemoved) {
		log.Info("the executor was removed: its tasks' containers are gone; exiting")
		return nil
	}
	if err == nil {
		e.leaveIfIdle(ctx)
		e.releaseLease(ctx)
	}
	return err
}

var errRemoved = errors.New("executor removed")

// setupTLS decides from the endpoints' scheme whether the server speaks https, and issues its
// certificate if so; http needs InsecureHTTP.
func (e *Executor) setupTLS(ctx context.Context, reader client.Reader, c client.Client) error {
	if e.opts.Listen == "" {
		return nil
	}
	var schemes []string
	for _, u := range []string{e.opts.Endpoint, e.opts.PodEndpoint} {
		if scheme, _, ok := strings.Cut(u, "://"); ok {
			schemes = append(schemes, scheme)
		}
	}
	slices.Sort(schemes)
	switch schemes = slices.Compact(schemes); {
	case len(schemes) == 0 && e.opts.InsecureHTTP:
		return nil // nobody is told where to reach it: plain http, as allowed
	case len(schemes) > 1:
		return fmt.Errorf("endpoint %q and pod endpoint %q: one server speaks one scheme; give both https (or http with --insecure-http)", e.opts.Endpoint, e.opts.PodEndpoint)
	case len(schemes) == 1 && schemes[0] == "http":
		if !e.opts.InsecureHTTP {
			return fmt.Errorf("endpoint %q is plain http: the executors' token, logs and archives would cross the network in clear; use https:// (a certificate of the namespace's CA) or --insecure-http", e.opts.Endpoint)
		}
		return nil
	}
	hosts, err := endpointHosts(e.opts.Endpoint, e.opts.PodEndpoint)
	if err != nil {
		return err
	}
	if len(hosts) == 0 {
		return fmt.Errorf("endpoint %q: an https endpoint with a host is needed for the serving certificate", e.opts.Endpoint)
	}
	e.cert = &servingCert{reader: reader, client: c, namespace: e.opts.Namespace, hosts: hosts}
	if err := e.cert.issue(ctx); err != nil {
		return fmt.Errorf("issuing the executor's serving certificate: %w", err)
	}
	return nil
}

// register creates the Executor, or takes over the existing one of the same name (a restart).
func (e *Executor) register(ctx context.Context) error {
	archs, err := e.driver.Archs(ctx)
	if err != nil {
		return err
	}
	spec := rsv1.ExecutorSpec{
		Driver: e.opts.Driver, Permanent: e.opts.Permanent, Group: e.opts.Group, Archs: archs,
		ActiveTasksLimit: e.opts.ActiveTasksLimit, AllowPrivilegedContainers: e.opts.AllowPrivilegedContainers,
		Endpoint: e.opts.Endpoint,
	}
	return retry.OnError(retry.DefaultBackoff, func(err error) bool { return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) }, func() error {
		ex := &rsv1.Executor{}
		err := e.reader.Get(ctx, types.NamespacedName{Namespace: e.opts.Namespace, Name: e.opts.Name}, ex)
		switch {
		case apierrors.IsNotFound(err):
			ex = &rsv1.Executor{
				ObjectMeta: metav1.ObjectMeta{
					Name: e.opts.Name, Namespace: e.opts.Namespace, Labels: e.opts.Labels,
					Finalizers: []string{rsv1.FinalizerExecutorTasks},
				},
				Spec: spec,
			}
			if err := e.client.Create(ctx, ex); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("reading executor: %w", err)
		case ex.DeletionTimestamp != nil:
			// Deleted while this executor was down: only it can confirm that its containers are gone.
			return e.completeRemoval(ctx, ex)
		case !equality.Semantic.DeepEqual(ex.Spec, spec) || !equality.Semantic.DeepEqual(ex.Labels, e.opts.Labels) && e.opts.Labels != nil ||
			!controllerutil.ContainsFinalizer(ex, rsv1.FinalizerExecutorTasks):
			controllerutil.AddFinalizer(ex, rsv1.FinalizerExecutorTasks) // registered by an older executor
			ex.Spec = spec
			if e.opts.Labels != nil {
				ex.Labels = e.opts.Labels
			}
			if err := e.client.Update(ctx, ex); err != nil {
				return err
			}
		}
		e.uid = ex.UID
		return nil
	})
}

// heartbeat renews the Lease and watches for the Executor's removal. It does nothing that may take
// long (siblings are reaped beside it, reapLoop), and a removal of its own gets a deadline, so that
// the Lease is renewed on time.
func (e *Executor) heartbeat(ctx context.Context) error {
	tick := time.NewTicker(e.opts.RenewInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		ex := &rsv1.Executor{}
		err := e.reader.Get(ctx, types.NamespacedName{Namespace: e.opts.Namespace, Name: e.opts.Name}, ex)
		if apierrors.IsNotFound(err) || err == nil && ex.UID != e.uid {
			// Released without this executor (forced by an administrator, or by a sibling): nothing
			// of it may run any more.
			e.gate.close("the Executor is gone")
			e.removeAll(ctx)
			return errRemoved
		}
		if err := e.renew(ctx); errors.Is(err, errRemoved) {
			e.gate.close(err.Error())
			e.removeAll(ctx) // the sibling that claimed the Lease confirms and releases
			return err
		} else if errors.Is(err, errDuplicate) {
			// Another process of the name took the Lease over (this one's renewals were held up
			// past its expiry): the tasks and their containers are that process's now. Stop at
			// once, touching none of them.
			e.gate.close(err.Error())
			return err
		} else if err != nil && ctx.Err() == nil {
			ctrl.LoggerFrom(ctx).Error(err, "renewing lease")
		}
		if err == nil && ex.DeletionTimestamp != nil {
			if err := e.completeRemoval(ctx, ex); errors.Is(err, errRemoved) {
				return err
			} else if err != nil && ctx.Err() == nil {
				ctrl.LoggerFrom(ctx).Error(err, "removing the deleted executor's tasks; trying again")
			}
		}
	}
}

func (e *Executor) renew(ctx context.Context) error {
	key := types.NamespacedName{Namespace: e.opts.Namespace, Name: e.opts.Name}
	var sent time.Time
	// AlreadyExists too: another process created the Lease first, and the retry sees whose it is.
	retriable := func(err error) bool { return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) }
	err := retry.OnError(retry.DefaultBackoff, retriable, func() error {
		sent = time.Now() // before the renewal: siblings count the Lease's duration from later
		lease := &coordinationv1.Lease{}
		err := e.reader.Get(ctx, key, lease)
		if apierrors.IsNotFound(err) {
			lease = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace}}
		} else if err != nil {
			return err
		}
		if by, claimed := claimedBy(lease, e.opts.Name); claimed && !leaseExpired(lease, time.Now()) {
			return fmt.Errorf("%w: %s is removing this executor", errRemoved, by)
		}
		// At start (after waitLease) an expired hold of another process is taken over; once this
		// process held the Lease, any other holder of the name took it over from this one.
		if holder, other := e.heldByOther(lease); other && (e.holding || !leaseExpired(lease, time.Now())) {
			return e.duplicate(lease, holder)
		}
		if lease.Labels == nil {
			lease.Labels = map[string]string{}
		}
		// The manager caches only executors' Leases, selected by this label.
		lease.Labels[rsv1.LabelExecutor] = e.opts.Name
		if n, ok := e.activeTasks(ctx); ok {
			if lease.Annotations == nil {
				lease.Annotations = map[string]string{}
			}
			lease.Annotations[rsv1.AnnotationActiveTasks] = strconv.Itoa(n)
		}
		if e.opts.Group != "" {
			lease.Labels[rsv1.LabelExecutorGroup] = e.opts.Group
		}
		now := metav1.NowMicro() // as late as possible: siblings judge liveness by it
		if ptr.Deref(lease.Spec.HolderIdentity, "") != e.holder() {
			lease.Spec.AcquireTime = &now
			if lease.ResourceVersion != "" {
				lease.Spec.LeaseTransitions = ptr.To(ptr.Deref(lease.Spec.LeaseTransitions, 0) + 1)
			}
		}
		lease.Spec.HolderIdentity = ptr.To(e.holder())
		lease.Spec.LeaseDurationSeconds = ptr.To(int32(e.opts.LeaseDuration.Seconds()))
		lease.Spec.RenewTime = &now
		if lease.ResourceVersion == "" {
			return e.client.Create(ctx, lease)
		}
		return e.client.Update(ctx, lease)
	})
	if err == nil {
		e.holding = true
		e.gate.renewed(sent, e.opts.LeaseDuration)
	}
	return err
}

// removeAll stops and removes every container of this executor's tasks.
func (e *Executor) removeAll(ctx context.Context) {
	e.mu.Lock()
	for _, r := range e.runners {
		r.cancel()
	}
	e.mu.Unlock()
	uids, err := e.driver.Tasks(ctx)
	if err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "listing task containers")
	}
	for _, uid := range uids {
		if err := e.driver.Remove(ctx, uid); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "removing task containers", "uid", uid)
		}
	}
}

// sweep removes, once the cache has synced, the containers of tasks that are not running here any
// more: final tasks whose containers a crash left behind, and tasks deleted while the executor was down.
func (e *Executor) sweep(ctx context.Context) {
	uids, err := e.driver.Tasks(ctx)
	if err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "listing task containers")
		return
	}
	var list rsv1.ExecutorTaskList
	if err := e.client.List(ctx, &list, client.InNamespace(e.opts.Namespace)); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "listing executor tasks")
		return
	}
	live := map[string]bool{}
	for _, et := range list.Items {
		if !et.Status.Phase.IsFinal() && et.Spec.ExecutorUID == string(e.uid) {
			live[string(et.UID)] = true
		}
	}
	for _, uid := range uids {
		if live[uid] {
			continue
		}
		ctrl.LoggerFrom(ctx).Info("removing the containers of a task that no longer runs here", "uid", uid)
		if err := e.driver.Remove(ctx, uid); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "removing task containers", "uid", uid)
		}
	}
}

// dirSweepInterval is how often the task directories of tasks that no longer exist are removed.
const dirSweepInterval = 5 * time.Minute

// sweepDirs removes, now and then every interval until ctx ends, the directories of tasks that no
// longer exist (deleted while the executor was down, or after their runner ended): a deleted
// ExecutorTask's logs and archives have nobody left to fetch them.
func (e *Executor) sweepDirs(ctx context.Context, interval time.Duration) {
	for {
		if err := e.removeOrphanDirs(ctx); err != nil && ctx.Err() == nil {
			ctrl.LoggerFrom(ctx).Error(err, "removing the directories of deleted tasks")
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

func (e *Executor) removeOrphanDirs(ctx context.Context) error {
	root := filepath.Join(e.opts.DataDir, "tasks")
	entries, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	var list rsv1.ExecutorTaskList
	if err := e.client.List(ctx, &list, client.InNamespace(e.opts.Namespace)); err != nil {
		return fmt.Errorf("listing executor tasks: %w", err)
	}
	exists := make(map[types.UID]bool, len(list.Items))
	for i := range list.Items {
		exists[list.Items[i].UID] = true
	}
	e.mu.Lock()
	for uid := range e.runners {
		exists[uid] = true
	}
	e.mu.Unlock()
	var orphans []types.UID
	for _, d := range entries {
		if uid := types.UID(d.Name()); !exists[uid] {
			orphans = append(orphans, uid)
		}
	}
	if len(orphans) == 0 {
		return nil
	}
	// Double-check live: the cache may not show a task created a moment ago.
	var live rsv1.ExecutorTaskList
	if err := e.reader.List(ctx, &live, client.InNamespace(e.opts.Namespace), client.MatchingLabels{rsv1.LabelExecutor: e.opts.Name}); err != nil {
		return fmt.Errorf("listing executor tasks: %w", err)
	}
	for _, uid := range orphans {
		if slices.ContainsFunc(live.Items, func(et rsv1.ExecutorTask) bool { return et.UID == uid }) {
			continue
		}
		ctrl.LoggerFrom(ctx).Info("removing the directory of a deleted task", "uid", uid)
		if err := os.RemoveAll(e.taskDir(uid)); err != nil {
			return err
		}
	}
	return nil
}

// wait waits for the runners to end.
func (e *Executor) wait() { _ = e.waitRunners(context.Background()) }

// waitRunners waits for the runners to end, or ctx.
func (e *Executor) waitRunners(ctx context.Context) error {
	for {
		e.mu.Lock()
		n := len(e.runners)
		e.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// taskDir is the host directory shared with a task's toolbox.
func (e *Executor) taskDir(uid types.UID) string {
	return filepath.Join(e.opts.DataDir, "tasks", string(uid))
}

// Reconcile implements reconcile.Reconciler for the executor's ExecutorTasks.
func (e *Executor) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	et := &rsv1.ExecutorTask{}
	if err := e.client.Get(ctx, req.NamespacedName, et); err != nil {
		if apierrors.IsNotFound(err) {
			e.forget(ctx, req.Name)
			e.wakeWaiting(ctx)
		}
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if et.Spec.Executor != e.opts.Name {
		return reconcile.Result{}, nil
	}
	if et.Spec.ExecutorUID != string(e.uid) {
		// Scheduled on an earlier registration of this name that was removed: never run it.
		return reconcile.Result{}, e.driver.Remove(ctx, string(et.UID))
	}
	e.mu.Lock()
	r := e.runners[et.UID]
	e.mu.Unlock()
	if r != nil {
		if et.Spec.Stop {
			r.stop()
		}
		return reconcile.Result{}, nil
	}

	switch phase := et.Status.Phase; {
	case phase.IsFinal():
		e.wakeWaiting(ctx) // its slot is free once its runner is gone, which it is here
		// The manager says that a task's fetch is recorded over HTTP (serveFetched); one before
		// it did with this annotation.
		if et.Annotations[rsv1.AnnotationFetched] != "" {
			if err := os.RemoveAll(e.taskDir(et.UID)); err != nil {
				return reconcile.Result{}, fmt.Errorf("removing fetched task data: %w", err)
			}
		}
		return reconcile.Result{}, nil
	case phase == "" || phase == rsv1.TaskPhaseNotStarted:
		return e.startOrAdopt(ctx, et)
	case phase == rsv1.TaskPhaseRunning:
		_, err := e.driver.Inspect(ctx, string(et.UID))
		if errors.Is(err, ErrNotFound) {
			return reconcile.Result{}, e.finish(ctx, et, rsv1.TaskPhaseFailed, "container lost: the task was started but its container is gone; it is not run again", nil)
		}
		if err != nil {
			return reconcile.Result{}, err
		}
		log.Info("adopting running task", "executorTask", et.Name)
		e.startRunner(et, false)
	}
	return reconcile.Result{}, nil
}

// startOrAdopt starts a task nothing was recorded of, or adopts its containers. The executor
// writes nothing of a task before its containers exist (issue 10: a task shorter than
// RunningStatusDelay costs one status write, its final one); their names, deterministic per task,
// are the lock instead: a create of a taken name fails, and their labels find them again. So a task
// NotStarted in the apiserver may have been started by an earlier process of this executor that
// stopped before its first status write. The task's directory tells: the executor prepares it before
// it creates any container, and removes it only once the task is final and fetched, or deleted.
func (e *Executor) startOrAdopt(ctx context.Context, et *rsv1.ExecutorTask) (reconcile.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	if prepared, at := e.prepared(et.UID); prepared {
		_, err := e.driver.Inspect(ctx, string(et.UID))
		switch {
		case errors.Is(err, ErrNotFound):
			// Stopped between preparing and creating, or created, run and removed since (by hand,
			// a prune): nothing tells which, so it is not run again (at most once).
			return reconcile.Result{}, e.finish(ctx, et, rsv1.TaskPhaseFailed, "container lost: the executor prepared the task and stopped before recording its start, and the task has no container; it may have run, so it is not run again", nil)
		case err != nil:
			return reconcile.Result{}, err
		}
		if why := e.gate.shut(); why != "" {
			// Adopting lets the toolbox begin (release): not while a sibling may be removing this
			// executor's pods.
			log.Info("not adopting task", "executorTask", et.Name, "because", why)
			return reconcile.Result{RequeueAfter: e.opts.RenewInterval}, nil
		}
		log.Info("adopting a task started before a restart, whose start was not recorded", "executorTask", et.Name)
		et.Status.StartTime = &at // recorded with its Running or final status
		e.startRunner(et, false)
		return reconcile.Result{}, nil
	}
	if et.Spec.Stop {
		return reconcile.Result{}, e.finish(ctx, et, rsv1.TaskPhaseStopped, "stopped before it started", nil)
	}
	if msg := e.refuse(et); msg != "" {
		return reconcile.Result{}, e.finish(ctx, et, rsv1.TaskPhaseFailed, msg, nil)
	}
	if why := e.gate.shut(); why != "" {
		// Not now, maybe never: a sibling may be removing this executor's pods (at most once
		// over liveness). Tried again once the Lease is renewed; if the executor is removed
		// instead, the task fails with ExecutorRemoved.
		log.Info("not starting task", "executorTask", et.Name, "because", why)
		return reconcile.Result{RequeueAfter: e.opts.RenewInterval}, nil
	}
	e.starting.Lock()
	defer e.starting.Unlock()
	if ok, err := e.mayStart(ctx, et); err != nil || !ok {
		// Past ActiveTasksLimit: it waits, not started, until a running task ends (wakeWaiting);
		// the requeue only guards against a missed wake.
		return reconcile.Result{RequeueAfter: slotRecheck}, err
	}
	log.Info("starting task", "executorTask", et.Name)
	now := metav1.Now()
	et.Status.StartTime = &now // recorded with its Running or final status
	e.startRunner(et, true)
	return reconcile.Result{}, nil
}

// prepared says whether the executor prepared a task's directory (its task file), and when.
func (e *Executor) prepared(uid types.UID) (bool, metav1.Time) {
	fi, err := os.Lstat(filepath.Join(e.taskDir(uid), toolbox.TaskFileName))
	if err != nil {
		return false, metav1.Time{}
	}
	return true, metav1.NewTime(fi.ModTime())
}

// refuse says why the executor does not run a task, or "".
func (e *Executor) refuse(et *rsv1.ExecutorTask) string {
	if !e.opts.AllowPrivilegedContainers && slices.ContainsFunc(et.Spec.Task.Containers, func(c rsv1.Container) bool { return c.IsPrivileged() }) {
		return fmt.Sprintf("privileged containers are not allowed on executor %s (allowPrivilegedContainers is false)", e.opts.Name)
	}
	return ""
}

func initialSteps(et *rsv1.ExecutorTask) []rsv1.StepStatus {
	steps := toolbox.StepsFromTask(&et.Spec.Task)
	out := make([]rsv1.StepStatus, len(steps))
	for i, s := range steps {
		out[i] = rsv1.StepStatus{Name: s.Name, Phase: rsv1.StepPhaseNotStarted}
	}
	return out
}

// following says whether a runner follows task uid and has not written its final status yet.
func (e *Executor) following(uid types.UID) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.runners[uid]
	return r != nil && !r.ended.Load()
}

// unfetched says whether the executor still holds the copy of final task et that the manager has
// not said is recorded: its directory is there (serveFetched removes it, as does the task's
// deletion), and no manager before the HTTP word annotated it fetched.
func (e *Executor) unfetched(et *rsv1.ExecutorTask) bool {
	if et.Annotations[rsv1.AnnotationFetched] != "" {
		return false
	}
	_, err := os.Lstat(e.taskDir(et.UID))
	return err == nil
}

// forget stops the runner of a deleted ExecutorTask and removes its containers and data.
func (e *Executor) forget(ctx context.Context, name string) {
	e.mu.Lock()
	uid, ok := e.names[name]
	r := e.runners[uid]
	e.mu.Unlock()
	if !ok {
		return
	}
	switch {
	case r != nil && r.ended.Load():
		// Its final status is written and its runner is removing its containers (with other
		// ended tasks', EndedRemover): a removal of its own would be one request more.
	case r != nil:
		r.cancel()
		_ = e.driver.Remove(ctx, string(uid))
	default:
		_ = e.driver.Remove(ctx, string(uid))
	}
	// Nobody fetches what a deleted task left.
	if err := os.RemoveAll(e.taskDir(uid)); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "removing a deleted task's directory", "executorTask", name)
	}
}

// updateStatus applies change to a fresh copy of the task's status, retrying on conflict.
func (e *Executor) updateStatus(ctx context.Context, et *rsv1.ExecutorTask, change func(*rsv1.ExecutorTaskStatus)) error {
	first := true
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		cur := et.DeepCopy()
		if !first {
			if err := e.reader.Get(ctx, client.ObjectKeyFromObject(et), cur); err != nil {
				return err
			}
		}
		first = false
		before := cur.Status.DeepCopy()
		change(&cur.Status)
		if equality.Semantic.DeepEqual(before, &cur.Status) {
			return nil
		}
		if err := e.client.Status().Update(ctx, cur); err != nil {
			return err
		}
		*et = *cur
		return nil
	})
}

// finish writes a final status. A start time the task's status has not recorded yet (it ended
// within RunningStatusDelay) is taken from et, the runner's copy.
func (e *Executor) finish(ctx context.Context, et *rsv1.ExecutorTask, phase rsv1.TaskPhase, msg string, steps []rsv1.StepStatus) error {
	now := metav1.Now()
	start := et.Status.StartTime
	if start == nil {
		start = &now
	}
	return e.updateStatus(ctx, et, func(st *rsv1.ExecutorTaskStatus) {
		if st.Phase.IsFinal() {
			return
		}
		st.Phase, st.Message, st.EndTime = phase, rsv1.TruncateMessage(msg), &now
		if st.StartTime == nil {
			st.StartTime = start
		}
		if steps != nil {
			st.Steps = steps
		}
	})
}
