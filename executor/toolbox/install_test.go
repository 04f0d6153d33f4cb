package toolbox

import (
	"archive/tar"
	"bytes"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func tarBytes(t *testing.T, entries []tarEntry, finish bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typeflag, Linkname: e.linkname, Mode: 0o644}
		if e.typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Flush(); err != nil {
		t.Fatal(err)
	}
	if finish {
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// workspaceServer serves body to requests with the bearer token "secret"; hits counts them all.
func workspaceServer(t *testing.T, body []byte, hits *atomic.Int32) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits != nil {
			hits.Add(1)
		}
		if r.Header.Get("Authorization") != "Bearer secret" {
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/x-tar")
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestInstall(t *testing.T) {
	t.Parallel()
	body := tarBytes(t, []tarEntry{
		{name: "task-a/", typeflag: tar.TypeDir},
		{name: "task-a/1.tar", typeflag: tar.TypeReg, body: "archive a1"},
		{name: "task-b/10.tar", typeflag: tar.TypeReg, body: "archive b10"},
	}, true)
	srv := workspaceServer(t, body, nil)
	dir := filepath.Join(t.TempDir(), "shared")
	if err := Install(t.Context(), InstallOptions{Dir: dir, WorkspaceURL: srv.URL + "/ws", Token: "secret"}); err != nil {
		t.Fatal(err)
	}

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, ToolboxFile))
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("toolbox not copied: %d bytes of %d, %v", len(got), len(want), err)
	}
	modes := map[string]fs.FileMode{
		ToolboxFile:  0o755,
		StepsDir:     fs.ModeDir | 0o777,
		ArchivesDir:  fs.ModeDir | 0o777,
		WorkspaceDir: fs.ModeDir | 0o777,
	}
	for name, mode := range modes {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode() != mode {
			t.Errorf("%s: %v, %v; want mode %v", name, fi.Mode(), err, mode)
		}
	}
	for path, body := range map[string]string{
		WorkspaceArchivePath(dir, "task-a", 1):  "archive a1",
		WorkspaceArchivePath(dir, "task-b", 10): "archive b10",
	} {
		if data, err := os.ReadFile(path); err != nil || string(data) != body {
			t.Errorf("%s: %q, %v", path, data, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, ToolboxFile+".tmp")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temporary copy left: %v", err)
	}

	// Without a workspace URL there is nothing to fetch.
	bare := t.TempDir()
	if err := Install(t.Context(), InstallOptions{Dir: bare}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Join(bare, WorkspaceDir)); len(entries) != 0 {
		t.Errorf("workspace: %v", entries)
	}
}

func TestInstallRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		entries []tarEntry
		token   string
		status  string // in the error, with the URL
		message string
	}{
		{name: "dot-dot", entries: []tarEntry{{name: "../escaped.tar", typeflag: tar.TypeReg, body: "x"}},
			message: `entry "../escaped.tar" escapes the workspace directory`},
		{name: "dot-dot inside a path", entries: []tarEntry{{name: "a/../../escaped.tar", typeflag: tar.TypeReg, body: "x"}},
			message: "escapes the workspace directory"},
		{name: "absolute", entries: []tarEntry{{name: "/escaped.tar", typeflag: tar.TypeReg, body: "x"}},
			message: "escapes the workspace directory"},
		{name: "symlink", entries: []tarEntry{{name: "a", typeflag: tar.TypeSymlink, linkname: "/"}},
			message: `entry "a": unsupported type`},
		{name: "wrong token", token: "guess", message: "401 Unauthorized: bad token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := workspaceServer(t, tarBytes(t, tt.entries, true), nil)
			token := tt.token
			if token == "" {
				token = "secret"
			}
			dir := filepath.Join(t.TempDir(), "shared")
			url := srv.URL + "/v1/tasks/t/workspace"
			err := Install(t.Context(), InstallOptions{Dir: dir, WorkspaceURL: url, Token: token})
			if err == nil || !strings.Contains(err.Error(), tt.message) || !strings.Contains(err.Error(), url) {
				t.Errorf("error %v, want one naming %s and saying %q", err, url, tt.message)
			}
			for _, p := range []string{filepath.Join(dir, "escaped.tar"), filepath.Join(filepath.Dir(dir), "escaped.tar"), "/escaped.tar"} {
				if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s written", p)
				}
			}
		})
	}
}

// Not parallel: changes fetchRetryDelay, before the parallel tests resume.
func TestInstallRetries(t *testing.T) {
	defer func(d time.Duration) { fetchRetryDelay = d }(fetchRetryDelay)
	fetchRetryDelay = 10 * time.Millisecond
	body := tarBytes(t, []tarEntry{{name: "p/0.tar", typeflag: tar.TypeReg, body: "zero"}}, true)

	// The first two connections are dropped before any answer.
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) <= 2 {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = conn.Close()
			}
			return
		}
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	dir := t.TempDir()
	if err := Install(t.Context(), InstallOptions{Dir: dir, WorkspaceURL: srv.URL, Token: "secret"}); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(WorkspaceArchivePath(dir, "p", 0)); err != nil || string(data) != "zero" {
		t.Errorf("archive %q, %v", data, err)
	}
	if n := hits.Load(); n != 3 {
		t.Errorf("%d requests, want 3", n)
	}

	// An archive without its end marker was cut short by the executor: retried, then an error.
	hits.Store(0)
	cut := workspaceServer(t, tarBytes(t, []tarEntry{{name: "p/0.tar", typeflag: tar.TypeReg, body: "zero"}}, false), &hits)
	err := Install(t.Context(), InstallOptions{Dir: t.TempDir(), WorkspaceURL: cut.URL, Token: "secret"})
	if err == nil || !strings.Contains(err.Error(), "cut short") {
		t.Errorf("error %v, want the archive cut short", err)
	}
	if n := hits.Load(); int(n) != fetchAttempts {
		t.Errorf("%d requests, want %d", n, fetchAttempts)
	}

	// A refusal is not retried.
	hits.Store(0)
	srvDenied := workspaceServer(t, body, &hits)
	if err := Install(t.Context(), InstallOptions{Dir: t.TempDir(), WorkspaceURL: srvDenied.URL, Token: "wrong"}); err == nil {
		t.Error("no error")
	}
	if n := hits.Load(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}
