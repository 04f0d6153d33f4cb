package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"

	"runservice.dev/runservice/internal/shard"
)

// Values of Options.Shards.
const (
	// ShardsAuto makes the replica a member of the shard ring: it holds a membership Lease, owns
	// the runs the ring gives it (and only those are in its caches), and its per-run controllers
	// work beside the other replicas'.
	ShardsAuto = "auto"
	// ShardsOff is an unsharded manager: the leader owns every run.
	ShardsOff = "off"
)

// serviceAccountNamespace is where a pod finds its namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// sharding is what a sharded replica adds to its manager: its membership and its view of the ring.
type sharding struct {
	member *shard.Membership
	view   *shard.LeaseView
	leases kubernetes.Interface
	// lost, when set, is called on the loss of the membership Lease (cmd/manager exits at once).
	lost func()
}

// newSharding checks the shard options and, with ShardsAuto, returns the replica's membership, its
// view of the ring (also set as opts.Controllers.Shard) and cfg with a user agent naming the member:
// each replica's requests are told apart in the apiserver's audit log.
func newSharding(cfg *rest.Config, opts *Options) (*sharding, *rest.Config, error) {
	switch opts.Shards {
	case "", ShardsOff:
		return nil, cfg, nil
	case ShardsAuto:
	default:
		return nil, nil, fmt.Errorf("--shards: %q is neither %s nor %s", opts.Shards, ShardsAuto, ShardsOff)
	}
	me := opts.ShardIdentity
	if err := shard.ValidateMember(me); err != nil {
		return nil, nil, fmt.Errorf("--shard-identity: %w", err)
	}
	ns, err := ringNamespace(opts)
	if err != nil {
		return nil, nil, err
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	cfg.UserAgent += " shard/" + me
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the membership Lease client: %w", err)
	}
	s := &sharding{
		member: &shard.Membership{Client: cs.CoordinationV1(), Namespace: ns, Member: me, Duration: opts.ShardLeaseDuration, Identity: shard.NewIdentity(me)},
		view:   shard.NewLeaseView(me),
		leases: cs,
		lost:   opts.OnShardLeaseLost,
	}
	opts.Controllers.Shard, opts.Controllers.ShardLeaseDuration = s.view, opts.ShardLeaseDuration
	return s, cfg, nil
}

// ringNamespace is where the shard ring's Leases are: the manager's namespace.
func ringNamespace(opts *Options) (string, error) {
	ns := opts.Namespace
	if ns == "" {
		ns = opts.LeaderElectionNS
	}
	if ns != "" {
		return ns, nil
	}
	b, err := os.ReadFile(serviceAccountNamespace)
	if err != nil {
		return "", errors.New("the manager's namespace, where the shard ring's Leases are, is unknown: set --namespace (or $POD_NAMESPACE)")
	}
	return strings.TrimSpace(string(b)), nil
}

// shardedManager is the manager of a ring member: Start joins the ring before the manager starts
// and leaves it after the manager has stopped.
type shardedManager struct {
	ctrl.Manager
	*sharding
}

// Start watches the ring, takes the membership Lease, runs the manager and, once it has stopped
// (no controller acts on a run any more), releases the Lease, so that the others take its runs
// at once instead of after the Lease's expiry. When the Lease is lost the manager stops and Start
// returns shard.ErrLeaseLost.
func (m *shardedManager) Start(ctx context.Context) error {
	log := ctrl.Log.WithName("shard")
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if err := m.view.Start(ctx, m.leases, m.member.Namespace); err != nil {
		return err
	}
	release, err := m.member.Hold(ctx, func() {
		log.Error(shard.ErrLeaseLost, "stopping: another replica may take this one's runs", "member", m.member.Member)
		if m.lost != nil {
			m.lost()
		}
		cancel(shard.ErrLeaseLost)
	})
	if err != nil {
		return err
	}
	log.Info("joined the shard ring", "member", m.member.Member, "namespace", m.member.Namespace)
	// Until the ring shows this member, the webhook would leave its runs to the sharder: wait a
	// moment for the informer to see the Lease just taken.
	for deadline := time.Now().Add(5 * time.Second); !m.view.Ring().Has(m.member.Member) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	err = m.Manager.Start(ctx)
	release()
	if errors.Is(context.Cause(ctx), shard.ErrLeaseLost) {
		return shard.ErrLeaseLost
	}
	return err
}
