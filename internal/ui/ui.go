// Package ui serves runctl's web view: a page on the loopback interface that lists runs, draws a
// run's graph, shows a task's steps and live log and offers approve, stop and restart. Every call
// it makes to Kubernetes uses the user's own credentials (the rest.Config given), so RBAC decides
// what the page shows and does; nothing runs in the cluster. The local server guards itself
// against other local users and web sites: it listens on a loopback address only, answers only
// under a random path prefix made at start (the secret in the printed URL), only to requests whose
// Host is that address (DNS rebinding), and takes POSTs only from its own origin (CSRF).
package ui

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

//go:embed assets
var assets embed.FS

// Options configure the web view.
type Options struct {
	// Config holds the user's credentials; every request to Kubernetes is made with it.
	Config *rest.Config
	// Namespace is the namespace the runs list opens on ("" for all namespaces).
	Namespace string
	// Addr is where to listen: a loopback address and a port (default 127.0.0.1:0, a free port).
	Addr string
	// Out receives the URL to open, secret included.
	Out io.Writer
	// ObjectStore is the store the manager fetches logs into (default objectstore.DefaultURL()).
	ObjectStore string
	// InsecureHTTP lets the log panel read from executors' http:// endpoints.
	InsecureHTTP bool
	// Ready, when set, is called with the URL once the server listens (tests use it).
	Ready func(url string)
}

// Run serves the web view until ctx ends.
func Run(ctx context.Context, o Options) error {
	if o.Config == nil {
		return errors.New("ui: no Kubernetes configuration")
	}
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if err := loopback(o.Addr); err != nil {
		return err
	}
	if o.ObjectStore == "" {
		o.ObjectStore = objectstore.DefaultURL()
	}
	s, err := newServer(o)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", o.Addr, err)
	}
	s.hosts = allowedHosts(ln.Addr().(*net.TCPAddr))
	url := fmt.Sprintf("http://%s%s", ln.Addr(), s.prefix)
	if o.Out != nil {
		fmt.Fprintf(o.Out, "runctl ui: open %s\n", url)
	}
	srv := &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx }, // ends the live streams
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if o.Ready != nil {
		o.Ready(url)
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}

// loopback refuses an address that is not on the loopback interface: the server holds the user's
// credentials and must not be reachable from other hosts.
func loopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("ui: address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("ui: address %q is not a loopback address (127.0.0.1, ::1 or localhost): the page acts with your credentials and is served to this machine only", addr)
	}
	return nil
}

// allowedHosts are the Host headers the server answers: its address, by number or as localhost.
// A name that resolves to 127.0.0.1 only through a hostile DNS answer (rebinding) is refused.
func allowedHosts(a *net.TCPAddr) map[string]bool {
	port := fmt.Sprint(a.Port)
	return map[string]bool{
		net.JoinHostPort(a.IP.String(), port): true,
		net.JoinHostPort("localhost", port):   true,
	}
}

type server struct {
	o      Options
	prefix string // "/<secret>/"
	hosts  map[string]bool
	runs   versioned.Interface
	kube   kubernetes.Interface
	static http.Handler
}

func newServer(o Options) (*server, error) {
	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	s := &server{o: o, prefix: "/" + base64.RawURLEncoding.EncodeToString(secret) + "/"}
	var err error
	if s.runs, err = versioned.NewForConfig(o.Config); err != nil {
		return nil, err
	}
	if s.kube, err = kubernetes.NewForConfig(o.Config); err != nil {
		return nil, err
	}
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		return nil, err
	}
	s.static = http.FileServerFS(sub)
	return s, nil
}

func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/config", s.config)
	mux.HandleFunc("GET /api/runs", s.listRuns)
	mux.HandleFunc("GET /api/runs/watch", s.watchRuns)
	mux.HandleFunc("GET /api/runs/{ns}/{name}", s.getRun)
	mux.HandleFunc("GET /api/runs/{ns}/{name}/watch", s.watchRun)
	mux.HandleFunc("GET /api/runs/{ns}/{name}/tasks/{task}/steps/{step}/log", s.stepLog)
	mux.HandleFunc("POST /api/runs/{ns}/{name}/approve", s.approve)
	mux.HandleFunc("POST /api/runs/{ns}/{name}/stop", s.stop)
	mux.HandleFunc("POST /api/runs/{ns}/{name}/restart", s.restart)
	mux.Handle("GET /", s.static)
	return s.guard(mux)
}

// guard lets a request through only with the right Host, under the secret prefix, and for a
// POST from the page's own origin.
func (s *server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer") // the secret is in the URL
		h.Set("Cache-Control", "no-store")
		if !s.hosts[r.Host] {
			http.Error(w, "forbidden: unexpected Host header", http.StatusForbidden)
			return
		}
		if len(r.URL.Path) < len(s.prefix) || subtle.ConstantTimeCompare([]byte(r.URL.Path[:len(s.prefix)]), []byte(s.prefix)) != 1 {
			http.Error(w, "forbidden: open the URL runctl ui printed (it carries a secret)", http.StatusForbidden)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if r.Header.Get("Origin") != "http://"+r.Host || (r.Header.Get("Sec-Fetch-Site") != "" && r.Header.Get("Sec-Fetch-Site") != "same-origin") {
				http.Error(w, "forbidden: cross-origin request", http.StatusForbidden)
				return
			}
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/" + r.URL.Path[len(s.prefix):]
		r2.URL.RawPath = ""
		next.ServeHTTP(w, r2)
	})
}
