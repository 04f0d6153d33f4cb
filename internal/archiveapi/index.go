package archiveapi

import (
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/archive/index"
)

// Index answers the queries of the archive: *index.Index, the manager replica's own.
type Index interface {
	// List returns a page of the entries q selects, newest first. A continue token that the index
	// did not issue for q is an error wrapping ErrBadContinue.
	List(q Query) (Page, error)
	// Get returns the entries of the runs named name in namespace, newest first.
	Get(namespace, name string) ([]archive.Entry, error)
	// GetUID returns the entry of the run with uid in namespace.
	GetUID(namespace, uid string) (archive.Entry, bool, error)
}

var _ Index = (*index.Index)(nil)

// The index's query, page and bad-token error.
type (
	Query = index.Query
	Page  = index.Page
)

var ErrBadContinue = index.ErrBadContinue
