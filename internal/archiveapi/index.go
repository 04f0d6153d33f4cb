package archiveapi

import (
	"errors"
	"time"

	"runservice.dev/runservice/internal/archive"
)

// Index answers the queries of the archive: internal/archive/index implements it.
type Index interface {
	// List returns a page of the entries q selects, newest first. A continue token that the index
	// did not issue for q is an error wrapping ErrBadContinue.
	List(q Query) (Page, error)
	// Get returns the entries of the runs named name in namespace, newest first.
	Get(namespace, name string) ([]archive.Entry, error)
	// GetUID returns the entry of the run with uid in namespace.
	GetUID(namespace, uid string) (archive.Entry, bool, error)
}

// Query selects archived runs: those of Namespace ("" for all), in every one of ChangeGroups, with
// Phase and Result when set, created in [CreatedAfter, CreatedBefore) when set; at most Limit of
// them (0: all), after the page Continue ended.
type Query struct {
	Namespace                   string
	ChangeGroups                []string
	Phase, Result               string
	CreatedAfter, CreatedBefore time.Time
	Limit                       int
	Continue                    string
}

// Page is one page of a List: Continue is "" on the last one; RemainingItemCount, when the index
// knows it cheaply, counts the entries after this page.
type Page struct {
	Entries            []archive.Entry
	Continue           string
	RemainingItemCount *int64
}

// ErrBadContinue is wrapped by the errors of List for a continue token that is forged, stale, or
// from another query.
var ErrBadContinue = errors.New("bad continue token")
