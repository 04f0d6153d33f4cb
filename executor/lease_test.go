package executor

import (
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/utils/ptr"
)

// Who holds an executor's Lease, as this process (executor "a", instance "i1") sees it.
func TestLeaseHolders(t *testing.T) {
	e := &Executor{opts: Options{Name: "a"}, instance: "i1"}
	for _, tc := range []struct {
		holder    *string
		other     bool   // another process of the name
		claimedBy string // a sibling cleaning up, or ""
	}{
		{holder: ptr.To("a/i1")},
		{holder: ptr.To("a/i2"), other: true},
		{holder: ptr.To("a"), other: true}, // an executor from before instances
		{holder: nil},
		{holder: ptr.To("")},
		{holder: ptr.To("cleanup-by-b"), claimedBy: "b"},
		{holder: ptr.To("b/i1"), claimedBy: "b/i1"},
	} {
		l := &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{HolderIdentity: tc.holder}}
		if _, other := e.heldByOther(l); other != tc.other {
			t.Errorf("holder %q: held by another process of the name: %v, want %v", ptr.Deref(tc.holder, "<nil>"), other, tc.other)
		}
		if by, claimed := claimedBy(l, "a"); by != tc.claimedBy || claimed != (tc.claimedBy != "") {
			t.Errorf("holder %q: claimed by %q (%v), want %q", ptr.Deref(tc.holder, "<nil>"), by, claimed, tc.claimedBy)
		}
	}
}
