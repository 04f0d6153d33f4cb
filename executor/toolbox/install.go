package toolbox

import (
	"archive/tar"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ToolboxFile is where Install puts the toolbox binary in the shared directory.
const ToolboxFile = "toolbox"

// InstallOptions say what Install prepares.
type InstallOptions struct {
	// Dir is the shared directory, a volume the main container mounts too.
	Dir string
	// WorkspaceURL, when set, is fetched for the parents' archives: a tar of <source>/<i>.tar,
	// extracted into Dir/workspace/.
	WorkspaceURL string
	// Token is sent as a bearer token with the request for WorkspaceURL.
	Token string
	// CA holds the certificates (PEM) an https WorkspaceURL is trusted with, and no other: the
	// executors' CA of the namespace.
	CA []byte
}

// fetchAttempts and fetchRetryDelay (doubled after each attempt) bound how long Install waits for
// the executor's endpoint: a pod can start before the network lets it through. Variables so
// tests need not wait.
var (
	fetchAttempts   = 5
	fetchRetryDelay = time.Second
)

// Install prepares the shared directory of a pod from its init container, where the toolbox's
// own image runs: it copies the running binary to Dir/toolbox, creates steps/, archives/ and
// workspace/ writable by any user (the main container may run as anyone), and fetches the
// parents' archives when there is a WorkspaceURL.
func Install(ctx context.Context, opts InstallOptions) error {
	if opts.Dir == "" {
		return errors.New("no directory to install to")
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", opts.Dir, err)
	}
	for _, d := range []string{StepsDir, ArchivesDir, WorkspaceDir} {
		p := filepath.Join(opts.Dir, d)
		if err := os.MkdirAll(p, 0o777); err != nil {
			return fmt.Errorf("creating %s: %w", p, err)
		}
		// Explicitly: MkdirAll's mode goes through the umask.
		if err := os.Chmod(p, 0o777); err != nil {
			return fmt.Errorf("creating %s: %w", p, err)
		}
	}
	if err := copySelf(filepath.Join(opts.Dir, ToolboxFile)); err != nil {
		return fmt.Errorf("copying the toolbox: %w", err)
	}
	if opts.WorkspaceURL == "" {
		return nil
	}
	client, err := workspaceClient(opts)
	if err != nil {
		return err
	}
	return fetchWorkspace(ctx, client, opts.WorkspaceURL, opts.Token, filepath.Join(opts.Dir, WorkspaceDir))
}

// workspaceClient trusts the executor's CA only, never the image's or the system's roots.
func workspaceClient(opts InstallOptions) (*http.Client, error) {
	if !strings.HasPrefix(opts.WorkspaceURL, "https://") {
		return http.DefaultClient, nil
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(opts.CA) {
		return nil, fmt.Errorf("fetching the workspace from %s: no CA certificate to trust it with ($RUNSERVICE_CA)", opts.WorkspaceURL)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	return &http.Client{Transport: tr}, nil
}

// copySelf copies the running binary to dst, renamed into place so that a half-copied toolbox is
// never executed.
func copySelf(dst string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	src, err := os.Open(exe)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp := dst + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, src)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o755)
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// transferError is a failure of the connection while the workspace was read, worth retrying,
// unlike a bad archive.
type transferError struct{ err error }

func (e *transferError) Error() string { return e.err.Error() }
func (e *transferError) Unwrap() error { return e.err }

// fetchWorkspace GETs url and extracts it into dest, retrying when the connection fails.
func fetchWorkspace(ctx context.Context, client *http.Client, url, token, dest string) error {
	delay := fetchRetryDelay
	for attempt := 1; ; attempt++ {
		err := fetchOnce(ctx, client, url, token, dest)
		if err == nil {
			return nil
		}
		var te *transferError
		if !errors.As(err, &te) || ctx.Err() != nil {
			return fmt.Errorf("fetching the workspace from %s: %w", url, err)
		}
		if attempt == fetchAttempts {
			return fmt.Errorf("fetching the workspace from %s (%d attempts): %w", url, attempt, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fetching the workspace from %s: %w", url, err)
		case <-time.After(delay):
		}
		delay *= 2
	}
}

func fetchOnce(ctx context.Context, client *http.Client, url, token, dest string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return &transferError{err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		msg := resp.Status
		if s := strings.TrimSpace(string(body)); s != "" {
			msg += ": " + s
		}
		return errors.New(msg)
	}
	body := &bodyReader{r: resp.Body}
	err = extractWorkspace(ctx, body, dest)
	switch {
	case err == nil && body.readPastEnd:
		// tar.Reader takes the end of the body at an entry's boundary for the end of the archive,
		// and the executor ends a workspace it could not finish exactly so. A complete archive has
		// its end marker, after which tar.Reader reads no more.
		return &transferError{errors.New("the archive was cut short")}
	case err != nil && body.eof:
		return &transferError{fmt.Errorf("the archive was cut short: %w", err)}
	}
	return err
}

// bodyReader tells connection failures from the end of the body.
type bodyReader struct {
	r   io.Reader
	eof bool // the body ended
	// readPastEnd is set when a read found nothing left: the last bytes of a complete archive
	// can come with io.EOF, but nothing reads after them.
	readPastEnd bool
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	switch {
	case err == io.EOF:
		b.eof = true
		b.readPastEnd = b.readPastEnd || n == 0
	case err != nil:
		err = &transferError{err}
	}
	return n, err
}

// extractWorkspace writes the files of the tar in body under dest. Only directories and regular
// files are accepted, and only inside dest.
func extractWorkspace(ctx context.Context, body io.Reader, dest string) error {
	tr := tar.NewReader(body)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if !filepath.IsLocal(name) {
			return fmt.Errorf("entry %q escapes the workspace directory", hdr.Name)
		}
		name = filepath.Clean(name)
		if name == "." {
			continue
		}
		if err := checkNoSymlinkParents(dest, name); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		target := filepath.Join(dest, name)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := prepareTarget(target); err != nil {
				return err
			}
			if err := writeFile(target, tr, 0o644, hdr.ModTime); err != nil {
				return fmt.Errorf("extracting %q: %w", hdr.Name, err)
			}
		default:
			return fmt.Errorf("entry %q: unsupported type %q", hdr.Name, hdr.Typeflag)
		}
	}
	return nil
}
