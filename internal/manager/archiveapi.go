package manager

import (
	"errors"
	"fmt"

	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"

	"runservice.dev/runservice/internal/archiveapi"
)

// addArchiveAPI makes every replica serve the archive API, when opts ask for it.
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
	srv, err := archiveapi.New(cfg, a)
	if err != nil {
		return err
	}
	if err := mgr.Add(srv); err != nil {
		return fmt.Errorf("adding the archive API: %w", err)
	}
	return nil
}
