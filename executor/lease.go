package executor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// One name, one process. The Executor's Lease is held as "<name>/<instance>" (rsv1.LeaseHolder),
// the instance made up by each process at start, so that a process can tell its own Lease from one
// another process of the same --name renews: two processes under one name would both register,
// renew, adopt and sweep the same tasks' containers.

// errDuplicate says that another process runs under this executor's name.
var errDuplicate = errors.New("another process runs as executor")

// newInstance makes this process's identity in its Lease. The host and process id tell whoever
// reads a refusal where the other process runs; the random part keeps it unique (in a container
// the pid is always 1, and a restart may get the same one).
func newInstance() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	host, _ := os.Hostname()
	return fmt.Sprintf("%s_%d_%s", host, os.Getpid(), hex.EncodeToString(b))
}

// holder is this process's holder identity.
func (e *Executor) holder() string { return rsv1.LeaseHolder(e.opts.Name, e.instance) }

// heldByOther says whether another process of this executor's name holds the Lease (one from
// before instances, holding it under the bare name, too), and returns its holder identity.
func (e *Executor) heldByOther(l *coordinationv1.Lease) (string, bool) {
	holder := ptr.Deref(l.Spec.HolderIdentity, "")
	name, _ := rsv1.ParseLeaseHolder(holder)
	return holder, name == e.opts.Name && holder != e.holder()
}

func (e *Executor) duplicate(l *coordinationv1.Lease, holder string) error {
	renewed := "never"
	if l.Spec.RenewTime != nil {
		renewed = l.Spec.RenewTime.UTC().Format(time.RFC3339)
	}
	what := "two processes under one name would both run its tasks: stop the other one, or give this one another --name"
	if e.holding {
		what = "it took the Lease over while this process's renewals were late: this one stops and leaves the tasks to it"
	}
	return fmt.Errorf("%w %s: process %s holds its Lease %s/%s (renewed %s); %s",
		errDuplicate, e.opts.Name, holder, l.Namespace, l.Name, renewed, what)
}

// waitLease waits, at start, until this process may take the Lease. While a sibling is cleaning up
// after this executor's earlier life, it waits for the claim to expire (a restart during the cleanup
// must not adopt pods being deleted). While another process of the name holds it, it waits for it
// to expire too, which is how a process killed before it could release the Lease is told from a
// live one: if the holder renews the Lease (or another takes it) meanwhile, a live process runs
// under the name, and this one refuses to run (errDuplicate), before it wrote anything.
func (e *Executor) waitLease(ctx context.Context) error {
	key := types.NamespacedName{Namespace: e.opts.Namespace, Name: e.opts.Name}
	log := ctrl.LoggerFrom(ctx)
	poll := min(time.Second, max(e.opts.RenewInterval/2, 100*time.Millisecond))
	var seen *coordinationv1.LeaseSpec // another process's hold, when first seen
	for {
		lease := &coordinationv1.Lease{}
		err := e.reader.Get(ctx, key, lease)
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading own lease: %w", err)
		}
		if leaseExpired(lease, time.Now()) {
			return nil
		}
		if by, claimed := claimedBy(lease, e.opts.Name); claimed {
			log.Info("a sibling is cleaning up after this executor's earlier life; waiting", "by", by)
			seen = nil
		} else if holder, other := e.heldByOther(lease); !other {
			return nil
		} else if seen == nil {
			log.Info("another process held this executor's Lease: waiting until it expires, unless that process renews it",
				"holder", holder, "renewed", lease.Spec.RenewTime)
			seen = lease.Spec.DeepCopy()
		} else if ptr.Deref(seen.HolderIdentity, "") != holder || !seen.RenewTime.Equal(lease.Spec.RenewTime) {
			return e.duplicate(lease, holder)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}

// releaseLease gives up this process's hold on the Lease when it stops of its own accord
// (SIGTERM): the holder is cleared, as client-go's leader election does, so that a restart takes
// over at once rather than wait for the Lease to expire to be sure this process is gone, and the
// manager sees at once that the executor stopped. The renewal time and duration stay: siblings
// count a dead member's expiry from them, as before.
func (e *Executor) releaseLease(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	lease := &coordinationv1.Lease{}
	if err := e.reader.Get(ctx, types.NamespacedName{Namespace: e.opts.Namespace, Name: e.opts.Name}, lease); err != nil {
		return // gone (left the group) or unreadable: it expires by itself
	}
	if ptr.Deref(lease.Spec.HolderIdentity, "") != e.holder() {
		return
	}
	lease.Spec.HolderIdentity = nil
	lease.Spec.AcquireTime = nil
	// A conflict means someone else wrote it since (a sibling's claim): it is not this process's.
	if err := e.client.Update(ctx, lease); err != nil && !apierrors.IsConflict(err) {
		ctrl.LoggerFrom(ctx).Error(err, "releasing the Lease; a restart waits until it expires")
	}
}
