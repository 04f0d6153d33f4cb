package shard_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"runservice.dev/runservice/internal/shard"
	"runservice.dev/runservice/internal/testenv"
)

var cs *kubernetes.Clientset

func TestMain(m *testing.M) {
	env, err := testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cs, err = kubernetes.NewForConfig(env.Config)
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	_ = env.Stop()
	os.Exit(code)
}

func namespace(t *testing.T, name string) string {
	t.Helper()
	_, err := cs.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return name
}

func waitRing(t *testing.T, v shard.View, within time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := v.Ring().Members()
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ring %v after %s, want %v", got, within, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLeaseViewSeesMembersComeAndGo: on the real apiserver, a replica's view of the ring is the
// members whose Leases are live: one that holds its Lease joins, one that releases it (a clean
// stop) leaves at once, one that stops renewing (a crash) leaves when its Lease expires and not
// before, and each change is told to the subscribers.
func TestLeaseViewSeesMembersComeAndGo(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := namespace(t, "ring-come-and-go")
	const d = 2 * time.Second
	member := func(name string) *shard.Membership {
		return &shard.Membership{Client: cs.CoordinationV1(), Namespace: ns, Member: name, Duration: d}
	}
	releaseA, err := member("manager-a").Hold(ctx, func() { t.Error("manager-a lost its Lease") })
	if err != nil {
		t.Fatal(err)
	}
	defer releaseA()

	view := shard.NewLeaseView("manager-a")
	changes := view.Subscribe()
	if err := view.Start(ctx, cs, ns); err != nil {
		t.Fatal(err)
	}
	waitRing(t, view, d, "manager-a")
	<-changes

	releaseB, err := member("manager-b").Hold(ctx, func() { t.Error("manager-b lost its Lease") })
	if err != nil {
		t.Fatal(err)
	}
	waitRing(t, view, d, "manager-a", "manager-b")
	select {
	case <-changes:
	case <-time.After(time.Second):
		t.Fatal("no change told when manager-b joined")
	}
	start := time.Now()
	releaseB()
	waitRing(t, view, d/2, "manager-a")
	t.Logf("a released Lease leaves the ring in %s", time.Since(start).Round(time.Millisecond))

	// A member that crashed: its Lease was renewed once and never again. A Lease in another ring,
	// or of no ring, is no member.
	crashed := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: shard.LeaseName("manager-c"), Namespace: ns, Labels: map[string]string{shard.RingLabel: shard.RingName}},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr.To("manager-c"), LeaseDurationSeconds: ptr.To[int32](2), RenewTime: ptr.To(metav1.NowMicro())},
	}
	if _, err := cs.CoordinationV1().Leases(ns).Create(ctx, crashed, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	other := crashed.DeepCopy()
	other.Name, other.Labels, other.Spec.HolderIdentity = "executor-x", nil, ptr.To("executor-x")
	if _, err := cs.CoordinationV1().Leases(ns).Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRing(t, view, d, "manager-a", "manager-c")
	seen := time.Now()
	waitRing(t, view, 2*d, "manager-a")
	if gone := time.Since(seen); gone < d-300*time.Millisecond {
		t.Fatalf("the crashed member left after %s, before its Lease's duration %s", gone, d)
	}
}

// TestMemberThatCannotRenewStops: a member whose Lease it cannot renew (here another holder took it
// and keeps renewing it, as a partitioned member would see) is told it lost the Lease within the
// renew deadline (2/3 of the duration), before the others take it for gone; and a second holder of
// the same name waits until the first one's Lease is free.
func TestMemberThatCannotRenewStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := namespace(t, "ring-lost")
	const d = 3 * time.Second
	lost := make(chan time.Time, 1)
	m := &shard.Membership{Client: cs.CoordinationV1(), Namespace: ns, Member: "manager-a", Duration: d}
	release, err := m.Hold(ctx, func() { lost <- time.Now() })
	if err != nil {
		t.Fatal(err)
	}
	defer release()

	// The same name again (a second process by mistake): it does not get the Lease while held.
	waitCtx, waitCancel := context.WithTimeout(ctx, d/2)
	defer waitCancel()
	if _, err := m.Hold(waitCtx, func() {}); err == nil {
		t.Fatal("a second holder of manager-a's Lease got it while the first one renews it")
	}

	leases := cs.CoordinationV1().Leases(ns)
	taken := time.Now()
	steal := func() error {
		l, err := leases.Get(ctx, shard.LeaseName("manager-a"), metav1.GetOptions{})
		if err != nil {
			return err
		}
		l.Spec.HolderIdentity, l.Spec.RenewTime = ptr.To("intruder"), ptr.To(metav1.NowMicro())
		_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		return err
	}
	for {
		if err := steal(); err == nil {
			break
		}
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
				_ = steal()
			}
		}
	}()
	select {
	case at := <-lost:
		if after := at.Sub(taken); after > d {
			t.Fatalf("the member was told its loss %s after, later than its Lease's duration %s", after, d)
		}
	case <-time.After(2 * d):
		t.Fatal("the member whose Lease was taken was never told it lost it")
	}
}

func TestValidateMember(t *testing.T) {
	for _, tc := range []struct {
		name, why string
	}{
		{"runservice-manager-7d9f8c6b5-x2x4q", ""},
		{"node-1.example.com", ""},
		{"", "must not be empty"},
		{strings.Repeat("a", 64), "must be a valid label value"},
		{"Manager-A", "Lease name"},
		{"manager_a", "Lease name"},
		{"-manager", "must be a valid label value"},
	} {
		err := shard.ValidateMember(tc.name)
		switch {
		case tc.why == "" && err != nil:
			t.Errorf("%q refused: %v", tc.name, err)
		case tc.why != "" && (err == nil || !strings.Contains(err.Error(), tc.why)):
			t.Errorf("%q: error %v, want one saying %q", tc.name, err, tc.why)
		}
	}
}
