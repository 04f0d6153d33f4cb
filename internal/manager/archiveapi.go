package manager

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"

	"runservice.dev/runservice/internal/archive/index"
	"runservice.dev/runservice/internal/archiveapi"
)

// addArchiveAPI makes every replica serve the archive API, when opts ask for it, from an index of
// its own that follows the archive's segments in the object store.
func addArchiveAPI(mgr ctrl.Manager, cfg *rest.Config, opts Options) error {
	a := opts.ArchiveAPI
	if a.Port == 0 {
		return nil
	}
	if a.CertDir == "" {
		a.CertDir = opts.WebhookCertDir
	}
	if a.Store = opts.Controllers.Store; a.Store == nil {
		return errors.New("the archive API serves documents from the object store: give one (--object-store)")
	}
	if opts.ArchiveIndexDir == "" {
		return errors.New("the archive API needs a directory for its index (--archive-index-dir)")
	}
	ix, err := index.Open(opts.ArchiveIndexDir)
	if err != nil {
		return err
	}
	follower := &index.Follower{Store: a.Store, Index: ix}
	a.Index, a.Ready = ix, follower.Ready
	srv, err := archiveapi.New(cfg, a)
	if err != nil {
		_ = ix.Close()
		return err
	}
	if err := mgr.Add(archiveReads{index: ix, follower: follower, server: srv}); err != nil {
		_ = ix.Close()
		return fmt.Errorf("adding the archive API: %w", err)
	}
	return nil
}

// archiveReads runs the index's follower and the archive API, and closes the index once both are
// done, on every replica.
type archiveReads struct {
	index    *index.Index
	follower *index.Follower
	server   *archiveapi.Server
}

func (r archiveReads) Start(ctx context.Context) error {
	defer func() { _ = r.index.Close() }()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.follower.Start(ctx) })
	g.Go(func() error { return r.server.Start(ctx) })
	return g.Wait()
}

func (archiveReads) NeedLeaderElection() bool { return false }
