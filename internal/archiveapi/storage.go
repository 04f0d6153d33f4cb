package archiveapi

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/warning"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
)

// resource is the plural of ArchivedRun in the API.
const resource = "archivedruns"

// documentReads bounds the documents a list page reads from the object store at once.
const documentReads = 16

// archivedRuns is the REST storage of archivedruns: get and list, from the index and the documents.
type archivedRuns struct {
	tableConvertor
	index Index
	store *objectstore.Store
	ready func() bool
}

var (
	_ rest.Getter               = (*archivedRuns)(nil)
	_ rest.Lister               = (*archivedRuns)(nil)
	_ rest.Scoper               = (*archivedRuns)(nil)
	_ rest.ShortNamesProvider   = (*archivedRuns)(nil)
	_ rest.CategoriesProvider   = (*archivedRuns)(nil)
	_ rest.SingularNameProvider = (*archivedRuns)(nil)
)

func (*archivedRuns) New() runtime.Object     { return &arv1.ArchivedRun{} }
func (*archivedRuns) NewList() runtime.Object { return &arv1.ArchivedRunList{} }
func (*archivedRuns) Destroy()                {}
func (*archivedRuns) NamespaceScoped() bool   { return true }
func (*archivedRuns) ShortNames() []string    { return []string{"ar"} }
func (*archivedRuns) Categories() []string    { return []string{"runservice"} }
func (*archivedRuns) GetSingularName() string { return "archivedrun" }

// Get returns the document of the newest archived run named name in the request's namespace, or
// of the archived run whose uid is name.
func (s *archivedRuns) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	if err := s.indexReady(); err != nil {
		return nil, err
	}
	ns := genericapirequest.NamespaceValue(ctx)
	entries, err := s.index.Get(ns, name)
	if err != nil {
		return nil, indexError(err)
	}
	for _, e := range entries {
		if !e.Deleted {
			return s.document(ctx, e)
		}
	}
	e, ok, err := s.index.GetUID(ns, name)
	if err != nil {
		return nil, indexError(err)
	}
	if !ok || e.Deleted {
		return nil, apierrors.NewNotFound(arv1.Resource(resource), name)
	}
	return s.document(ctx, e)
}

// document reads e's document.
func (s *archivedRuns) document(ctx context.Context, e archive.Entry) (*arv1.ArchivedRun, error) {
	doc, err := archive.GetDocument(ctx, s.store, e.Namespace, e.Name, e.UID)
	switch {
	case errors.Is(err, objectstore.ErrNotFound):
		// Deleted by retention since the index was read.
		return nil, apierrors.NewNotFound(arv1.Resource(resource), e.Name)
	case err != nil:
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("reading the archived run %s/%s (uid %s) from the object store: %v", e.Namespace, e.Name, e.UID, err))
	}
	return doc, nil
}

// List returns a page of archived runs. A Table (kubectl get) needs only the index's entries; any
// other list gets the documents.
func (s *archivedRuns) List(ctx context.Context, opts *metainternalversion.ListOptions) (runtime.Object, error) {
	q, err := queryFor(genericapirequest.NamespaceValue(ctx), opts)
	if err != nil {
		return nil, err
	}
	if s.index == nil {
		// An error would fail kubectl get runservice, whose category lists archived runs too.
		warning.AddWarning(ctx, "", noIndex+": no archived run is listed")
		return &arv1.ArchivedRunList{Items: []arv1.ArchivedRun{}}, nil
	}
	if err := s.indexReady(); err != nil {
		return nil, err
	}
	var page Page
	if q.Name != "" {
		entries, err := s.index.Get(q.Namespace, q.Name)
		if err != nil {
			return nil, indexError(err)
		}
		for _, e := range entries {
			if q.matches(&e) {
				page.Entries = append(page.Entries, e)
			}
		}
	} else if page, err = s.index.List(q.Query); err != nil {
		return nil, indexError(err)
	}
	if q.Unlimited && page.Continue != "" {
		warning.AddWarning(ctx, "", fmt.Sprintf("archived runs are listed %d at a time: this list goes on (its continue token; kubectl: --chunk-size)", maxPage))
	}
	list := &arv1.ArchivedRunList{
		ListMeta: metav1.ListMeta{Continue: page.Continue, RemainingItemCount: page.RemainingItemCount},
		Items:    make([]arv1.ArchivedRun, 0, len(page.Entries)),
	}
	if entriesSuffice(ctx) {
		for _, e := range page.Entries {
			if !e.Deleted {
				list.Items = append(list.Items, objectOf(e))
			}
		}
		return list, nil
	}
	docs := make([]*arv1.ArchivedRun, len(page.Entries))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(documentReads)
	for i, e := range page.Entries {
		if e.Deleted {
			continue
		}
		g.Go(func() error {
			doc, err := s.document(gctx, e)
			if apierrors.IsNotFound(err) {
				return nil // deleted since the index was read: not listed
			}
			docs[i] = doc
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for _, d := range docs {
		if d != nil {
			list.Items = append(list.Items, *d)
		}
	}
	return list, nil
}

// noIndex says why a server given no index answers nothing.
const noIndex = "this manager has no archive index to answer from"

var errNoIndex = apierrors.NewServiceUnavailable(noIndex)

// indexReady is nil when the index can answer.
func (s *archivedRuns) indexReady() error {
	switch {
	case s.index == nil:
		return errNoIndex
	case s.ready != nil && !s.ready():
		return apierrors.NewServiceUnavailable("this manager's archive index is being rebuilt from the object store; ask again in a moment")
	}
	return nil
}

// indexError is the API error of a failed index query: a bad continue token is the client's.
func indexError(err error) error {
	if errors.Is(err, ErrBadContinue) {
		return apierrors.NewBadRequest(fmt.Sprintf("continue: %v: the token is not one this server issued for this list (forged, expired, or from a list with other selectors); list again without it", err))
	}
	return apierrors.NewServiceUnavailable(fmt.Sprintf("querying the archive index: %v", err))
}
