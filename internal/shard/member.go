package shard

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Membership Leases: each replica holds one, in the manager's namespace, labelled as a member of
// the ring, with its member name as the holder.
const (
	// RingLabel marks a Lease as a ring member's; its value is the ring's name.
	RingLabel = "runservice.dev/shard-ring"
	// RingName is the manager's ring.
	RingName = "runservice-manager"
	// LeasePrefix starts the name of a member's Lease: runservice-shard-<member>.
	LeasePrefix = "runservice-shard-"
)

// ErrLeaseLost is the cause of a replica's stop when it could not renew its Lease within the renew
// deadline: the others may take its runs once the Lease expires, so it must act on none of them.
var ErrLeaseLost = errors.New("the shard membership Lease was lost")

// LeaseName is the name of member's Lease.
func LeaseName(member string) string { return LeasePrefix + member }

// ValidateMember refuses a member name that cannot be a label value (it is the value of
// runservice.dev/shard on the member's runs: at most 63 characters, alphanumerics, '-', '_', '.')
// or part of its Lease's name (a DNS subdomain: lowercase). A replica with such a name refuses to
// start rather than hold a Lease no run could ever be labelled with.
func ValidateMember(name string) error {
	if name == "" {
		return errors.New("shard identity: must not be empty (set --shard-identity, or $POD_NAME)")
	}
	if errs := validation.IsValidLabelValue(name); len(errs) > 0 {
		return fmt.Errorf("shard identity %q: must be a valid label value: %s", name, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(LeaseName(name)); len(errs) > 0 {
		return fmt.Errorf("shard identity %q: Lease name %s: %s", name, LeaseName(name), strings.Join(errs, "; "))
	}
	return nil
}

// Membership holds one replica's Lease in the ring, with client-go's leader election on a lock of
// its own (no other replica competes for it): the same renewal, deadlines and release as a leader's.
// The Lease's name says the member; its holder is the member name and a token of this process, so
// that a second process with the same member name (a replaced pod of a StatefulSet, or a mistake)
// finds the Lease held by another and waits until the first one's expires or is released.
type Membership struct {
	Client    coordinationv1client.LeasesGetter
	Namespace string
	Member    string
	// Duration is the Lease's duration: how long after its last renewal the others take the
	// member for gone. The member gives up (lost) when it could not renew for 2/3 of it.
	Duration time.Duration
	// Identity is the Lease's holder while this process holds it (default: NewIdentity(Member)).
	// A sharded replica leads the manager's election under the same identity, so that the others
	// can tell a member leads (LeaseView.LiveHolder).
	Identity string
}

// DefaultLeaseDuration is a membership Lease's duration when none is given.
const DefaultLeaseDuration = 15 * time.Second

// NewIdentity returns a holder identity for member: its name and a token of this process.
func NewIdentity(member string) string { return member + "/" + rand.Text()[:8] }

// Timings derived from the Lease duration, in client-go's proportions (15s, 10s, 2s by default
// for controller-runtime's leader; here 15s, 10s, 2.5s).
func (m *Membership) timings() (lease, renew, retry time.Duration) {
	lease = m.Duration
	if lease <= 0 {
		lease = DefaultLeaseDuration
	}
	return lease, lease * 2 / 3, lease / 6
}

// Hold acquires the member's Lease, waiting until it holds it or ctx ends, and keeps renewing it.
// lost is called once if a renewal fails past the renew deadline (the apiserver unreachable, or the
// Lease taken by another holder): the replica must stop at once. release stops renewing and gives
// the Lease up (emptying its holder), so that the others see the member leave without waiting for
// the expiry; call it only once the replica has stopped acting on its runs.
func (m *Membership) Hold(ctx context.Context, lost func()) (release func(), err error) {
	if err := ValidateMember(m.Member); err != nil {
		return nil, err
	}
	lease, renew, retry := m.timings()
	identity := m.Identity
	if identity == "" {
		identity = NewIdentity(m.Member) // each Hold its own: a second one waits for the first
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: m.Namespace, Name: LeaseName(m.Member)},
		Client:     m.Client,
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
		Labels:     map[string]string{RingLabel: RingName},
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	held := make(chan struct{})
	var releasing sync.Once
	var released bool
	var mu sync.Mutex
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		Name:            LeaseName(m.Member),
		LeaseDuration:   lease,
		RenewDeadline:   renew,
		RetryPeriod:     retry,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) { close(held) },
			OnStoppedLeading: func() {
				mu.Lock()
				quiet := released
				mu.Unlock()
				select {
				case <-held:
					if !quiet {
						lost()
					}
				default: // never held (ctx ended while waiting): nothing to lose
				}
			},
		},
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("shard membership of %s: %w", m.Member, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		le.Run(runCtx)
	}()
	release = func() {
		releasing.Do(func() {
			mu.Lock()
			released = true
			mu.Unlock()
			cancel()
			<-done
		})
	}
	select {
	case <-held:
		return release, nil
	case <-ctx.Done():
		release()
		return nil, fmt.Errorf("acquiring the shard membership Lease %s/%s: %w", m.Namespace, LeaseName(m.Member), ctx.Err())
	}
}
