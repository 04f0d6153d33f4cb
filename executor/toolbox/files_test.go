package toolbox

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"runservice.dev/runservice/api/v1alpha1"
)

// hostileDir is a task directory whose files a task tampered with, next to a secret outside it.
func hostileDir(t *testing.T) (dir, secret string) {
	t.Helper()
	root := t.TempDir()
	secret = filepath.Join(root, "secret")
	if err := os.WriteFile(secret, []byte("the host's secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(root, "task")
	if err := WriteTaskFile(dir, &TaskFile{}); err != nil {
		t.Fatal(err)
	}
	return dir, secret
}

func TestOpenFileRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		plant  func(t *testing.T, dir, secret string)
		rel    string
		max    int64
		reason string // "" when the file opens and reads whole
	}{
		{"a plain log", func(t *testing.T, dir, _ string) { write(t, dir, "steps/0.log", "hello") }, "steps/0.log", 5, ""},
		{"a symbolic link to a host file", func(t *testing.T, dir, secret string) { symlink(t, secret, dir, "steps/0.log") }, "steps/0.log", 1 << 20,
			"steps/0.log: is a symbolic link; refused"},
		{"a symbolic link inside the directory", func(t *testing.T, dir, _ string) {
			write(t, dir, "steps/1.log", "other")
			symlink(t, "1.log", dir, "steps/0.log")
		}, "steps/0.log", 1 << 20, "steps/0.log: is a symbolic link; refused"},
		{"steps is a link to /", func(t *testing.T, dir, _ string) {
			if err := os.RemoveAll(filepath.Join(dir, "steps")); err != nil {
				t.Fatal(err)
			}
			symlink(t, "/", dir, "steps")
		}, "steps/0.log", 1 << 20, "steps/0.log: steps is a symbolic link; refused"},
		{"steps is a file", func(t *testing.T, dir, _ string) {
			if err := os.RemoveAll(filepath.Join(dir, "steps")); err != nil {
				t.Fatal(err)
			}
			write(t, dir, "steps", "x")
		}, "steps/0.log", 1 << 20, "steps/0.log: steps is a regular file; refused"},
		{"a FIFO", func(t *testing.T, dir, _ string) {
			if err := syscall.Mkfifo(filepath.Join(dir, "steps/0.log"), 0o666); err != nil {
				t.Fatal(err)
			}
		}, "steps/0.log", 1 << 20, "steps/0.log: is a named pipe (FIFO); refused"},
		{"a directory", func(t *testing.T, dir, _ string) {
			if err := os.Mkdir(filepath.Join(dir, "steps/0.log"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, "steps/0.log", 1 << 20, "steps/0.log: is a directory; refused"},
		{"a hard link", func(t *testing.T, dir, _ string) {
			if err := os.Link(filepath.Join(dir, TaskFileName), filepath.Join(dir, "steps/0.log")); err != nil {
				t.Fatal(err)
			}
		}, "steps/0.log", 1 << 20, "steps/0.log: has 2 hard links; refused"},
		{"past its bound", func(t *testing.T, dir, _ string) { write(t, dir, "archives/0.tar", "123456") }, "archives/0.tar", 5,
			"archives/0.tar: is larger than the executor's limit of 5; refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir, secret := hostileDir(t)
			tt.plant(t, dir, secret)
			done := make(chan error, 1)
			go func() { done <- CheckFile(dir, tt.rel, 0, "log", tt.max) }()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("CheckFile blocked")
			}
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("CheckFile: %v", err)
				}
				return
			}
			var re *RefusedError
			if !errors.As(err, &re) || !errors.Is(err, ErrRefused) || err.Error() != tt.reason {
				t.Fatalf("CheckFile: %v, want the refusal %q", err, tt.reason)
			}
		})
	}
}

func TestOpenFileNotExist(t *testing.T) {
	t.Parallel()
	dir, _ := hostileDir(t)
	for _, rel := range []string{"steps/0.log", "nothing/0.log"} {
		if _, err := OpenFile(dir, rel, 0, "log", 10); !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v, want not exist", rel, err)
		}
	}
	for _, rel := range []string{"../secret", "/etc/passwd", "steps/../../secret", ""} {
		if _, err := OpenFile(dir, rel, 0, "log", 10); err == nil || !strings.Contains(err.Error(), "not a path inside") {
			t.Errorf("%q: %v, want not a path inside", rel, err)
		}
	}
}

// A file read through its bound gives the bytes up to it, then an error rather than a silent end;
// a sparse file of 10 GiB is neither read whole nor refused for a short read.
func TestFileReadsUpToItsBound(t *testing.T) {
	t.Parallel()
	dir, _ := hostileDir(t)
	f, err := os.Create(filepath.Join(dir, "steps/0.log"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(10 << 30); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	lf, err := OpenFile(dir, "steps/0.log", 0, "log", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if lf.Size() != 10<<30 {
		t.Fatalf("size %d", lf.Size())
	}
	n, err := io.Copy(io.Discard, lf)
	var re *RefusedError
	if n != 1<<20 || !errors.As(err, &re) || re.Step != 0 || re.Kind != "log" || re.Explain([]string{"sparse"}) !=
		`step "sparse" log steps/0.log: is larger than the executor's limit of 1Mi; refused` {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	if err := lf.Whole(); !errors.Is(err, ErrRefused) {
		t.Fatalf("Whole: %v", err)
	}
}

// ReadResult and Stop, the executor's reads and writes of the protocol, follow nothing planted.
func TestProtocolFollowsNoLink(t *testing.T) {
	t.Parallel()
	dir, secret := hostileDir(t)
	if err := os.WriteFile(secret, []byte(`{"phase":"Failed","message":"the host's secret"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	symlink(t, secret, dir, "steps/0.json")
	if res, err := ReadResult(dir, 0); !errors.Is(err, ErrRefused) {
		t.Errorf("ReadResult through a link: %+v, %v", res, err)
	}
	outside := filepath.Join(filepath.Dir(dir), "created")
	symlink(t, outside, dir, StopFile)
	if err := Stop(dir); !errors.Is(err, ErrRefused) {
		t.Errorf("Stop through a link: %v", err)
	}
	if _, err := os.Lstat(outside); err == nil {
		t.Errorf("Stop created %s through the task's link", outside)
	}
	if err := Start(dir); err != nil {
		t.Fatal(err)
	}
	if err := Start(dir); err != nil {
		t.Fatalf("Start twice: %v", err)
	}
}

func TestAuditNamesTheStep(t *testing.T) {
	t.Parallel()
	dir, secret := hostileDir(t)
	if err := writeResult(dir, 0, &StepResult{Phase: v1alpha1.StepPhaseSuccess}); err != nil {
		t.Fatal(err)
	}
	write(t, dir, "steps/0.log", "fine")
	if err := Audit(dir, []string{"build", "leak"}, Limits{}); err != nil {
		t.Fatalf("a clean task: %v", err)
	}
	symlink(t, secret, dir, "steps/1.log")
	var re *RefusedError
	if err := Audit(dir, []string{"build", "leak"}, Limits{}); !errors.As(err, &re) ||
		re.Explain([]string{"build", "leak"}) != `step "leak" log steps/1.log: is a symbolic link; refused` {
		t.Fatalf("Audit: %v", err)
	}
}

func write(t *testing.T, dir, rel, data string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, rel), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, dir, rel string) {
	t.Helper()
	_ = os.Remove(filepath.Join(dir, rel))
	if err := os.Symlink(target, filepath.Join(dir, rel)); err != nil {
		t.Fatal(err)
	}
}
