// Package index owns the archive's read index: a disposable, local copy of the archive's index
// segments (archive.Entry) in a pebble database, one per manager replica, that answers "runs of a
// namespace or change group, newest first, filtered, one page at a time" and "how many per
// phase/result" without reading the object store. The object store stays the source of truth: an
// index that is corrupt, of another format version or lost is wiped and rebuilt from the segments
// (Follower).
//
// Layout (every key in one keyspace, ordered bytewise):
//
//	meta/version                         formatVersion; anything else wipes the index at Open
//	meta/rebuilt, meta/synced            the Follower's progress
//	s/<segment>                          the segment was applied
//	x/<segment>                          the segment cannot be indexed (why): the Follower skips it
//	u/<uid>                              the entry (JSON), or its tombstone: the run's document was
//	                                     deleted, and its entry never comes back
//	n/<ns>\0<name>\0<pos>                by name (names repeat over time)
//	l/<scope>\0<phase>\0<result>\0<pos>  the list keys, one per scope the entry is in
//	c/<scope>\0<phase>\0<result>         the number of entries of the scope with that phase/result
//
// where <pos> is the entry's place in "newest first, ties by uid": its Created inverted (8 bytes,
// big-endian) then its uid, and a scope is <namespace>\0<change group>, either part empty for
// "every namespace" and "any group": each entry is in ("", ""), (ns, ""), and ("", g) and (ns, g)
// for each of its groups. Keys are separated by \0, which no Kubernetes name holds (Apply refuses
// an entry with one).
//
// A page is a merge of the list keys of its scope over the phase/result pairs the query admits
// (the scope's counters say which pairs exist, a handful), started at the continue position: it
// reads what it returns and no more, at any depth. Counts are the counters, kept by Apply.
package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"k8s.io/klog/v2"

	"runservice.dev/runservice/internal/archive"
)

// formatVersion names the layout above; an index of another version is rebuilt, not read.
const formatVersion = "runservice-archive-index/1"

// cacheBytes is pebble's block cache: the hot part of the index (recent pages, counters) stays in
// memory, the rest is read from disk; the manager's memory does not grow with the archive.
const cacheBytes = 64 << 20

const sep = "\x00"

var (
	keyVersion = []byte("meta/version")
	keyRebuilt = []byte("meta/rebuilt")
	keySynced  = []byte("meta/synced")
)

func keyApplied(segment string) []byte { return []byte("s/" + segment) }
func keyBad(segment string) []byte     { return []byte("x/" + segment) }
func keyEntry(uid string) []byte       { return []byte("u/" + uid) }
func prefixName(ns, name string) []byte {
	return []byte("n/" + ns + sep + name + sep)
}
func prefixCount(s scope) []byte { return []byte("c/" + s.ns + sep + s.group + sep) }
func prefixList(s scope, phase, result string) []byte {
	return []byte("l/" + s.ns + sep + s.group + sep + phase + sep + result + sep)
}

// scope is what a list key or counter is kept for: a namespace ("" = all) and a change group ("" =
// any).
type scope struct{ ns, group string }

// scopes are the scopes e is in.
func scopes(e *archive.Entry) []scope {
	out := []scope{{"", ""}, {e.Namespace, ""}}
	for _, g := range e.ChangeGroups {
		s := scope{e.Namespace, g}
		if !slices.Contains(out, s) {
			out = append(out, scope{"", g}, s)
		}
	}
	return out
}

// posLen is the length of a position's time part; the uid follows.
const posLen = 8

// position is e's place in the order of every list: newest first, ties by uid.
func position(created time.Time, uid string) []byte {
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, posLen+len(uid)), invert(created)), uid...)
}

// invert orders times newest first. Apply refuses times before 1970, which have no place here.
func invert(t time.Time) uint64 { return math.MaxUint64 - uint64(t.UnixNano()) }

// Index is an opened index. Its methods are safe for concurrent use; Apply calls are serialized,
// and readers see each Apply whole or not at all.
type Index struct {
	dir  string
	lock *pebble.Lock // the directory's, held from Open to Close, across a wipe
	mu   sync.Mutex   // serializes writers: counters are read, then written
	load *load        // set during a cold rebuild into an empty index (see startLoad)
	// dbMu is held for reading while db is read, and for writing (with mu) while startLoad and
	// endLoad reopen db with other options.
	dbMu sync.RWMutex
	db   *pebble.DB
}

// load is what Apply knows for sure during a cold rebuild into an index that was empty when it
// started, so that it need not read the index back: which uids it has written (a uid not among
// them has no entry, and is not looked up) and the value of every counter (written, never read).
// It holds hashes of uids, not uids: a collision costs a lookup, not a wrong answer.
type load struct {
	seed   maphash.Seed
	seen   map[uint64]struct{}
	counts map[string]int64
}

// startLoad sets ix up for a cold rebuild when it holds nothing but its format version, and
// reports whether it did. Every Apply until endLoad relies on it; so does nothing else.
func (ix *Index) startLoad() (bool, error) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	db, done, err := ix.reader()
	if err != nil {
		return false, err
	}
	fresh, err := versionOnly(db)
	done()
	if err != nil || !fresh {
		return false, err
	}
	// Compacting as the load goes rewrites most keys several times (most of a rebuild's CPU):
	// the load writes into L0 only and compacts once, in endLoad.
	if err := ix.reopen(true); err != nil {
		return false, err
	}
	ix.load = &load{seed: maphash.MakeSeed(), seen: map[uint64]struct{}{}, counts: map[string]int64{}}
	return true, nil
}

// endLoad ends what startLoad began, whether the load completed or not: it compacts what was
// loaded and reopens the index with its usual options.
func (ix *Index) endLoad(ctx context.Context) error {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.load = nil
	if ix.db == nil {
		return errClosed
	}
	// Every key is ASCII and starts with a letter. A compaction cut short (ctx ended) still
	// reopens: pebble's own compactions finish the work.
	err := ix.db.Compact(ctx, []byte{0}, []byte{0xff}, true)
	if err != nil {
		err = fmt.Errorf("compacting the rebuilt archive index: %w", err)
	}
	return errors.Join(err, ix.reopen(false))
}

// reopen closes db and opens it again, for a load or not; the caller holds mu. A failure leaves
// the index closed: every use of it then fails.
func (ix *Index) reopen(loading bool) error {
	ix.dbMu.Lock()
	defer ix.dbMu.Unlock()
	if err := ix.db.Close(); err != nil {
		return fmt.Errorf("reopening archive index %s: %w", ix.dir, err)
	}
	db, err := openDB(ix.dir, ix.lock, loading)
	if err != nil {
		ix.db = nil
		return fmt.Errorf("reopening archive index %s: %w", ix.dir, err)
	}
	ix.db = db
	return nil
}

// errClosed is what an index says whose reopen failed.
var errClosed = errors.New("archive index: closed after a failed reopen; restart to rebuild it")

// reader is db, held open until done is called; errClosed when a reopen failed.
func (ix *Index) reader() (db *pebble.DB, done func(), _ error) {
	ix.dbMu.RLock()
	if ix.db == nil {
		ix.dbMu.RUnlock()
		return nil, nil, errClosed
	}
	return ix.db, ix.dbMu.RUnlock, nil
}

// lockFile is the file pebble locks in its directory; a wipe leaves it, and so keeps the lock.
const lockFile = "LOCK"

// Open opens the index in dir, creating it. An index that does not open, or was written in another
// format version, is wiped and opened empty: it is rebuilt from the object store, not repaired. An
// index another process has open is an error (it is not wiped from under that process).
func Open(dir string) (*Index, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating archive index directory: %w", err)
	}
	lock, err := pebble.LockDirectory(dir, vfs.Default)
	if err != nil {
		return nil, fmt.Errorf("locking archive index %s (is another process using it?): %w", dir, err)
	}
	ix, err := open(dir, lock)
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	return ix, nil
}

func open(dir string, lock *pebble.Lock) (*Index, error) {
	db, err := openDB(dir, lock, false)
	if err == nil {
		var version []byte
		version, err = get(db, keyVersion)
		if err == nil && string(version) == formatVersion {
			return &Index{dir: dir, db: db, lock: lock}, nil
		}
		if err == nil && version == nil {
			var fresh bool
			if fresh, err = empty(db); fresh {
				return initialize(dir, db, lock)
			}
		}
		if err == nil {
			err = fmt.Errorf("format version %q, not %q", version, formatVersion)
		}
		_ = db.Close()
	}
	klog.InfoS("Wiping the archive index: it is rebuilt from the object store", "dir", dir, "reason", err.Error())
	if err := wipe(dir); err != nil {
		return nil, err
	}
	if db, err = openDB(dir, lock, false); err != nil {
		return nil, fmt.Errorf("opening archive index in %s: %w", dir, err)
	}
	return initialize(dir, db, lock)
}

// initialize marks the empty db as written in this format version.
func initialize(dir string, db *pebble.DB, lock *pebble.Lock) (*Index, error) {
	if err := db.Set(keyVersion, []byte(formatVersion), pebble.Sync); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("initializing archive index in %s: %w", dir, err)
	}
	return &Index{dir: dir, db: db, lock: lock}, nil
}

// versionOnly reports whether db holds its format version and no other key.
func versionOnly(db *pebble.DB) (bool, error) {
	it, err := db.NewIter(nil)
	if err != nil {
		return false, fmt.Errorf("reading archive index: %w", err)
	}
	defer it.Close()
	fresh := it.First() && bytes.Equal(it.Key(), keyVersion) && !it.Next()
	return fresh, it.Error()
}

// empty reports whether db holds no key.
func empty(db *pebble.DB) (bool, error) {
	it, err := db.NewIter(nil)
	if err != nil {
		return false, err
	}
	defer it.Close()
	return !it.First(), it.Error()
}

// openDB opens the pebble database in dir; for a bulk load (loading), with no compactions and no
// write stalls however much L0 grows: the load compacts once at its end.
func openDB(dir string, lock *pebble.Lock, loading bool) (*pebble.DB, error) {
	opts := &pebble.Options{Cache: pebble.NewCache(cacheBytes), Lock: lock, Logger: pebbleLogger{}}
	defer opts.Cache.Unref() // the DB holds its own reference
	// Apply looks every entry up before writing it; a bloom filter spares most of those reads
	// for new entries (set for L0, inherited by the other levels).
	opts.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	if loading {
		opts.DisableAutomaticCompactions = true
		opts.L0StopWritesThreshold = math.MaxInt32
	}
	return pebble.Open(dir, opts)
}

// wipe empties dir but for its lock file.
func wipe(dir string) error {
	des, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("wiping archive index: %w", err)
	}
	for _, de := range des {
		if de.Name() == lockFile {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, de.Name())); err != nil {
			return fmt.Errorf("wiping archive index: %w", err)
		}
	}
	return nil
}

// pebbleLogger sends pebble's messages to klog, its routine ones only at high verbosity.
type pebbleLogger struct{}

func (pebbleLogger) Infof(format string, args ...any) { klog.V(4).Infof("pebble: "+format, args...) }
func (pebbleLogger) Errorf(format string, args ...any) {
	klog.Errorf("pebble: "+format, args...)
}
func (pebbleLogger) Fatalf(format string, args ...any) { klog.Fatalf("pebble: "+format, args...) }

// Close closes the index.
func (ix *Index) Close() error {
	ix.dbMu.Lock()
	defer ix.dbMu.Unlock()
	if ix.db == nil {
		return ix.lock.Close()
	}
	return errors.Join(ix.db.Close(), ix.lock.Close())
}

// get reads key from r (a DB, a batch or a snapshot); nil, nil when it does not exist.
func get(r pebble.Reader, key []byte) ([]byte, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading archive index key %q: %w", key, err)
	}
	out := slices.Clone(v)
	if out == nil {
		out = []byte{}
	}
	return out, closer.Close()
}

// Applied reports whether segment was applied.
func (ix *Index) Applied(segment string) (bool, error) {
	db, done, err := ix.reader()
	if err != nil {
		return false, err
	}
	defer done()
	v, err := get(db, keyApplied(segment))
	return v != nil, err
}

// Apply indexes one segment's entries, atomically with recording that segment was applied, and
// does nothing for a segment applied already. An entry replaces the one of the same uid, unless
// it was archived before it (a segment applied late does not roll a run back); a tombstone
// (Deleted) removes the run's entry, and no later entry of that uid brings it back. So the index
// does not depend on the order segments are applied in. Entries are checked first: one that could
// not be indexed (empty uid, name or namespace, no creation time, a NUL in a name) fails the whole
// segment, naming it, the entry and the field, with archive.ErrBadSegment.
func (ix *Index) Apply(segment string, entries []archive.Entry) error {
	for i := range entries {
		if err := check(&entries[i]); err != nil {
			return fmt.Errorf("%w: %s, entry %d: %w", archive.ErrBadSegment, segment, i+1, err)
		}
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ok, err := ix.Applied(segment); err != nil || ok {
		return err
	}
	db, done, err := ix.reader()
	if err != nil {
		return err
	}
	defer done()
	b := db.NewBatch()
	defer b.Close()
	// What this segment has made of each uid so far: a uid may repeat in a segment, and the
	// batch is not read back.
	current := map[string]*archive.Entry{}
	counts := map[string]int64{}
	// Most uids are new, and most of the index is in pebble's last level, whose bloom filters a
	// Get does not read: an iterator that reads them spares a data block read per new uid.
	it, err := db.NewIter(&pebble.IterOptions{UseL6Filters: true})
	if err != nil {
		return fmt.Errorf("reading archive index: %w", err)
	}
	defer it.Close()
	for i := range entries {
		e := &entries[i]
		old, ok := current[e.UID]
		if !ok && ix.load.mayHave(e.UID) {
			if old, err = seekEntry(it, e.UID); err != nil {
				return err
			}
		}
		if next, err := apply(b, old, e, counts); err != nil {
			return fmt.Errorf("applying archive index segment %s: %w", segment, err)
		} else if next != nil {
			current[e.UID] = next
		}
	}
	totals := map[string]int64{} // the counters' new values
	for k, d := range counts {
		if d == 0 {
			continue
		}
		n := d
		if ix.load != nil {
			n += ix.load.counts[k]
		} else if v, err := seek(it, []byte(k)); err != nil {
			return err
		} else if len(v) == 8 {
			n += int64(binary.BigEndian.Uint64(v))
		}
		totals[k] = n
		if n == 0 {
			err = b.Delete([]byte(k), nil)
		} else {
			err = b.Set([]byte(k), binary.BigEndian.AppendUint64(nil, uint64(n)), nil)
		}
		if err != nil {
			return err
		}
	}
	if err := b.Set(keyApplied(segment), nil, nil); err != nil {
		return err
	}
	// NoSync: a crash of the machine loses at most the last batches, with their applied marks
	// (pebble recovers a prefix of its log), so they are applied again; never half a batch.
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("applying archive index segment %s: %w", segment, err)
	}
	ix.load.applied(current, totals)
	return nil
}

// mayHave reports whether the index may hold an entry of uid: always, but during a load, for a
// uid it has not written.
func (l *load) mayHave(uid string) bool {
	if l == nil {
		return true
	}
	_, ok := l.seen[maphash.String(l.seed, uid)]
	return ok
}

// applied records a committed batch: the uids it wrote and its counters' values.
func (l *load) applied(written map[string]*archive.Entry, totals map[string]int64) {
	if l == nil {
		return
	}
	for uid := range written {
		l.seen[maphash.String(l.seed, uid)] = struct{}{}
	}
	maps.Copy(l.counts, totals)
}

// check says what about e could not be indexed.
func check(e *archive.Entry) error {
	if e.UID == "" {
		return errors.New("field uid: empty")
	}
	for _, f := range append([]string{e.Namespace, e.Name, e.UID, e.Phase, e.Result}, e.ChangeGroups...) {
		if strings.Contains(f, sep) {
			return fmt.Errorf("value %q: holds a NUL", f)
		}
	}
	if e.Deleted {
		return nil // a tombstone needs its uid only
	}
	for _, f := range []struct{ name, value string }{{"ns", e.Namespace}, {"name", e.Name}} {
		if f.value == "" {
			return fmt.Errorf("field %s: empty", f.name)
		}
	}
	for i, g := range e.ChangeGroups {
		if g == "" {
			return fmt.Errorf("field groups[%d]: empty", i)
		}
	}
	if e.Created.IsZero() || e.Created.Before(time.Unix(0, 0)) {
		return fmt.Errorf("field created: %s is not a creation time", e.Created.Format(time.RFC3339))
	}
	return nil
}

// apply writes into b what e makes of old (the uid's entry or tombstone; nil when it has none),
// counting what it adds and removes in counts, and returns what b now holds for the uid (nil: no
// change).
func apply(b *pebble.Batch, old, e *archive.Entry, counts map[string]int64) (*archive.Entry, error) {
	switch {
	case old != nil && old.Deleted:
		return nil, nil // deleted for good
	case old != nil && !e.Deleted && e.Archived.Before(old.Archived):
		return nil, nil // an older copy
	case old != nil:
		if err := unindex(b, old, counts); err != nil {
			return nil, err
		}
	}
	if e.Deleted {
		e = &archive.Entry{UID: e.UID, Deleted: true} // a tombstone keeps the uid only
	}
	v, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encoding entry %s: %w", e.UID, err)
	}
	if err := b.Set(keyEntry(e.UID), v, nil); err != nil {
		return nil, err
	}
	if e.Deleted {
		return e, nil
	}
	for _, k := range indexKeys(e, counts, 1) {
		if err := b.Set(k, nil, nil); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func unindex(b *pebble.Batch, e *archive.Entry, counts map[string]int64) error {
	for _, k := range indexKeys(e, counts, -1) {
		if err := b.Delete(k, nil); err != nil {
			return err
		}
	}
	return nil
}

// indexKeys are the name and list keys of e; it adds d to the counters e is counted in.
func indexKeys(e *archive.Entry, counts map[string]int64, d int64) [][]byte {
	pos := position(e.Created, e.UID)
	keys := [][]byte{append(prefixName(e.Namespace, e.Name), pos...)}
	for _, s := range scopes(e) {
		keys = append(keys, append(prefixList(s, e.Phase, e.Result), pos...))
		counts[string(prefixCount(s))+e.Phase+sep+e.Result] += d
	}
	return keys
}

// entry reads the entry of uid, or its tombstone (Deleted); nil when there is neither.
func entry(r pebble.Reader, uid string) (*archive.Entry, error) {
	v, err := get(r, keyEntry(uid))
	if err != nil || v == nil {
		return nil, err
	}
	return decodeEntry(uid, v)
}

// seekEntry is entry read through it.
func seekEntry(it *pebble.Iterator, uid string) (*archive.Entry, error) {
	v, err := seek(it, keyEntry(uid))
	if err != nil || v == nil {
		return nil, err
	}
	return decodeEntry(uid, v)
}

// seek is get through it: the value of key, valid until it moves; nil when there is none.
func seek(it *pebble.Iterator, key []byte) ([]byte, error) {
	if !it.SeekPrefixGE(key) || !bytes.Equal(it.Key(), key) {
		return nil, it.Error()
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return nil, fmt.Errorf("reading archive index key %q: %w", key, err)
	}
	return v, nil
}

func decodeEntry(uid string, v []byte) (*archive.Entry, error) {
	e := &archive.Entry{}
	if err := json.Unmarshal(v, e); err != nil {
		return nil, fmt.Errorf("decoding archive index entry %s: %w", uid, err)
	}
	return e, nil
}

// GetUID is the entry of the run with uid in namespace.
func (ix *Index) GetUID(namespace, uid string) (archive.Entry, bool, error) {
	db, done, err := ix.reader()
	if err != nil {
		return archive.Entry{}, false, err
	}
	defer done()
	e, err := entry(db, uid)
	if err != nil || e == nil || e.Deleted || e.Namespace != namespace {
		return archive.Entry{}, false, err
	}
	return *e, true, nil
}

// Get is every archived run named name in namespace, newest first: names repeat over time.
func (ix *Index) Get(namespace, name string) ([]archive.Entry, error) {
	db, done, err := ix.reader()
	if err != nil {
		return nil, err
	}
	defer done()
	snap := db.NewSnapshot()
	defer snap.Close()
	prefix := prefixName(namespace, name)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upperBound(prefix)})
	if err != nil {
		return nil, fmt.Errorf("reading archive index: %w", err)
	}
	defer it.Close()
	var out []archive.Entry
	for ok := it.First(); ok; ok = it.Next() {
		e, err := entry(snap, string(it.Key()[len(prefix)+posLen:]))
		if err != nil {
			return nil, err
		}
		if e == nil || e.Deleted {
			return nil, fmt.Errorf("archive index: name key %q has no entry", it.Key())
		}
		out = append(out, *e)
	}
	return out, it.Error()
}

// Count is the number of archived runs of group in namespace (group "": of the namespace;
// namespace "": of every namespace) by "<phase>/<result>".
func (ix *Index) Count(namespace, group string) (map[string]int64, error) {
	db, done, err := ix.reader()
	if err != nil {
		return nil, err
	}
	defer done()
	out := map[string]int64{}
	err = counters(db, scope{namespace, group}, func(phase, result string, n int64) {
		out[phase+"/"+result] = n
	})
	return out, err
}

// counters calls fn with each counter of s that is not zero.
func counters(r pebble.Reader, s scope, fn func(phase, result string, n int64)) error {
	prefix := prefixCount(s)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upperBound(prefix)})
	if err != nil {
		return fmt.Errorf("reading archive index: %w", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		phase, result, _ := strings.Cut(string(it.Key()[len(prefix):]), sep)
		v := it.Value()
		if len(v) != 8 {
			return fmt.Errorf("archive index: counter %q is %d bytes", it.Key(), len(v))
		}
		fn(phase, result, int64(binary.BigEndian.Uint64(v)))
	}
	return it.Error()
}

// upperBound is the first key after every key that starts with prefix (which ends in sep).
func upperBound(prefix []byte) []byte {
	out := slices.Clone(prefix)
	out[len(out)-1]++
	return out
}
