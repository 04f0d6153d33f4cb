package shard

import (
	"hash/fnv"
	"slices"
)

// A Ring is a set of members that keys are assigned to by rendezvous (highest random weight)
// hashing: each key goes to the member with the highest score of (member, key). Unlike a ring of
// virtual nodes it needs no tuning: with n members each gets 1/n of the keys in expectation, and a
// member joining or leaving moves only the keys it wins or held. Scores are stable across
// processes and versions (FNV-1a and a fixed mixer), so every replica computes the same owner.
//
// The zero Ring has no members. A Ring is immutable and safe for concurrent use.
type Ring struct {
	members []string
	hashes  []uint64
}

// NewRing returns the ring of the given members; duplicates and empty names are dropped.
func NewRing(members ...string) *Ring {
	ms := slices.Clone(members)
	slices.Sort(ms)
	ms = slices.Compact(ms)
	ms = slices.DeleteFunc(ms, func(m string) bool { return m == "" })
	r := &Ring{members: ms, hashes: make([]uint64, len(ms))}
	for i, m := range ms {
		r.hashes[i] = hash(m)
	}
	return r
}

// Members returns the ring's members, sorted.
func (r *Ring) Members() []string {
	if r == nil {
		return nil
	}
	return slices.Clone(r.members)
}

// Len is the number of members.
func (r *Ring) Len() int {
	if r == nil {
		return 0
	}
	return len(r.members)
}

// Has says whether m is a member.
func (r *Ring) Has(m string) bool {
	if r == nil {
		return false
	}
	_, ok := slices.BinarySearch(r.members, m)
	return ok
}

// Owner returns the member that owns key, or "" when the ring is empty.
func (r *Ring) Owner(key string) string {
	if r.Len() == 0 {
		return ""
	}
	k := hash(key)
	best, bestScore := 0, uint64(0)
	for i, h := range r.hashes {
		// Ties (a 2^-64 chance) go to the first member in sorted order, the same everywhere.
		if s := mix(h ^ k); i == 0 || s > bestScore {
			best, bestScore = i, s
		}
	}
	return r.members[best]
}

// Key is the key a namespaced object is assigned by: its namespace and name. A name is known at
// admission (unless generated), unlike a uid, so the webhook can label a run as it is created.
func Key(namespace, name string) string { return namespace + "/" + name }

func hash(s string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(s)) // never fails
	return h.Sum64()
}

// mix is MurmurHash3's 64-bit finalizer: FNV's low bits are weak, and a score must depend on every
// bit of both hashes for the members' shares to be even.
func mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
