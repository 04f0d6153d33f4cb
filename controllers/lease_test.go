package controllers

import (
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// The manager's view of an executor's Lease: any process of the executor's name keeps it live.
func TestLeaseLive(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name    string
		holder  *string
		renewed time.Duration // ago
		live    bool
	}{
		{"a process of the executor", ptr.To(rsv1.LeaseHolder("ex", "host_1_ab")), time.Second, true},
		{"an executor from before instances", ptr.To("ex"), time.Second, true},
		{"expired", ptr.To(rsv1.LeaseHolder("ex", "host_1_ab")), time.Minute, false},
		{"released", nil, time.Second, false},
		{"a sibling cleaning up", ptr.To(rsv1.LeaseHolderCleanupPrefix + "other"), time.Second, false},
		{"another executor's process", ptr.To(rsv1.LeaseHolder("ex2", "host_1_ab")), time.Second, false},
		{"a name that only starts like it", ptr.To("ex-2/host_1_ab"), time.Second, false},
	} {
		renew := metav1.NewMicroTime(now.Add(-tc.renewed))
		l := &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: tc.holder, RenewTime: &renew, LeaseDurationSeconds: ptr.To[int32](15)}}
		if got := leaseLive(l, "ex", now); got != tc.live {
			t.Errorf("%s: live %v, want %v", tc.name, got, tc.live)
		}
	}
}
