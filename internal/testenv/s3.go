package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"runservice.dev/runservice/internal/objectstore"
)

// S3 is a running S3 server (versitygw with its posix backend) with one bucket.
type S3 struct {
	// URL is the object store URL of the bucket (s3blob), for the manager and the executors.
	URL string
	// Env is what a process needs to reach it: the credentials, as AWS_* variables.
	Env []string

	bin, addr, dir, access, secret string
	cmd                            *exec.Cmd
}

// StartS3 builds (once, hack/s3.sh) and starts versitygw on a free loopback port, storing under dir.
func StartS3(root, dir string) (*S3, error) {
	out, err := exec.Command(filepath.Join(root, "hack", "s3.sh")).Output()
	if err != nil {
		return nil, fmt.Errorf("building versitygw with hack/s3.sh: %w", err)
	}
	const bucket = "runservice"
	if err := os.MkdirAll(filepath.Join(dir, bucket), 0o755); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	s := &S3{
		URL:  fmt.Sprintf("s3://%s?endpoint=http://%s&use_path_style=true&region=us-east-1", bucket, addr),
		bin:  strings.TrimSpace(string(out)),
		addr: addr, dir: dir, access: "runservice", secret: "runservice-secret-key",
	}
	s.Env = []string{"AWS_ACCESS_KEY_ID=" + s.access, "AWS_SECRET_ACCESS_KEY=" + s.secret, "AWS_RESPONSE_CHECKSUM_VALIDATION=when_required"}
	if err := s.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

// Start starts the server (again, after Stop) on its address, serving what it stored before, and
// waits until it answers.
func (s *S3) Start() error {
	cmd := exec.Command(s.bin, "--port", s.addr, "--access", s.access, "--secret", s.secret, "posix", "--nometa", s.dir)
	cmd.Stderr = os.Stderr // its access log goes to stdout: dropped
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting versitygw: %w", err)
	}
	s.cmd = cmd
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", s.addr)
		if err == nil {
			_ = c.Close()
			return nil
		}
		if i > 100 {
			s.Stop()
			return fmt.Errorf("versitygw does not answer on %s", s.addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server; clients then find its port closed.
func (s *S3) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Stores starts an S3 server for t and opens a bucket of each kind the object store supports, by
// scheme: "file" (a new directory) and "s3" (a bucket of that server, whose credentials are set in
// t's environment for the processes t starts). A server that cannot start fails t, CI or not.
func Stores(t testing.TB) map[string]*objectstore.Store {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	s3, err := StartS3(root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s3.Stop)
	for _, kv := range s3.Env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	out := map[string]*objectstore.Store{}
	for name, url := range map[string]string{"file": objectstore.FileURL(filepath.Join(t.TempDir(), "new", "dir")), "s3": s3.URL} {
		store, err := objectstore.Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = store.Close() })
		out[name] = store
	}
	return out
}
