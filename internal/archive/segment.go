package archive

import (
	"bufio"
	"compress/flate"
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
	pr, pw := io.Pipe()
	go func() {
		zw := gzip.NewWriter(pw)
		enc := json.NewEncoder(zw)
		for i := range entries {
			if err := enc.Encode(&entries[i]); err != nil {
				pw.CloseWithError(err)
				return
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

// ReadSegment reads the segment at key.
func ReadSegment(ctx context.Context, store *objectstore.Store, key string) ([]Entry, error) {
	if !strings.HasPrefix(key, SegmentPrefix) {
		return nil, fmt.Errorf("%s is not an index segment", key)
	}
	r, err := store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrBadSegment, key, err)
	}
	var out []Entry
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if len(out) == maxSegmentEntries {
			return nil, fmt.Errorf("%w %s: more than %d entries", ErrBadSegment, key, maxSegmentEntries)
		}
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("%w %s, entry %d: %w", ErrBadSegment, key, len(out)+1, err)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		var corrupt flate.CorruptInputError
		if errors.Is(err, bufio.ErrTooLong) || errors.Is(err, gzip.ErrChecksum) || errors.As(err, &corrupt) {
			return nil, fmt.Errorf("%w %s: %w", ErrBadSegment, key, err)
		}
		return nil, fmt.Errorf("reading index segment %s: %w", key, err)
	}
	return out, nil
}
