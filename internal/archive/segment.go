package archive

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"runservice.dev/runservice/internal/objectstore"
)

// SegmentPrefix starts the keys of index segments:
// archive/segments/<yyyy-mm-dd>/<hh>/<unix nanoseconds, 19 digits>-<random>.jsonl.gz. Partitioned by
// the hour, so that following new segments lists one or two small prefixes, and named by time, so
// that keys sort in the order they were written (within a writer; writers' clocks may differ by a
// little, which is why a follower lists the previous hour too).
const SegmentPrefix = "archive/segments/"

// maxSegmentEntries bounds what one segment may hold when read: a larger one is refused, not read
// into memory.
const maxSegmentEntries = 1 << 20

// ErrBadSegment says that a segment's content cannot be read or indexed (not gzip, not JSON lines
// of Entries, too large, an entry without what an index needs): reading it again does not help.
var ErrBadSegment = errors.New("bad index segment")

// SegmentKey is the key of a segment written at t.
func SegmentKey(t time.Time) string {
	var r [6]byte
	_, _ = rand.Read(r[:])
	t = t.UTC()
	return fmt.Sprintf("%s%s/%02d/%019d-%s.jsonl.gz", SegmentPrefix, t.Format("2006-01-02"), t.Hour(), t.UnixNano(), hex.EncodeToString(r[:]))
}

// HourPrefix is the prefix of the segments written in t's hour.
func HourPrefix(t time.Time) string {
	t = t.UTC()
	return fmt.Sprintf("%s%s/%02d/", SegmentPrefix, t.Format("2006-01-02"), t.Hour())
}

// WriteSegment writes entries as a new segment and returns its key. The segment appears whole or
// not at all.
func WriteSegment(ctx context.Context, store *objectstore.Store, now time.Time, entries []Entry) (string, error) {
	return WriteSegmentMidway(ctx, store, now, entries, nil)
}

// WriteSegmentMidway is WriteSegment that calls midway, when set, once the first half of entries
// has gone to the store: an error from it ends the write there, as a crash of the writer would
// (the archiver's fault tests), and the segment does not appear.
func WriteSegmentMidway(ctx context.Context, store *objectstore.Store, now time.Time, entries []Entry, midway func() error) (string, error) {
	pr, pw := io.Pipe()
	go func() {
		zw := gzip.NewWriter(pw)
		enc := json.NewEncoder(zw)
		for i := range entries {
			if err := enc.Encode(&entries[i]); err != nil {
				pw.CloseWithError(err)
				return
			}
			if midway != nil && i == (len(entries)-1)/2 {
				if err := zw.Flush(); err != nil {
					pw.CloseWithError(err)
					return
				}
				if err := midway(); err != nil {
					pw.CloseWithError(err)
					return
				}
			}
		}
		pw.CloseWithError(zw.Close())
	}()
	key := SegmentKey(now)
	err := store.Put(ctx, key, pr)
	_ = pr.Close()
	if err != nil {
		return "", fmt.Errorf("writing index segment: %w", err)
	}
	return key, nil
}

// ReadSegment reads the segment at key. A segment whose content cannot be indexed is
// ErrBadSegment; one that could not be read whole (the store failed midway) is another error, to
// be read again.
func ReadSegment(ctx context.Context, store *objectstore.Store, key string) ([]Entry, error) {
	if !strings.HasPrefix(key, SegmentPrefix) {
		return nil, fmt.Errorf("%s is not an index segment", key)
	}
	r, err := store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return readSegment(key, r)
}

func readSegment(key string, r io.Reader) ([]Entry, error) {
	src := &readErr{r: r}
	bad := func(err error) error {
		if src.err != nil {
			// What was read is cut short by the read, not by the segment: not bad.
			return fmt.Errorf("reading index segment %s: %w", key, src.err)
		}
		return fmt.Errorf("%w %s: %w", ErrBadSegment, key, err)
	}
	zr, err := gzip.NewReader(src)
	if err != nil {
		return nil, bad(err)
	}
	var out []Entry
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if len(out) == maxSegmentEntries {
			return nil, bad(fmt.Errorf("more than %d entries", maxSegmentEntries))
		}
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, bad(fmt.Errorf("entry %d: %w", len(out)+1, err))
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		// The object ends midway through its gzip stream (io.ErrUnexpectedEOF), is corrupt, or
		// holds a line too long.
		return nil, bad(err)
	}
	return out, nil
}

// readErr remembers the error, other than io.EOF, that a read of r returned.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		r.err = err
	}
	return n, err
}

// maxMergedEntries bounds a segment CompactHour writes, far below what ReadSegment accepts.
const maxMergedEntries = 100_000

// CompactHour merges the segments of t's hour into few (one per 100,000 entries), then deletes
// the ones merged, so that a cold rebuild reads few objects. Entries keep their order (the
// segments' key order, then each one's), so applying the merged segments indexes what applying
// the small ones did. A crash between the write and the deletes loses nothing: the small segments
// are applied again, idempotently, and merged again by the next CompactHour. A bad segment is left
// as it is. Writers must be done with the hour: compact hours older than the previous one, which
// followers list as new. It returns the number of segments merged.
func CompactHour(ctx context.Context, store *objectstore.Store, t time.Time) (int, error) {
	// Merged segments are named by the hour's last instant, after the ones they merge, and are
	// not merged again.
	at := t.UTC().Truncate(time.Hour).Add(time.Hour - 1)
	mergedPrefix := fmt.Sprintf("%s%019d-", HourPrefix(t), at.UnixNano())
	all, err := store.List(ctx, HourPrefix(t))
	if err != nil {
		return 0, fmt.Errorf("compacting index segments: %w", err)
	}
	var keys []string
	for _, k := range all {
		if !strings.HasPrefix(k, mergedPrefix) {
			keys = append(keys, k)
		}
	}
	if len(keys) < 2 {
		return 0, nil
	}
	var merged []string
	var entries []Entry
	flush := func() error {
		if len(entries) == 0 {
			return nil
		}
		if _, err := WriteSegment(ctx, store, at, entries); err != nil {
			return fmt.Errorf("compacting index segments: %w", err)
		}
		entries = nil
		return nil
	}
	for _, k := range keys {
		es, err := ReadSegment(ctx, store, k)
		if errors.Is(err, ErrBadSegment) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("compacting index segments: %w", err)
		}
		if len(entries) > 0 && len(entries)+len(es) > maxMergedEntries {
			if err := flush(); err != nil {
				return 0, err
			}
		}
		entries = append(entries, es...)
		merged = append(merged, k)
	}
	if len(merged) < 2 {
		return 0, nil
	}
	if err := flush(); err != nil {
		return 0, err
	}
	for _, k := range merged {
		if err := store.Delete(ctx, k); err != nil {
			return 0, fmt.Errorf("compacting index segments: %w", err)
		}
	}
	return len(merged), nil
}

// CompactPast compacts (CompactHour) every hour before the one before now's, which writers and
// followers may still be busy with, but those in done, and records in done, when given, the hours
// it compacted. It returns how many segments it merged.
func CompactPast(ctx context.Context, store *objectstore.Store, now time.Time, done map[time.Time]bool) (int, error) {
	hours, err := HoursBefore(ctx, store, now.Truncate(time.Hour).Add(-time.Hour))
	if err != nil {
		return 0, err
	}
	merged := 0
	for _, h := range hours {
		if done[h] {
			continue
		}
		n, err := CompactHour(ctx, store, h)
		if err != nil {
			return merged, err
		}
		merged += n
		if done != nil {
			done[h] = true
		}
	}
	return merged, nil
}
