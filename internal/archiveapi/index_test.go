package archiveapi_test

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/archiveapi"
	"runservice.dev/runservice/internal/objectstore"
)

// segmentIndex answers the archive API's queries by scanning every entry of the index segments in
// the store: what internal/archive/index answers from its own index, which replaces this when it
// lands. It reads the same data, so the tests need not change.
type segmentIndex struct {
	entries []archive.Entry // newest first
}

func loadIndex(ctx context.Context, store *objectstore.Store) (*segmentIndex, error) {
	keys, err := store.List(ctx, archive.SegmentPrefix)
	if err != nil {
		return nil, err
	}
	x := &segmentIndex{}
	for _, k := range keys {
		es, err := archive.ReadSegment(ctx, store, k)
		if err != nil {
			return nil, err
		}
		x.entries = append(x.entries, es...)
	}
	slices.SortFunc(x.entries, func(a, b archive.Entry) int {
		return cmp.Or(b.Created.Compare(a.Created), strings.Compare(a.UID, b.UID))
	})
	return x, nil
}

func (x *segmentIndex) List(q archiveapi.Query) (archiveapi.Page, error) {
	// A token is the query it continues (without its paging) and an offset.
	key := q
	key.Limit, key.Continue = 0, ""
	b, _ := json.Marshal(key)
	sum := sha256.Sum256(b)
	id := hex.EncodeToString(sum[:8])
	offset := 0
	if q.Continue != "" {
		qid, off, ok := strings.Cut(q.Continue, ":")
		n, err := strconv.Atoi(off)
		if !ok || qid != id || err != nil || n <= 0 {
			return archiveapi.Page{}, fmt.Errorf("token %q: %w", q.Continue, archiveapi.ErrBadContinue)
		}
		offset = n
	}
	var match []archive.Entry
	for _, e := range x.entries {
		if x.matches(q, e) {
			match = append(match, e)
		}
	}
	if offset > len(match) {
		return archiveapi.Page{}, fmt.Errorf("token %q: past the end: %w", q.Continue, archiveapi.ErrBadContinue)
	}
	page := archiveapi.Page{Entries: match[offset:]}
	if q.Limit > 0 && len(page.Entries) > q.Limit {
		page.Entries = page.Entries[:q.Limit]
		page.Continue = fmt.Sprintf("%s:%d", id, offset+q.Limit)
		rest := int64(len(match) - offset - q.Limit)
		page.RemainingItemCount = &rest
	}
	return page, nil
}

func (x *segmentIndex) matches(q archiveapi.Query, e archive.Entry) bool {
	if (q.Namespace != "" && e.Namespace != q.Namespace) || (q.Phase != "" && e.Phase != q.Phase) || (q.Result != "" && e.Result != q.Result) {
		return false
	}
	if (!q.CreatedAfter.IsZero() && e.Created.Before(q.CreatedAfter)) || (!q.CreatedBefore.IsZero() && !e.Created.Before(q.CreatedBefore)) {
		return false
	}
	for _, g := range q.ChangeGroups {
		if !slices.Contains(e.ChangeGroups, g) {
			return false
		}
	}
	return !e.Deleted
}

func (x *segmentIndex) Get(namespace, name string) ([]archive.Entry, error) {
	var out []archive.Entry
	for _, e := range x.entries {
		if e.Namespace == namespace && e.Name == name {
			out = append(out, e)
		}
	}
	return out, nil
}

func (x *segmentIndex) GetUID(namespace, uid string) (archive.Entry, bool, error) {
	for _, e := range x.entries {
		if e.Namespace == namespace && e.UID == uid {
			return e, true, nil
		}
	}
	return archive.Entry{}, false, nil
}
