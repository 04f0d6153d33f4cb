package index

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	ctrl "sigs.k8s.io/controller-runtime"

	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
)

// Follower keeps an index in step with the archive's segments in the object store. Each manager
// replica runs one over its own index (it needs no leader).
type Follower struct {
	Store *objectstore.Store
	Index *Index
	// Interval is how often new segments are looked for (default 2s).
	Interval time.Duration
	// Parallel is how many segments are read at once (default 16).
	Parallel int

	ready atomic.Bool
}

const (
	defaultInterval = 2 * time.Second
	defaultParallel = 16
	// maxHourLists bounds how many hour prefixes a catch-up lists; an index that was left behind
	// longer lists every segment instead (still one listing, and only unapplied segments are
	// read).
	maxHourLists = 48
)

// Sync catches up once. An index that was never rebuilt lists every segment and applies them (a
// cold rebuild); after that, Sync lists the hours since its last listing, and the one before it
// (writers' clocks differ a little), and applies what it has not. Segments are read Parallel at
// a time and applied in key order. A segment whose content is bad (archive.ErrBadSegment) is
// skipped and logged: reading it again would not help. A segment deleted between the listing and
// its read (merged by CompactHour) is skipped too, and the next Sync lists the same hours again.
// Any other failure is returned, and the next Sync lists the same hours again.
func (f *Follower) Sync(ctx context.Context) (err error) {
	start := time.Now()
	rebuilt, err := f.Index.getKey(keyRebuilt)
	if err != nil {
		return err
	}
	if rebuilt == nil {
		// A cold rebuild into an empty index need not read the index back as it writes it.
		if loading, err := f.Index.startLoad(); err != nil {
			return err
		} else if loading {
			defer func() { err = errors.Join(err, f.Index.endLoad(ctx)) }()
		}
	}
	var prefixes []string
	synced, err := f.Index.synced()
	if err != nil {
		return err
	}
	if rebuilt == nil || start.Sub(synced) > maxHourLists*time.Hour {
		prefixes = []string{archive.SegmentPrefix}
	} else {
		for h := synced.Add(-time.Hour).Truncate(time.Hour); !h.After(start); h = h.Add(time.Hour) {
			prefixes = append(prefixes, archive.HourPrefix(h))
		}
	}
	var keys []string
	for _, p := range prefixes {
		ks, err := f.Store.List(ctx, p)
		if err != nil {
			return fmt.Errorf("listing archive index segments: %w", err)
		}
		for _, k := range ks {
			done, err := f.Index.done(k)
			if err != nil {
				return err
			}
			if !done {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	gone, err := f.applyAll(ctx, keys)
	if err != nil {
		return err
	}
	f.ready.Store(true)
	if gone {
		// A segment listed was deleted before it was read: compacted into another one, which
		// this listing may have missed. The next Sync lists the same hours again.
		return nil
	}
	db, done, err := f.Index.reader()
	if err != nil {
		return err
	}
	defer done()
	b := db.NewBatch()
	defer b.Close()
	if err := b.Set(keySynced, binary.BigEndian.AppendUint64(nil, uint64(start.UnixNano())), nil); err != nil {
		return err
	}
	if err := b.Set(keyRebuilt, nil, nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("recording the archive index's progress: %w", err)
	}
	if rebuilt == nil {
		ctrl.LoggerFrom(ctx).Info("Rebuilt the archive index", "segments", len(keys), "duration", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// done reports whether segment was applied, or skipped as bad.
func (ix *Index) done(segment string) (bool, error) {
	for _, k := range [][]byte{keyApplied(segment), keyBad(segment)} {
		if v, err := ix.getKey(k); err != nil || v != nil {
			return v != nil, err
		}
	}
	return false, nil
}

// synced is when the Follower last listed the segments; zero when it never did.
func (ix *Index) synced() (time.Time, error) {
	v, err := ix.getKey(keySynced)
	if err != nil || len(v) != 8 {
		return time.Time{}, err
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v))), nil
}

// applyAll reads keys Parallel at a time and applies them in order, and says whether a segment
// was gone when read. A read is started only when a slot is free, and a slot is freed when its
// segment is applied: at most Parallel segments are held in memory.
func (f *Follower) applyAll(ctx context.Context, keys []string) (gone bool, _ error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type read struct {
		entries []archive.Entry
		err     error
	}
	parallel := f.Parallel
	if parallel <= 0 {
		parallel = defaultParallel
	}
	results := make([]chan read, len(keys))
	for i := range results {
		results[i] = make(chan read, 1)
	}
	slots := make(chan struct{}, parallel)
	go func() {
		for i, k := range keys {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			go func() {
				es, err := archive.ReadSegment(ctx, f.Store, k)
				results[i] <- read{es, err}
			}()
		}
	}()
	log := ctrl.LoggerFrom(ctx)
	for i, k := range keys {
		var r read
		select {
		case r = <-results[i]:
		case <-ctx.Done():
			return gone, ctx.Err()
		}
		<-slots
		switch {
		case errors.Is(r.err, objectstore.ErrNotFound):
			gone = true
			continue
		case r.err != nil:
		default:
			r.err = f.Index.Apply(k, r.entries)
		}
		if errors.Is(r.err, archive.ErrBadSegment) {
			log.Error(r.err, "Skipping an archive index segment that cannot be indexed", "segment", k)
			if err := f.Index.setKey(keyBad(k), []byte(r.err.Error())); err != nil {
				return gone, fmt.Errorf("recording bad segment %s: %w", k, err)
			}
			continue
		}
		if r.err != nil {
			return gone, r.err
		}
	}
	return gone, nil
}

// Start runs Sync, then again every Interval until ctx ends; a failed Sync is logged and tried
// again at the next tick. It is a controller-runtime Runnable.
func (f *Follower) Start(ctx context.Context) error {
	interval := f.Interval
	if interval <= 0 {
		interval = defaultInterval
	}
	log := ctrl.LoggerFrom(ctx).WithName("archive-index")
	ctx = ctrl.LoggerInto(ctx, log)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := f.Sync(ctx); err != nil && ctx.Err() == nil {
			log.Error(err, "Following the archive's index segments")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// NeedLeaderElection is false: every replica keeps its own index to serve reads.
func (f *Follower) NeedLeaderElection() bool { return false }

// Ready reports whether the first Sync completed.
func (f *Follower) Ready() bool { return f.ready.Load() }

// getKey is get from ix.
func (ix *Index) getKey(key []byte) ([]byte, error) {
	db, done, err := ix.reader()
	if err != nil {
		return nil, err
	}
	defer done()
	return get(db, key)
}

// setKey sets key in ix, NoSync (see Apply).
func (ix *Index) setKey(key, value []byte) error {
	db, done, err := ix.reader()
	if err != nil {
		return err
	}
	defer done()
	return db.Set(key, value, pebble.NoSync)
}
