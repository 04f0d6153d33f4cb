package archive

import (
	"context"
	"fmt"
	"strings"
	"time"

	"runservice.dev/runservice/internal/objectstore"
)

// Expire deletes what was archived in the hours that ended before before: every archived run named
// by those hours' segments, with its document, logs and workspace archives (everything under its run
// prefix), then the segments. A tombstone segment naming the runs is written first, so that every
// index drops them, and a crash anywhere repeats the work on the next call without orphaning
// anything. It returns how many runs it deleted.
func Expire(ctx context.Context, store *objectstore.Store, before, now time.Time) (int, error) {
	hours, err := expiredHours(ctx, store, before)
	if err != nil {
		return 0, err
	}
	deleted := 0
	for _, hour := range hours {
		keys, err := store.List(ctx, hour)
		if err != nil {
			return deleted, err
		}
		var tombs []Entry
		for _, key := range keys {
			entries, err := ReadSegment(ctx, store, key)
			if err != nil {
				return deleted, fmt.Errorf("expiring %s: %w", hour, err)
			}
			for _, e := range entries {
				if !e.Deleted {
					e.Deleted = true
					tombs = append(tombs, e)
				}
			}
		}
		if len(tombs) > 0 {
			if _, err := WriteSegment(ctx, store, now, tombs); err != nil {
				return deleted, err
			}
		}
		for _, e := range tombs {
			if err := store.DeletePrefix(ctx, objectstore.RunPrefix(e.Namespace, e.Name, e.UID)); err != nil {
				return deleted, fmt.Errorf("expiring archived run %s/%s: %w", e.Namespace, e.Name, err)
			}
			deleted++
		}
		for _, key := range keys {
			if err := store.Delete(ctx, key); err != nil {
				return deleted, err
			}
		}
	}
	return deleted, nil
}

// expiredHours are the segment hour prefixes whose hour ended before before, oldest first.
func expiredHours(ctx context.Context, store *objectstore.Store, before time.Time) ([]string, error) {
	days, err := store.ListDirs(ctx, SegmentPrefix)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, day := range days {
		d, err := time.Parse("2006-01-02", strings.TrimSuffix(strings.TrimPrefix(day, SegmentPrefix), "/"))
		if err != nil || !d.Before(before) {
			continue // not a day of segments, or not over before before
		}
		hours, err := store.ListDirs(ctx, day)
		if err != nil {
			return nil, err
		}
		for _, hour := range hours {
			var h int
			if _, err := fmt.Sscanf(strings.TrimPrefix(hour, day), "%02d/", &h); err != nil {
				continue
			}
			if !d.Add(time.Duration(h+1) * time.Hour).After(before) {
				out = append(out, hour)
			}
		}
	}
	return out, nil
}
