package controllers

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// lastWrites remembers the resourceVersion of a reconciler's last write of each object until its
// cache shows it. A reconcile that meets an older copy decides nothing from it: what it would
// decide was decided by the write it does not see, and a write locked on its resourceVersion would
// only be refused (409), a wasted request. The controller sees the write within milliseconds.
type lastWrites struct {
	mu        sync.Mutex
	m         map[types.NamespacedName]lastWrite
	lastSweep time.Time
}

type lastWrite struct {
	resourceVersion string
	// uid is set when the write deleted the object: every copy of it is stale (a deletion has no
	// resourceVersion to compare with), and only it (one created again under its name is not).
	uid types.UID
	at  time.Time
}

// wrote remembers the resourceVersion o has after a write.
func (w *lastWrites) wrote(o client.Object) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		w.m = map[types.NamespacedName]lastWrite{}
	}
	w.m[client.ObjectKeyFromObject(o)] = lastWrite{resourceVersion: o.GetResourceVersion(), at: now}
	// An object written and never reconciled again (its last write) leaves its entry: drop, now and
	// then, those the cache has shown long since.
	if now.Sub(w.lastSweep) > time.Minute {
		for k, e := range w.m {
			if now.Sub(e.at) > time.Minute {
				delete(w.m, k)
			}
		}
		w.lastSweep = now
	}
}

// deleted remembers that a write deleted o: its copies in the cache are stale until the cache
// drops it.
func (w *lastWrites) deleted(o client.Object) {
	w.wrote(o)
	w.mu.Lock()
	defer w.mu.Unlock()
	e := w.m[client.ObjectKeyFromObject(o)]
	e.uid = o.GetUID()
	w.m[client.ObjectKeyFromObject(o)] = e
}

// stale reports whether o, read from the cache, is older than the last write of it. Resource
// versions compare as integers on every apiserver backed by etcd; one that does not parse is taken
// as current, and the write's lock refuses it if it is not.
func (w *lastWrites) stale(o client.Object) bool {
	key := client.ObjectKeyFromObject(o)
	w.mu.Lock()
	defer w.mu.Unlock()
	e, ok := w.m[key]
	if !ok {
		return false
	}
	if e.uid != "" {
		if o.GetUID() == e.uid {
			return true
		}
		delete(w.m, key)
		return false
	}
	if c, err := resourceversion.CompareResourceVersion(o.GetResourceVersion(), e.resourceVersion); err == nil && c < 0 {
		return true
	}
	delete(w.m, key)
	return false
}

// forget drops what is remembered of an object that is gone.
func (w *lastWrites) forget(key types.NamespacedName) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.m, key)
}
