package shard

import (
	"fmt"
	"math"
	"testing"
)

func members(n int) []string {
	ms := make([]string, n)
	for i := range ms {
		ms[i] = fmt.Sprintf("runservice-manager-7d9f8c6b5-%05d", i*7919%100000)
	}
	return ms
}

func keys(n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = Key(fmt.Sprintf("team-%d", i%17), fmt.Sprintf("run-%d", i))
	}
	return ks
}

// TestRingSimulation is the ring simulation of issue 12: for every size from 1 to 64 members, the
// keys are spread evenly (no member more than 1.5× the mean, the bound the three-replica test asks
// for, with the statistical margin 20,000 keys leave), and a member joining or leaving moves only the
// keys it wins or held: about 1/n of them, never one between two members that stayed.
func TestRingSimulation(t *testing.T) {
	ks := keys(20000)
	for n := 1; n <= 64; n++ {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ms := members(n + 1)
			ring, joined := NewRing(ms[:n]...), NewRing(ms...)
			newcomer := ms[n]

			count := map[string]int{}
			moved := 0
			for _, k := range ks {
				before, after := ring.Owner(k), joined.Owner(k)
				count[before]++
				if before != after {
					moved++
					if after != newcomer {
						t.Fatalf("key %s moved from %s to %s, not to the member that joined", k, before, after)
					}
				}
			}
			if len(count) != n {
				t.Fatalf("%d members own keys, want %d", len(count), n)
			}
			mean := float64(len(ks)) / float64(n)
			for m, c := range count {
				if float64(c) > 1.5*mean {
					t.Errorf("member %s owns %d keys, more than 1.5× the mean %.0f", m, c, mean)
				}
			}
			// Joining moves 1/(n+1) of the keys in expectation; allow 4 standard deviations.
			want := float64(len(ks)) / float64(n+1)
			sd := math.Sqrt(want * (1 - 1/float64(n+1)))
			if math.Abs(float64(moved)-want) > 4*sd {
				t.Errorf("joining moved %d keys, want about %.0f (1/%d)", moved, want, n+1)
			}

			// Leaving: a member goes; only its keys move, each to one of the others.
			gone := ms[n/2]
			left := NewRing(append(append([]string{}, ms[:n/2]...), ms[n/2+1:n]...)...)
			for _, k := range ks {
				before, after := ring.Owner(k), left.Owner(k)
				if before != gone && before != after {
					t.Fatalf("key %s moved from %s to %s though %s stayed", k, before, after, before)
				}
				if n > 1 && (after == gone || after == "") {
					t.Fatalf("key %s still owned by %q after %s left", k, after, gone)
				}
			}
		})
	}
}

// TestRingIsTheSameEverywhere: the owner depends only on the set of members, not their order or
// duplicates, and an empty ring owns nothing.
func TestRingIsTheSameEverywhere(t *testing.T) {
	a := NewRing("m-a", "m-b", "m-c")
	b := NewRing("m-c", "", "m-a", "m-b", "m-a")
	for _, k := range keys(1000) {
		if a.Owner(k) != b.Owner(k) {
			t.Fatalf("owner of %s differs with the members' order", k)
		}
	}
	if b.Len() != 3 || !b.Has("m-b") || b.Has("") {
		t.Fatalf("members %v", b.Members())
	}
	var empty *Ring
	if NewRing().Owner("ns/x") != "" || empty.Owner("ns/x") != "" || empty.Len() != 0 {
		t.Fatal("an empty ring owns a key")
	}
	// Pinned: a change of the hash would move every run at an upgrade.
	if got := NewRing("runservice-manager-0", "runservice-manager-1", "runservice-manager-2").Owner("default/build-1"); got != pinnedOwner {
		t.Fatalf("owner of default/build-1 is %s, was %s: the hash changed", got, pinnedOwner)
	}
}

const pinnedOwner = "runservice-manager-1"
