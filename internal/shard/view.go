package shard

import (
	"sync"
	"sync/atomic"
)

// A View is what one manager replica knows of the ring: its own member name and the members it sees
// live now. The ring changes as replicas come and go; Ring returns the latest.
type View interface {
	// Me is this replica's member name: the value of the shard label on the objects it owns.
	Me() string
	// Ring is the ring as this replica sees it now.
	Ring() *Ring
}

// Static is a View whose ring changes only when Set is called: for a fixed set of replicas, and
// for tests.
type Static struct {
	subscribers
	me   string
	ring atomic.Pointer[Ring]
}

// NewStatic returns a View of member me in a ring of members (me is added when missing).
func NewStatic(me string, members ...string) *Static {
	s := &Static{me: me}
	s.Set(NewRing(append(members, me)...))
	return s
}

// Me implements View.
func (s *Static) Me() string { return s.me }

// Ring implements View.
func (s *Static) Ring() *Ring { return s.ring.Load() }

// Set replaces the ring and tells the subscribers.
func (s *Static) Set(r *Ring) {
	s.ring.Store(r)
	s.tell()
}

// subscribers implements Subscriber for a view: tell notifies them all.
type subscribers struct {
	mu   sync.Mutex
	subs []chan struct{}
}

// Subscribe implements Subscriber.
func (s *subscribers) Subscribe() <-chan struct{} {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subs = append(s.subs, ch)
	return ch
}

func (s *subscribers) tell() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default: // one is pending: the subscriber reads the ring after it anyway
		}
	}
}

// Owns says whether v's replica owns key in the ring it sees now.
func Owns(v View, key string) bool { return v.Ring().Owner(key) == v.Me() }
