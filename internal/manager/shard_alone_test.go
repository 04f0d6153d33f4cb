package manager_test

import (
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/shard"
)

// TestAnUnelectedUnshardedManagerRefusesToStartBesideMembers: an unsharded manager without
// --leader-elect has no lock to wait on (an elected one waits for the ring's members to go), so
// started while members of the shard ring are live in its namespace (a `go run ./cmd/manager`
// against a sharded cluster) it would act on their runs beside them: it refuses to start, naming
// the members and the flags that fit. Once their Leases have expired it starts.
func TestAnUnelectedUnshardedManagerRefusesToStartBesideMembers(t *testing.T) {
	ctx := t.Context()
	ring := newNamespace(t, "alone")
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: shard.LeaseName("replica-live"), Namespace: ring, Labels: map[string]string{shard.RingLabel: shard.RingName}},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To(shard.NewIdentity("replica-live")),
			LeaseDurationSeconds: ptr.To[int32](15),
			RenewTime:            ptr.To(metav1.NowMicro()),
		},
	}
	if err := k8s.Create(ctx, lease); err != nil {
		t.Fatal(err)
	}
	opts := env.ManagerOptions()
	opts.Namespace = ring
	_, err := manager.New(ctx, env.Config, opts)
	if err == nil || !strings.Contains(err.Error(), "replica-live") || !strings.Contains(err.Error(), "--leader-elect") {
		t.Fatalf("an unsharded manager without --leader-elect beside a live member: got %v, want a refusal naming the member and --leader-elect", err)
	}
	t.Log(err)
	lease.Spec.RenewTime = ptr.To(metav1.NewMicroTime(time.Now().Add(-time.Minute)))
	if err := k8s.Update(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if _, err := manager.New(ctx, env.Config, opts); err != nil {
		t.Fatalf("with the member's Lease expired: %v", err)
	}
}
