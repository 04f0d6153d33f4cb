package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
)

// TestASegmentBatcherWritesALoneEntryAtOnce: the batcher's wait bounds how often it writes a
// segment, not how long an entry that finds it idle waits. With a wait of an hour, a lone entry is
// written at once (it waited the whole wait before: every archived run's lag carried up to 500ms of
// it); entries that come within the wait of that write are batched until the segment is full.
func TestASegmentBatcherWritesALoneEntryAtOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store, err := objectstore.Open(ctx, objectstore.FileURL(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	b := &segmentBatcher{store: store, max: 3, wait: time.Hour, kick: make(chan struct{}, 1)}
	go func() { _ = b.Start(ctx) }()
	entry := func(i int) archive.Entry {
		now := time.Now()
		return archive.Entry{Namespace: "ns", Name: fmt.Sprintf("r%d", i), UID: fmt.Sprintf("uid-%d", i), Phase: "Finished", Created: now, Archived: now}
	}
	add := func(i int) error {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return b.add(ctx, entry(i))
	}
	if err := add(0); err != nil {
		t.Fatalf("a lone entry, with the batcher idle: %v (it waited for the batcher's wait of %s)", err, b.wait)
	}
	var g errgroup.Group
	for i := 1; i <= 3; i++ {
		g.Go(func() error { return add(i) })
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("a full segment's entries: %v", err)
	}
	keys, err := store.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Fatalf("segments written: %d (%v), want 2: the lone entry's, and the three that came within the wait together", len(keys), keys)
	}
}
