package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"runservice.dev/runservice/internal/shard"
)

// A rollout between an unsharded manager (--shards=off) and sharded replicas (auto), either way,
// has processes of both modes running at once: the unsharded leader acts on every run, a sharded
// replica on the runs labelled with its name. Two gates keep them from acting on the same runs,
// both judged on the leader-election Lease, which the two modes share:
//
//   - A sharded replica leads under its membership identity (shard.Membership.Identity), and starts
//     its per-run controllers only once the leader-election Lease is held by a live member of the
//     ring (memberLeads): not while an unsharded manager leads, nor while nobody does.
//   - An unsharded manager takes the leader-election Lease only while no membership Lease is live
//     (unshardedLock): it waits while one is, and once it has written the Lease it reads the ring's
//     Leases live and gives the Lease back at once when a member is there.
//
// Each side writes its own Lease before it reads the other's, so of a replica joining the ring and
// an unsharded manager taking the lead at the same moment, at least one sees the other and waits.
// Leadership stays with the sharded replicas while any is live, so their sharder and the leader's
// work go on, and a replica restarted meanwhile finds a member leading. Neither gate touches the
// readiness probe: a rollout waits for new pods to be ready before it stops old ones.

// runWorkHeld is 1 (per manager of the process) while a gate holds back a manager's run work.
var runWorkHeld = prometheus.NewGauge(prometheus.GaugeOpts{
	Name: "runservice_shard_run_work_held",
	Help: "Managers holding back their run work because a manager of the other --shards mode is live (a rollout under way): a sharded replica while no member of the ring leads, an unsharded manager while members are live. The log says who.",
})

func init() { metrics.Registry.MustRegister(runWorkHeld) }

// leaderElectionID is the name of the manager's leader-election Lease.
const leaderElectionID = "runservice-manager.runservice.dev"

// leaderLock is the manager's leader-election lock under identity, as controller-runtime would
// build it (a Lease named leaderElectionID in the leader-election namespace).
func leaderLock(cfg *rest.Config, opts *Options, identity string, renewDeadline time.Duration) (*resourcelock.LeaseLock, error) {
	ns := opts.LeaderElectionNS
	if ns == "" {
		b, err := os.ReadFile(serviceAccountNamespace)
		if err != nil {
			return nil, errors.New("--leader-elect: the leader-election namespace is unknown: set --leader-election-namespace")
		}
		ns = strings.TrimSpace(string(b))
	}
	cfg = rest.AddUserAgent(rest.CopyConfig(cfg), "leader-election")
	cfg.Timeout = max(renewDeadline/2, time.Second) // one hung request must not cost the lead
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the leader-election client: %w", err)
	}
	return &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: ns, Name: leaderElectionID},
		Client:     cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}, nil
}

// unshardedIdentity is an unsharded manager's leader identity, controller-runtime's: the host name
// and a uuid.
func unshardedIdentity() string {
	host, _ := os.Hostname()
	return host + "_" + string(uuid.NewUUID())
}

// heldLog logs, once per wait, why a gate holds back run work, and counts it in runWorkHeld.
type heldLog struct{ held bool }

func (h *heldLog) hold(msg string, kv ...any) {
	if !h.held {
		h.held = true
		runWorkHeld.Inc()
		ctrl.Log.WithName("shard").Info(msg, kv...)
	}
}

func (h *heldLog) release(msg string, kv ...any) {
	if h.held {
		h.held = false
		runWorkHeld.Dec()
		ctrl.Log.WithName("shard").Info(msg, kv...)
	}
}

// memberLeads is a sharded replica's gate: open once the leader-election Lease is held by a live
// member of the ring. It stays open: an unsharded manager does not take the lead while this
// replica is live.
type memberLeads struct {
	lock  *resourcelock.LeaseLock
	view  *shard.LeaseView
	retry time.Duration

	once sync.Once
	open chan struct{}
}

// newMemberLeads returns the gate of the replica whose leader-election lock is lock (read through
// a lock of its own: a LeaseLock keeps what it read last, for the elector's next write).
func newMemberLeads(lock *resourcelock.LeaseLock, view *shard.LeaseView) *memberLeads {
	probe := &resourcelock.LeaseLock{LeaseMeta: lock.LeaseMeta, Client: lock.Client, LockConfig: lock.LockConfig}
	return &memberLeads{lock: probe, view: view, retry: time.Second, open: make(chan struct{})}
}

// wait returns once the gate is open, or ctx's error.
func (g *memberLeads) wait(ctx context.Context) error {
	g.once.Do(func() { go g.watch(ctx) })
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *memberLeads) watch(ctx context.Context) {
	var log heldLog
	defer log.release("stopped while holding back run work")
	changes := g.view.Subscribe()
	for {
		// Read live (a Get, not a cache): this replica's membership Lease is written already.
		holder := ""
		rec, _, err := g.lock.Get(ctx)
		if err == nil {
			holder = rec.HolderIdentity
		}
		if holder != "" && g.view.LiveHolder(holder) {
			log.release("a member of the shard ring leads: this replica's run work starts", "leader", holder)
			close(g.open)
			return
		}
		if err != nil && !apierrors.IsNotFound(err) {
			holder = "unknown: " + err.Error()
		}
		log.hold("holding back this replica's run work until a member of the shard ring leads: the leader-election Lease is held by no live member "+
			"(an unsharded manager during a rollout of --shards, or no leader yet)", "lease", g.lock.Describe(), "holder", holder)
		select {
		case <-ctx.Done():
			return
		case <-changes:
		case <-time.After(g.retry):
		}
	}
}

// gatedManager is the manager that a sharded replica's controllers are set up with: its
// controllers that run on every replica (the per-run ones) start once the gate opens.
type gatedManager struct {
	ctrl.Manager
	gate *memberLeads
}

// Add implements manager.Manager.
func (m gatedManager) Add(r manager.Runnable) error {
	if _, ok := r.(controller.Controller); ok {
		if le, ok := r.(manager.LeaderElectionRunnable); ok && !le.NeedLeaderElection() {
			r = gatedRunnable{Runnable: r, gate: m.gate}
		}
	}
	return m.Manager.Add(r)
}

type gatedRunnable struct {
	manager.Runnable
	gate *memberLeads
}

// Start starts the runnable once the gate is open (nothing when the manager stops before).
func (g gatedRunnable) Start(ctx context.Context) error {
	if err := g.gate.wait(ctx); err != nil {
		return nil
	}
	return g.Runnable.Start(ctx)
}

// NeedLeaderElection: the gated runnables run on every replica.
func (gatedRunnable) NeedLeaderElection() bool { return false }

// unshardedLock is an unsharded manager's leader-election lock: it takes the lead only while no
// member of the shard ring is live (see above). Once it leads, it is the plain lock.
type unshardedLock struct {
	*resourcelock.LeaseLock
	view   *shard.LeaseView
	leases kubernetes.Interface
	ringNS string
	// ctx is the manager's: the view's informer lives as long.
	ctx context.Context

	mu      sync.Mutex
	started bool
	changes <-chan struct{}
	log     heldLog
	leading atomic.Bool
}

var _ resourcelock.Interface = (*unshardedLock)(nil)

// Get implements resourcelock.Interface: before it leads, it waits until no member is live.
func (l *unshardedLock) Get(ctx context.Context) (*resourcelock.LeaderElectionRecord, []byte, error) {
	if !l.leading.Load() {
		if err := l.waitNoMembers(ctx); err != nil {
			return nil, nil, err
		}
	}
	return l.LeaseLock.Get(ctx)
}

// Create implements resourcelock.Interface.
func (l *unshardedLock) Create(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	if err := l.LeaseLock.Create(ctx, rec); err != nil || l.leading.Load() {
		return err
	}
	return l.confirm(ctx, rec)
}

// Update implements resourcelock.Interface.
func (l *unshardedLock) Update(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	if err := l.LeaseLock.Update(ctx, rec); err != nil || l.leading.Load() {
		return err
	}
	return l.confirm(ctx, rec)
}

// confirm follows the write that took the lead: the ring's Leases read live must show no live
// member, else the Lease is given back at once and the attempt fails.
func (l *unshardedLock) confirm(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	ring, err := l.view.Sync(ctx)
	if err == nil && ring.Len() == 0 {
		l.leading.Store(true)
		return nil
	}
	now := metav1.Now()
	released := resourcelock.LeaderElectionRecord{LeaderTransitions: rec.LeaderTransitions, LeaseDurationSeconds: 1, RenewTime: now, AcquireTime: now}
	if rerr := l.LeaseLock.Update(ctx, released); rerr != nil {
		err = errors.Join(err, fmt.Errorf("giving the lead back: %w", rerr))
	}
	if err != nil {
		return fmt.Errorf("not leading: the shard ring could not be read: %w", err)
	}
	return fmt.Errorf("not leading: members %v of the shard ring are live (a rollout of --shards): an unsharded manager leads once they are gone", ring.Members())
}

// waitNoMembers returns once the view shows no live member (the ring's informer started first).
func (l *unshardedLock) waitNoMembers(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.started {
		l.changes = l.view.Subscribe()
		if err := l.view.Start(l.ctx, l.leases, l.ringNS); err != nil {
			return err
		}
		l.started = true
	}
	for {
		ring := l.view.Ring()
		if ring.Len() == 0 {
			l.log.release("no member of the shard ring is live any more: this unsharded manager may lead")
			return nil
		}
		l.log.hold("holding back this unsharded manager's lead (and so its run work): members of the shard ring are live "+
			"(a rollout of --shards); it leads once they are gone", "members", ring.Members(), "namespace", l.ringNS)
		select {
		case <-ctx.Done():
			l.log.release("stopped while holding back the lead")
			return ctx.Err()
		case <-l.changes:
		}
	}
}

// leaderElection gives the manager's options its leader-election lock, under the replica's
// identity and behind its gate, and returns the manager its controllers are set up with: mgr, or
// for a sharded replica mgr with its per-run controllers behind the gate (call it once mgr exists).
func leaderElection(ctx context.Context, cfg *rest.Config, opts *Options, s *sharding, mopts *ctrl.Options) (func(ctrl.Manager) ctrl.Manager, error) {
	plain := func(m ctrl.Manager) ctrl.Manager { return m }
	if !opts.LeaderElection {
		if s == nil {
			if err := aloneBesideTheRing(ctx, cfg, opts); err != nil {
				return nil, err
			}
		}
		return plain, nil // no lock to judge the other mode by; several managers need --leader-elect
	}
	identity := unshardedIdentity()
	if s != nil {
		identity = s.member.Identity
	}
	lock, err := leaderLock(cfg, opts, identity, *mopts.RenewDeadline)
	if err != nil {
		return nil, err
	}
	if s != nil {
		mopts.LeaderElectionResourceLockInterface = lock
		gate := newMemberLeads(lock, s.view)
		return func(m ctrl.Manager) ctrl.Manager { return gatedManager{Manager: m, gate: gate} }, nil
	}
	ns, err := ringNamespace(opts)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating the shard ring's client: %w", err)
	}
	mopts.LeaderElectionResourceLockInterface = &unshardedLock{LeaseLock: lock, view: shard.NewLeaseView(""), leases: cs, ringNS: ns, ctx: ctx}
	return plain, nil
}

// aloneBesideTheRing refuses an unsharded manager without leader election while members of the
// shard ring are live in its namespace (a `go run ./cmd/manager` against a sharded deployment): an
// elected one waits for them to go (unshardedLock), this one has no lock to wait on and would act
// on their runs beside them. A Lease counts as live until its renewal plus its duration, as its
// holder recorded them. A manager whose namespace is unknown (out of a cluster, no --namespace) has
// no ring to look at.
func aloneBesideTheRing(ctx context.Context, cfg *rest.Config, opts *Options) error {
	ns, err := ringNamespace(opts)
	if err != nil {
		return nil
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating the shard ring's client: %w", err)
	}
	list, err := cs.CoordinationV1().Leases(ns).List(ctx, metav1.ListOptions{LabelSelector: shard.RingLabel + "=" + shard.RingName})
	if err != nil {
		return fmt.Errorf("looking for live members of the shard ring in namespace %s: %w", ns, err)
	}
	now := time.Now()
	var live []string
	for _, l := range list.Items {
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
			continue
		}
		if now.Before(l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)) {
			live = append(live, strings.TrimPrefix(l.Name, shard.LeasePrefix))
		}
	}
	if len(live) > 0 {
		return fmt.Errorf("members of the shard ring are live in namespace %s (%s): an unsharded manager without --leader-elect would act on their runs beside them; "+
			"run it with --leader-elect (it then waits for them to go) or --shards=auto (it joins them), or stop them first", ns, strings.Join(live, ", "))
	}
	return nil
}
