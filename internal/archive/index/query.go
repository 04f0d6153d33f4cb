package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"runservice.dev/runservice/internal/archive"
)

// Query selects archived runs.
type Query struct {
	Namespace    string   // "" = all namespaces
	ChangeGroups []string // every one must match
	Phase        string   // "" = any
	Result       string   // "" = any
	// CreatedAfter and CreatedBefore bound the runs' creation times: [after, before); zero =
	// unbounded.
	CreatedAfter, CreatedBefore time.Time
	Limit                       int    // 0 = no limit (the API bounds it)
	Continue                    string // from the previous Page
}

// Page is one page of a List.
type Page struct {
	Entries  []archive.Entry // newest first by Created, ties by UID
	Continue string          // "" when there is no more
	// RemainingItemCount is set only where it is cheap: on the first page of a query without a
	// time range and with at most one change group, where the counters tell the total.
	RemainingItemCount *int64
}

// ErrBadContinue says that a continue token was not made by this query: forged, corrupt, or from
// another query. It is wrapped with what is wrong.
var ErrBadContinue = errors.New("invalid continue token")

// List returns one page of the runs q selects. It reads the page and no more, at any depth: the
// continue token holds the position of the last entry returned.
//
// With several change groups the page is read from the smallest group's keys and the others are
// checked on each entry: the cost grows with how many runs of that group lack the others.
func (ix *Index) List(q Query) (Page, error) {
	if err := q.check(); err != nil {
		return Page{}, err
	}
	groups := slices.Clone(q.ChangeGroups)
	slices.Sort(groups)
	groups = slices.Compact(groups)
	fp := fingerprint(q.Namespace, groups, q.Phase, q.Result, q.CreatedAfter, q.CreatedBefore)
	var after []byte // the position the page starts after; nil = from the start
	if q.Continue != "" {
		var err error
		if after, err = decodeContinue(q.Continue, fp); err != nil {
			return Page{}, err
		}
	}

	db, done, err := ix.reader()
	if err != nil {
		return Page{}, err
	}
	defer done()
	snap := db.NewSnapshot()
	defer snap.Close()
	sc, others, total, err := pickScope(snap, q.Namespace, groups, q.Phase, q.Result)
	if err != nil || sc == nil {
		return Page{}, err
	}
	lo, hi := bounds(q.CreatedAfter, q.CreatedBefore)
	if lo == nil {
		return Page{}, nil // before 1970: nothing
	}
	if after != nil && bytes.Compare(after, lo) >= 0 {
		lo = append(slices.Clone(after), 0) // the first position after it
	}
	m, err := newMerge(snap, sc.prefixes, lo, hi)
	if err != nil {
		return Page{}, err
	}
	defer m.close()

	var page Page
	var last []byte
	for {
		pos, ok := m.next()
		if !ok {
			break
		}
		e, err := entry(snap, string(pos[posLen:]))
		if err != nil {
			return Page{}, err
		}
		if e == nil || e.Deleted {
			return Page{}, fmt.Errorf("archive index: list key at %x has no entry", pos)
		}
		if !hasGroups(e, others) {
			continue
		}
		if q.Limit > 0 && len(page.Entries) == q.Limit {
			page.Continue = encodeContinue(last, fp)
			if q.Continue == "" && len(others) == 0 && q.CreatedAfter.IsZero() && q.CreatedBefore.IsZero() {
				n := total - int64(q.Limit)
				page.RemainingItemCount = &n
			}
			break
		}
		page.Entries = append(page.Entries, *e)
		last = append(last[:0], pos...)
	}
	if err := m.err(); err != nil {
		return Page{}, fmt.Errorf("reading archive index: %w", err)
	}
	return page, nil
}

// check says what in q cannot select anything.
func (q *Query) check() error {
	if q.Limit < 0 {
		return fmt.Errorf("limit %d: must not be negative", q.Limit)
	}
	for i, g := range q.ChangeGroups {
		if g == "" || strings.Contains(g, sep) {
			return fmt.Errorf("changeGroups[%d] %q: not a change group name", i, g)
		}
	}
	for _, f := range []struct{ name, value string }{{"namespace", q.Namespace}, {"phase", q.Phase}, {"result", q.Result}} {
		if strings.Contains(f.value, sep) {
			return fmt.Errorf("%s %q: holds a NUL", f.name, f.value)
		}
	}
	return nil
}

func hasGroups(e *archive.Entry, groups []string) bool {
	for _, g := range groups {
		if !slices.Contains(e.ChangeGroups, g) {
			return false
		}
	}
	return true
}

// pickedScope is where a query reads: the list prefixes of one scope, one per phase/result pair
// that the query admits and the scope has entries of.
type pickedScope struct{ prefixes [][]byte }

// pickScope chooses the scope of the query's smallest group (or its namespace), returning the
// groups left to check on each entry and how many entries the scope has for the query's phase and
// result; nil when there is nothing to read.
func pickScope(r pebble.Reader, ns string, groups []string, phase, result string) (*pickedScope, []string, int64, error) {
	type found struct {
		s     scope
		pairs [][2]string
		n     int64
	}
	count := func(s scope) (found, error) {
		f := found{s: s}
		err := counters(r, s, func(p, res string, n int64) {
			if (phase == "" || p == phase) && (result == "" || res == result) {
				f.pairs = append(f.pairs, [2]string{p, res})
				f.n += n
			}
		})
		return f, err
	}
	var best found
	var err error
	if len(groups) == 0 {
		if best, err = count(scope{ns, ""}); err != nil {
			return nil, nil, 0, err
		}
	}
	var others []string
	for i, g := range groups {
		f, err := count(scope{ns, g})
		if err != nil {
			return nil, nil, 0, err
		}
		if i == 0 || f.n < best.n {
			best = f
		}
	}
	if best.n == 0 {
		return nil, nil, 0, nil
	}
	for _, g := range groups {
		if g != best.s.group {
			others = append(others, g)
		}
	}
	ps := &pickedScope{}
	for _, p := range best.pairs {
		ps.prefixes = append(ps.prefixes, prefixList(best.s, p[0], p[1]))
	}
	return ps, others, best.n, nil
}

// bounds are the positions of [after, before): lo inclusive, hi exclusive (nil = unbounded); lo
// is nil when nothing can be in the range.
func bounds(after, before time.Time) (lo, hi []byte) {
	lo = []byte{}
	if !before.IsZero() {
		if before.UnixNano() <= 0 {
			return nil, nil
		}
		lo = binary.BigEndian.AppendUint64(nil, invert(before)+1)
	}
	if !after.IsZero() && after.UnixNano() > 0 {
		if v := invert(after); v < math.MaxUint64 {
			hi = binary.BigEndian.AppendUint64(nil, v+1)
		}
	}
	return lo, hi
}

// merge walks several list prefixes at once in position order.
type merge struct {
	its      []*pebble.Iterator
	prefixes [][]byte
	firstErr error
}

func newMerge(r pebble.Reader, prefixes [][]byte, lo, hi []byte) (*merge, error) {
	m := &merge{prefixes: prefixes}
	for _, p := range prefixes {
		o := &pebble.IterOptions{LowerBound: append(slices.Clone(p), lo...), UpperBound: upperBound(p)}
		if hi != nil {
			o.UpperBound = append(slices.Clone(p), hi...)
		}
		it, err := r.NewIter(o)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("reading archive index: %w", err)
		}
		it.First()
		m.its = append(m.its, it)
	}
	return m, nil
}

// next is the next position in every prefix.
func (m *merge) next() (pos []byte, ok bool) {
	best := -1
	for i, it := range m.its {
		if !it.Valid() {
			continue
		}
		if best < 0 || bytes.Compare(it.Key()[len(m.prefixes[i]):], m.its[best].Key()[len(m.prefixes[best]):]) < 0 {
			best = i
		}
	}
	if best < 0 {
		return nil, false
	}
	it := m.its[best]
	pos = slices.Clone(it.Key()[len(m.prefixes[best]):]) // valid only until the iterator moves
	it.Next()
	return pos, true
}

func (m *merge) err() error {
	for _, it := range m.its {
		if err := it.Error(); err != nil {
			return err
		}
	}
	return nil
}

func (m *merge) close() {
	for _, it := range m.its {
		_ = it.Close()
	}
}

// fingerprint identifies a query, limits and positions aside: a continue token carries it.
func fingerprint(ns string, groups []string, phase, result string, after, before time.Time) []byte {
	h := sha256.New()
	b, _ := json.Marshal([]any{ns, groups, phase, result, nanos(after), nanos(before)})
	h.Write(b)
	return h.Sum(nil)
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// A continue token is base64url(version | position | mac): mac is a hash of the query's
// fingerprint and the position, so that a token of another query, cut, or edited does not
// verify. It is not a secret: every replica's index reads every replica's tokens.
const (
	tokenVersion = 1
	macLen       = 16
	maxUIDLen    = 256
)

func tokenMAC(fp, pos []byte) []byte {
	h := sha256.New()
	h.Write(fp)
	h.Write(pos)
	return h.Sum(nil)[:macLen]
}

func encodeContinue(pos, fp []byte) string {
	b := append([]byte{tokenVersion}, pos...)
	return base64.RawURLEncoding.EncodeToString(append(b, tokenMAC(fp, pos)...))
}

func decodeContinue(token string, fp []byte) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url: %w", ErrBadContinue, err)
	}
	if len(b) < 1+posLen+1+macLen || len(b) > 1+posLen+maxUIDLen+macLen {
		return nil, fmt.Errorf("%w: %d bytes long", ErrBadContinue, len(b))
	}
	if b[0] != tokenVersion {
		return nil, fmt.Errorf("%w: version %d, not %d", ErrBadContinue, b[0], tokenVersion)
	}
	pos, mac := b[1:len(b)-macLen], b[len(b)-macLen:]
	if !bytes.Equal(mac, tokenMAC(fp, pos)) {
		return nil, fmt.Errorf("%w: it was not made by this query (another query's, or altered)", ErrBadContinue)
	}
	return pos, nil
}
