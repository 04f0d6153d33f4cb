// Package objectstore owns where runservice keeps what leaves the executors and etcd: step logs,
// workspace archives and (later) archived runs, in a gocloud.dev/blob bucket: file:// (a local
// directory, the embedded default) or s3:// (real deployments). Keys are partitioned by namespace and
// run, so that no prefix grows without bound.
package objectstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gocloud.dev/blob"
	_ "gocloud.dev/blob/fileblob" // file:// buckets
	_ "gocloud.dev/blob/s3blob"   // s3:// buckets
	"gocloud.dev/gcerrors"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// Store is an opened bucket.
type Store struct {
	bucket *blob.Bucket
}

// EnvURL is the environment variable that, when set, replaces the embedded default URL for the
// manager, the executors and runctl alike (in a cluster: from a Secret, with the AWS_* credentials).
const EnvURL = "RUNSERVICE_OBJECT_STORE"

// DefaultURL is $RUNSERVICE_OBJECT_STORE, else the embedded default: a directory under DataDir.
func DefaultURL() string {
	if u := os.Getenv(EnvURL); u != "" {
		return u
	}
	return FileURL(filepath.Join(DataDir(), "store"))
}

// DataDir is where runservice keeps local data: $XDG_DATA_HOME/runservice, else
// ~/.local/share/runservice.
func DataDir() string {
	dir := os.Getenv("XDG_DATA_HOME")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".local", "share")
	}
	return filepath.Join(dir, "runservice")
}

// FileURL is the URL of a local directory bucket, created when missing.
func FileURL(dir string) string {
	return "file://" + filepath.ToSlash(dir) + "?create_dir=1&metadata=skip"
}

// Open opens the bucket at url.
func Open(ctx context.Context, url string) (*Store, error) {
	b, err := blob.OpenBucket(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("opening object store %s: %w", redact(url), err)
	}
	return &Store{bucket: b}, nil
}

func redact(url string) string {
	if i := strings.Index(url, "?"); i >= 0 {
		return url[:i]
	}
	return url
}

// Close closes the bucket.
func (s *Store) Close() error { return s.bucket.Close() }

// Task is where one ExecutorTask's logs and archives are kept: under its run's uid, so that a run
// deleted and created again under the same name never reads (or overwrites) the earlier one's.
type Task struct {
	Namespace, Run string
	// RunUID is the run's uid; empty for an ExecutorTask scheduled before it was recorded, whose
	// data stays where it was written then.
	RunUID       string
	ExecutorTask string
}

// TaskOf is where et's logs and archives are kept.
func TaskOf(et *rsv1.ExecutorTask) Task {
	return Task{Namespace: et.Namespace, Run: et.Spec.RunName, RunUID: et.Spec.RunUID, ExecutorTask: et.Name}
}

// Sibling is where the ExecutorTask named executorTask of the same run keeps its data.
func (t Task) Sibling(executorTask string) Task {
	t.ExecutorTask = executorTask
	return t
}

// Prefix is the prefix of everything kept of the task: runs/<namespace>/<run>/<run uid>/tasks/<task>/.
// The run's name keeps the bucket readable; the uid, a segment of its own, keeps runs of the same
// name apart and can never read "tasks", so these keys never meet the earlier layout without it
// (runs/<namespace>/<run>/tasks/<task>/, still read for ExecutorTasks without a run uid).
func (t Task) Prefix() string {
	if t.RunUID == "" {
		return fmt.Sprintf("runs/%s/%s/tasks/%s/", t.Namespace, t.Run, t.ExecutorTask)
	}
	return RunPrefix(t.Namespace, t.Run, t.RunUID) + "tasks/" + t.ExecutorTask + "/"
}

// RunPrefix is the prefix of everything kept of one run: runs/<namespace>/<run>/<run uid>/.
func RunPrefix(namespace, run, uid string) string {
	return fmt.Sprintf("runs/%s/%s/%s/", namespace, run, uid)
}

// RunDocKey is the key of an archived run's document, beside its tasks' logs and archives.
func RunDocKey(namespace, run, uid string) string {
	return RunPrefix(namespace, run, uid) + "run.json"
}

// LogKey is the key of a step's log.
func (t Task) LogKey(step int) string {
	return fmt.Sprintf("%ssteps/%d.log", t.Prefix(), step)
}

// ArchiveKey is the key of a saveToWorkspace step's archive.
func (t Task) ArchiveKey(step int) string {
	return fmt.Sprintf("%sarchives/%d.tar", t.Prefix(), step)
}

// Put writes r at key; the object appears whole or not at all: a read of r that fails leaves the
// key as it was.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) error {
	// A gocloud writer commits what it was given on Close; only a cancelled context aborts it.
	ctx, abort := context.WithCancel(ctx)
	defer abort()
	w, err := s.bucket.NewWriter(ctx, key, nil)
	if err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	if _, err := io.Copy(w, r); err != nil {
		abort()
		_ = w.Close()
		return fmt.Errorf("writing %s: %w", key, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	return nil
}

// ErrNotFound says that a key does not exist.
var ErrNotFound = errors.New("not found in the object store")

// Get opens the object at key.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	r, err := s.bucket.NewReader(ctx, key, nil)
	if gcerrors.Code(err) == gcerrors.NotFound {
		return nil, fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	return r, nil
}

// Exists reports whether key exists.
func (s *Store) Exists(ctx context.Context, key string) (bool, error) {
	ok, err := s.bucket.Exists(ctx, key)
	if err != nil {
		return false, fmt.Errorf("looking up %s: %w", key, err)
	}
	return ok, nil
}

// Delete deletes key; a key that does not exist is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	err := s.bucket.Delete(ctx, key)
	if err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return fmt.Errorf("deleting %s: %w", key, err)
	}
	return nil
}

// ListDirs returns the "directories" right under prefix (keys cut after the next "/", with it).
func (s *Store) ListDirs(ctx context.Context, prefix string) ([]string, error) {
	var dirs []string
	it := s.bucket.List(&blob.ListOptions{Prefix: prefix, Delimiter: "/"})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			return dirs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", prefix, err)
		}
		if obj.IsDir {
			dirs = append(dirs, obj.Key)
		}
	}
}

// DeletePrefix deletes every key under prefix.
func (s *Store) DeletePrefix(ctx context.Context, prefix string) error {
	keys, err := s.List(ctx, prefix)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := s.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// List returns the keys under prefix.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	var keys []string
	it := s.bucket.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			return keys, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", prefix, err)
		}
		keys = append(keys, obj.Key)
	}
}
