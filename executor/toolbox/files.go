package toolbox

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/resource"
)

// The task can write everything under its shared directory (the Docker driver bind-mounts it
// read-write into the main container), while the executor reading it runs as root on the host. A
// step that replaces steps/0.log with a symbolic link to /etc/shadow, a FIFO, a device node, a
// hard link or a 10 GiB sparse file must not make the executor read, block on or store what is
// behind it. The functions of this file are the only way the executor opens a file of a task's
// directory: relative to the directory, refusing a symbolic link in any component, opening only
// regular files with a single link, non-blocking, and reading them through a bound.

// Default bounds of a task's files (Limits).
const (
	DefaultMaxLogSize     = 64 << 20
	DefaultMaxArchiveSize = 1 << 30
	// maxResultSize bounds steps/<i>.json: the toolbox writes a few hundred bytes.
	maxResultSize = 64 << 10
)

// Limits bound the files of a task the executor reads, serves and mirrors.
type Limits struct {
	// Log is the most bytes of a step's log kept; past it the log is cut and the task fails.
	Log int64
	// Archive is the largest workspace archive kept; a larger one is refused and the task fails.
	Archive int64
}

// WithDefaults fills the unset bounds.
func (l Limits) WithDefaults() Limits {
	if l.Log <= 0 {
		l.Log = DefaultMaxLogSize
	}
	if l.Archive <= 0 {
		l.Archive = DefaultMaxArchiveSize
	}
	return l
}

// ErrRefused is wrapped by every RefusedError.
var ErrRefused = errors.New("refused")

// RefusedError says why the executor refused a file of a task (or a frame of its stream).
type RefusedError struct {
	// Step is the index of the step the file belongs to, -1 for the task's own files.
	Step int
	// Kind of the file: "log", "result", "archive"; "" for the start and stop files and frames.
	Kind string
	// Path of the file relative to the task's directory, slash-separated; "" for a frame.
	Path string
	// Reason, e.g. "is a symbolic link".
	Reason string
}

func (e *RefusedError) Error() string {
	if e.Path == "" {
		return e.Reason + "; refused"
	}
	return e.Path + ": " + e.Reason + "; refused"
}

// Unwrap makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Unwrap() error { return ErrRefused }

// Explain is the message a task fails with, naming the step by its name in names (the task's steps
// in order), e.g. `step "leak" log steps/0.log: is a symbolic link; refused`.
func (e *RefusedError) Explain(names []string) string {
	if e.Step >= 0 && e.Step < len(names) && e.Kind != "" {
		return fmt.Sprintf("step %q %s %s", names[e.Step], e.Kind, e.Error())
	}
	return e.Error()
}

// Relative paths of the protocol's files, slash-separated, for OpenFile and the messages.

// StepLogFile is the log of step i, relative to the task's directory.
func StepLogFile(i int) string { return StepsDir + "/" + strconv.Itoa(i) + ".log" }

// StepResultFile is the result of step i, relative to the task's directory.
func StepResultFile(i int) string { return StepsDir + "/" + strconv.Itoa(i) + ".json" }

// ArchiveFile is the archive of saveToWorkspace step i, relative to the task's directory.
func ArchiveFile(i int) string { return ArchivesDir + "/" + strconv.Itoa(i) + ".tar" }

// File is a regular file of a task's directory opened by OpenFile. Reads past its bound fail with
// a RefusedError (after returning the bytes up to the bound): nothing reads a file whole that grew
// past it, and nothing mistakes a cut file for a whole one.
type File struct {
	f    *os.File
	ref  RefusedError // Step, Kind and Path, for the errors
	max  int64
	read int64
	size int64
}

// Size is the file's size when it was opened.
func (f *File) Size() int64 { return f.size }

// Whole says whether the file, as opened, is within its bound: nil, or a RefusedError.
func (f *File) Whole() error {
	if f.size > f.max {
		return f.tooLarge()
	}
	return nil
}

// Read implements io.Reader.
func (f *File) Read(p []byte) (int, error) {
	if left := f.max - f.read + 1; int64(len(p)) > left {
		p = p[:left] // one byte more than the bound tells a file at the bound from one past it
	}
	n, err := f.f.Read(p)
	if f.read+int64(n) > f.max {
		n = int(f.max - f.read)
		f.read = f.max
		return n, f.tooLarge()
	}
	f.read += int64(n)
	return n, err
}

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }

func (f *File) tooLarge() error {
	e := f.ref
	e.Reason = overLimit(f.max)
	return &e
}

// overLimit is the reason a file past max is refused.
func overLimit(max int64) string {
	return "is larger than the executor's limit of " + resource.NewQuantity(max, resource.BinarySI).String()
}

// OpenFile opens rel (slash-separated, e.g. "steps/0.log") of the task directory dir for reading,
// bounded to max bytes; step and kind name the file in errors. The error wraps fs.ErrNotExist when
// the file does not exist, ErrRefused when it is not a plain file of the directory: a symbolic
// link in any component, not a regular file (a FIFO, a device, a socket, a directory), or a file
// with more than one link (a hard link to a file the task cannot read). Opening never blocks.
func OpenFile(dir, rel string, step int, kind string, max int64) (*File, error) {
	ref := RefusedError{Step: step, Kind: kind, Path: rel}
	f, st, err := openBeneath(dir, rel, unix.O_RDONLY, &ref)
	if err != nil {
		return nil, err
	}
	return &File{f: f, ref: ref, max: max, size: st.Size}, nil
}

// CheckFile says whether the executor would keep rel of dir whole: nil, an error wrapping
// fs.ErrNotExist, or a RefusedError (see OpenFile; larger than max is refused too).
func CheckFile(dir, rel string, step int, kind string, max int64) error {
	f, err := OpenFile(dir, rel, step, kind, max)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Whole()
}

// touchFile creates rel of dir empty when it does not exist, without following a symbolic link
// planted there (the executor runs as root: a link to /etc/nologin must not create that file).
func touchFile(dir, rel string) error {
	ref := RefusedError{Step: -1, Path: rel}
	f, _, err := openBeneath(dir, rel, unix.O_WRONLY|unix.O_CREAT, &ref)
	if err != nil {
		return err
	}
	return f.Close()
}

// openBeneath opens rel of dir with flags (O_RDONLY, or O_WRONLY|O_CREAT) one component at a time
// with openat and O_NOFOLLOW, then checks what it opened. os.Root would do the walking but follows
// symbolic links that stay inside the directory, and openat2's RESOLVE_NO_SYMLINKS needs Linux 5.6
// and says less about what it refused; the paths here have two or three components.
func openBeneath(dir, rel string, flags int, ref *RefusedError) (*os.File, *unix.Stat_t, error) {
	if rel == "" || path.IsAbs(rel) || path.Clean(rel) != rel || strings.HasPrefix(rel, "../") || rel == ".." {
		return nil, nil, fmt.Errorf("opening %s: not a path inside the task's directory", rel)
	}
	parts := strings.Split(rel, "/")
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening the task's directory: %w", &os.PathError{Op: "open", Path: dir, Err: err})
	}
	defer func() { _ = unix.Close(dfd) }()
	for i, name := range parts[:len(parts)-1] {
		fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil, nil, fmt.Errorf("opening %s: %w", rel, fs.ErrNotExist)
			}
			if kind := entryKind(dfd, name); kind != "" && kind != "a directory" {
				ref.Reason = strings.Join(parts[:i+1], "/") + " is " + kind
				return nil, nil, ref
			}
			return nil, nil, fmt.Errorf("opening %s: %w", rel, err)
		}
		_ = unix.Close(dfd)
		dfd = fd
	}
	name := parts[len(parts)-1]
	// Look before opening: opening a device node can act on the device, even non-blocking.
	if kind := entryKind(dfd, name); kind == "" {
		if flags&unix.O_CREAT == 0 {
			return nil, nil, fmt.Errorf("opening %s: %w", rel, fs.ErrNotExist)
		}
	} else if kind != "a regular file" {
		ref.Reason = "is " + kind
		return nil, nil, ref
	}
	fd, err := unix.Openat(dfd, name, flags|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0o644)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil, fmt.Errorf("opening %s: %w", rel, fs.ErrNotExist)
		}
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENXIO) {
			// Replaced between the look and the open.
			ref.Reason = "is " + entryKind(dfd, name)
			return nil, nil, ref
		}
		return nil, nil, fmt.Errorf("opening %s: %w", rel, err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir, filepath.FromSlash(rel)))
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		_ = f.Close()
		return nil, nil, fmt.Errorf("opening %s: %w", rel, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		ref.Reason = "is " + modeKind(st.Mode)
	case st.Nlink != 1:
		ref.Reason = fmt.Sprintf("has %d hard links", st.Nlink)
	default:
		return f, &st, nil
	}
	_ = f.Close()
	return nil, nil, ref
}

// entryKind says what name is in the directory dfd, without following it; "" when it does not exist.
func entryKind(dfd int, name string) string {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return ""
	}
	return modeKind(st.Mode)
}

func modeKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a named pipe (FIFO)"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFSOCK:
		return "a socket"
	}
	return "not a regular file"
}

// readAllBounded reads f whole, or fails when it is larger than its bound.
func readAllBounded(f *File) ([]byte, error) {
	defer f.Close()
	return io.ReadAll(f)
}

// Audit checks the files the executor keeps of a finished task in dir: each step's result, log and
// archive. It returns the first refusal (a *RefusedError), or nil; names are the task's steps in
// order.
func Audit(dir string, names []string, lim Limits) error {
	lim = lim.WithDefaults()
	for i := range names {
		for _, c := range []struct {
			rel, kind string
			max       int64
		}{
			{StepResultFile(i), "result", maxResultSize},
			{StepLogFile(i), "log", lim.Log},
			{ArchiveFile(i), "archive", lim.Archive},
		} {
			if err := CheckFile(dir, c.rel, i, c.kind, c.max); errors.Is(err, ErrRefused) {
				return err
			}
		}
	}
	return nil
}
