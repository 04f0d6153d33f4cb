package shard

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
)

// A Subscriber tells when its ring changes.
type Subscriber interface {
	// Subscribe returns a channel that receives a value after each change of the ring (changes in
	// quick succession may be told once: read the ring again).
	Subscribe() <-chan struct{}
}

// LeaseView is a View whose ring is the members whose membership Leases (Membership) are live,
// seen through a small informer on the ring's Leases in the manager's namespace.
//
// A member's name is its Lease's name without LeasePrefix. A Lease is live until its duration has passed since this replica last saw it change, by this
// replica's clock, as client-go's leader election judges a leader's: the holder's clock (its
// renewTime) is never compared with ours, so clock skew between replicas does not shorten a
// member's life. A Lease seen for the first time counts from then: a new replica takes a member for
// live one Lease duration longer than the others may, never shorter. A Lease whose holder is empty
// (released by a member that stopped cleanly) is gone at once.
type LeaseView struct {
	subscribers
	me   string
	ring atomic.Pointer[Ring]

	cs        kubernetes.Interface // set by Start
	namespace string

	mu     sync.Mutex
	leases map[string]observedLease // by Lease name
	kick   chan struct{}
	now    func() time.Time
}

type observedLease struct {
	member   string // from the Lease's name
	holder   string
	renewed  metav1.MicroTime
	duration time.Duration
	seen     time.Time // when this replica saw holder or renewed change
}

// NewLeaseView returns the view of member me; its ring is empty until Start has synced.
func NewLeaseView(me string) *LeaseView {
	v := &LeaseView{me: me, leases: map[string]observedLease{}, kick: make(chan struct{}, 1), now: time.Now}
	v.ring.Store(NewRing())
	return v
}

// Me implements View.
func (v *LeaseView) Me() string { return v.me }

// Ring implements View.
func (v *LeaseView) Ring() *Ring { return v.ring.Load() }

// Start watches the ring's Leases in namespace until ctx ends; it returns once the first list is
// seen (the ring is then what the Leases say).
func (v *LeaseView) Start(ctx context.Context, cs kubernetes.Interface, namespace string) error {
	v.cs, v.namespace = cs, namespace
	f := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = RingLabel + "=" + RingName }))
	inf := f.Coordination().V1().Leases().Informer()
	_, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { v.observe(o) },
		UpdateFunc: func(_, o any) { v.observe(o) },
		DeleteFunc: func(o any) {
			if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if l, ok := o.(*coordinationv1.Lease); ok {
				v.mu.Lock()
				delete(v.leases, l.Name)
				v.mu.Unlock()
				v.poke()
			}
		},
	})
	if err != nil {
		return fmt.Errorf("watching the shard ring's Leases: %w", err)
	}
	f.Start(ctx.Done())
	if !toolscache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return fmt.Errorf("watching the shard ring's Leases: %w", ctx.Err())
	}
	v.update()
	go v.run(ctx)
	return nil
}

func (v *LeaseView) observe(o any) {
	l, ok := o.(*coordinationv1.Lease)
	if !ok {
		return
	}
	ol := observedLease{member: strings.TrimPrefix(l.Name, LeasePrefix)}
	if l.Spec.HolderIdentity != nil {
		ol.holder = *l.Spec.HolderIdentity
	}
	if l.Spec.RenewTime != nil {
		ol.renewed = *l.Spec.RenewTime
	}
	if l.Spec.LeaseDurationSeconds != nil {
		ol.duration = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	v.mu.Lock()
	prev, ok := v.leases[l.Name]
	if ok && prev.holder == ol.holder && prev.renewed.Equal(&ol.renewed) {
		ol.seen = prev.seen
	} else {
		ol.seen = v.now()
	}
	v.leases[l.Name] = ol
	v.mu.Unlock()
	v.poke()
}

func (v *LeaseView) poke() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

// run recomputes the ring after each Lease event and when the next live Lease expires.
func (v *LeaseView) run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		next := v.update()
		t.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-v.kick:
		case <-t.C:
		}
	}
}

// update sets the ring from the live Leases and tells the subscribers when it changed; it returns
// how long until the next live Lease expires.
func (v *LeaseView) update() time.Duration {
	now := v.now()
	v.mu.Lock()
	members, next := liveMembers(v.leases, now)
	ring := NewRing(members...)
	changed := !slices.Equal(ring.Members(), v.ring.Load().Members())
	if changed {
		v.ring.Store(ring)
	}
	v.mu.Unlock()
	if changed {
		v.tell()
	}
	return next
}

// Sync reads the ring's Leases from the apiserver (a list, not the informer, which may lag behind
// a Lease just taken) into the view, and returns the ring then. Call it after Start.
func (v *LeaseView) Sync(ctx context.Context) (*Ring, error) {
	list, err := v.cs.CoordinationV1().Leases(v.namespace).List(ctx, metav1.ListOptions{LabelSelector: RingLabel + "=" + RingName})
	if err != nil {
		return nil, fmt.Errorf("listing the shard ring's Leases: %w", err)
	}
	for i := range list.Items {
		v.observe(&list.Items[i])
	}
	v.update()
	return v.Ring(), nil
}

// LiveHolder says whether identity holds a live membership Lease: whether the process of that
// identity (the holder of the manager's leader-election Lease, say) is a live member of the ring.
func (v *LeaseView) LiveHolder(identity string) bool {
	now := v.now()
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, l := range v.leases {
		if l.holder == identity && l.left(now) > 0 {
			return true
		}
	}
	return false
}

// left is how long l stays live after now (0 or less: not live): a Lease without a holder (released)
// or a duration is not live; another until its duration has passed since this replica saw it change.
func (l observedLease) left(now time.Time) time.Duration {
	if l.holder == "" || l.duration <= 0 {
		return 0
	}
	return l.seen.Add(l.duration).Sub(now)
}

// liveMembers returns the holders of the Leases live at now, and how long until the first of them
// expires (an hour when none is live).
func liveMembers(leases map[string]observedLease, now time.Time) ([]string, time.Duration) {
	next := time.Hour
	var members []string
	for _, name := range slices.Sorted(maps.Keys(leases)) {
		l := leases[name]
		left := l.left(now)
		if left <= 0 {
			continue
		}
		members = append(members, l.member)
		// A moment past the expiry, so that the timer finds it expired.
		next = min(next, left+time.Millisecond)
	}
	return members, next
}
