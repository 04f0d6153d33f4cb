package toolbox

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"runservice.dev/runservice/api/v1alpha1"
)

var errStopped = errors.New("stopped")

// saveWorkspace writes archives/<i>.tar. It is built under a temporary name and renamed once
// complete, so the executor never picks up a partial archive.
func (r *runner) saveWorkspace(ctx context.Context, i int, s Step, w io.Writer) outcome {
	if len(s.Contents) == 0 {
		return failed("saveToWorkspace has no contents")
	}
	final := ArchivePath(r.dir, i)
	tmp := final + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return failed("creating the archive: %v", err)
	}
	tw := tar.NewWriter(f)
	abort := func(out outcome) outcome {
		_ = f.Close()
		_ = os.Remove(tmp)
		return out
	}
	seen := make(map[string]bool)
	for _, c := range s.Contents {
		n, err := r.addContent(ctx, tw, c, seen, w)
		if errors.Is(err, errStopped) {
			return abort(stopped(ctx))
		}
		if err != nil {
			return abort(failed("%v", err))
		}
		fmt.Fprintf(w, "saved %d entries from %s (%s) to %s\n", n, c.SourceDir, strings.Join(c.Paths, " "), c.DestDir)
	}
	if err := tw.Close(); err != nil {
		return abort(failed("writing the archive: %v", err))
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(tmp)
		return failed("writing the archive: %v", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		_ = os.Remove(tmp)
		return failed("writing the archive: %v", err)
	}
	return outcome{phase: v1alpha1.StepPhaseSuccess}
}

// addContent archives what the patterns of c match (directories recursively, symlinks not
// followed) under c.DestDir. A content whose patterns match nothing at all is an error; a pattern
// matching nothing next to one that matches is not.
func (r *runner) addContent(ctx context.Context, tw *tar.Writer, c v1alpha1.SaveContent, seen map[string]bool, w io.Writer) (int, error) {
	src := r.abs(c.SourceDir)
	// Clean against a root so that "/", "." and "../x" all stay inside the archive.
	dest := strings.TrimPrefix(path.Clean("/"+filepath.ToSlash(c.DestDir)), "/")
	n, matched := 0, false
	for _, pat := range c.Paths {
		matches, err := filepath.Glob(filepath.Join(src, pat))
		if err != nil {
			return n, fmt.Errorf("pattern %q: %w", pat, err)
		}
		for _, m := range matches {
			matched = true
			rel, err := filepath.Rel(src, m)
			if err != nil || !filepath.IsLocal(rel) {
				return n, fmt.Errorf("%s, matched by %q, is outside sourceDir %s", m, pat, c.SourceDir)
			}
			err = filepath.WalkDir(m, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				if ctx.Err() != nil {
					return errStopped
				}
				if p == r.dir {
					// Never archive the shared directory, which holds this very archive.
					return filepath.SkipDir
				}
				rel, err := filepath.Rel(src, p)
				if err != nil {
					return err
				}
				name := path.Join(dest, filepath.ToSlash(rel))
				if name == "." || seen[name] {
					return nil
				}
				seen[name] = true
				added, err := addEntry(tw, p, name, w)
				if added {
					n++
				}
				return err
			})
			if err != nil {
				return n, err
			}
		}
	}
	if !matched {
		quoted := make([]string, len(c.Paths))
		for j, p := range c.Paths {
			quoted[j] = strconv.Quote(p)
		}
		return n, fmt.Errorf("no file in %s matches %s", c.SourceDir, strings.Join(quoted, ", "))
	}
	return n, nil
}

// addEntry writes one file, directory or symlink; other kinds of files are skipped with a note.
func addEntry(tw *tar.Writer, p, name string, w io.Writer) (bool, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return false, err
	}
	var link string
	switch {
	case fi.Mode().IsRegular(), fi.IsDir():
	case fi.Mode()&fs.ModeSymlink != 0:
		if link, err = os.Readlink(p); err != nil {
			return false, err
		}
	default:
		fmt.Fprintf(w, "skipping %s: not a regular file, directory or symlink\n", p)
		return false, nil
	}
	hdr, err := tar.FileInfoHeader(noNames{fi}, link)
	if err != nil {
		return false, fmt.Errorf("archiving %s: %w", p, err)
	}
	hdr.Name = name
	if fi.IsDir() {
		hdr.Name += "/"
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return false, fmt.Errorf("archiving %s: %w", p, err)
	}
	if !fi.Mode().IsRegular() {
		return true, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	// A file that changes size while archived makes tar.Writer fail instead of writing a bad archive.
	if _, err := io.Copy(tw, f); err != nil {
		return false, fmt.Errorf("archiving %s: %w", p, err)
	}
	return true, nil
}

// noNames keeps tar.FileInfoHeader from looking up user and group names in the image: archives
// keep numeric ids only.
type noNames struct{ fs.FileInfo }

func (noNames) Uname() (string, error) { return "", nil }
func (noNames) Gname() (string, error) { return "", nil }

var archiveName = regexp.MustCompile(`^([0-9]+)\.tar$`)

// restoreWorkspace extracts workspace/<source>/*.tar of every source, in WorkspaceSources order
// and by step index within a source, into DestDir.
func (r *runner) restoreWorkspace(ctx context.Context, s Step, w io.Writer) outcome {
	if s.DestDir == "" {
		return failed("restoreWorkspace has no destDir")
	}
	dest := r.abs(s.DestDir)
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return failed("creating %s: %v", s.DestDir, err)
	}
	for _, src := range r.tf.WorkspaceSources {
		if !filepath.IsLocal(src) || strings.ContainsRune(src, filepath.Separator) {
			return failed("invalid workspace source %q", src)
		}
		archives, err := sourceArchives(filepath.Join(r.dir, WorkspaceDir, src))
		if err != nil {
			return failed("listing the archives of %s: %v", src, err)
		}
		n := 0
		for _, a := range archives {
			m, err := extract(ctx, a, dest, w)
			n += m
			if errors.Is(err, errStopped) {
				return stopped(ctx)
			}
			if err != nil {
				return failed("restoring %s/%s: %v", src, filepath.Base(a), err)
			}
		}
		fmt.Fprintf(w, "restored %d entries from %d archives of %s to %s\n", n, len(archives), src, s.DestDir)
	}
	return outcome{phase: v1alpha1.StepPhaseSuccess}
}

// sourceArchives lists <i>.tar in dir by i; a missing dir is a parent that saved nothing.
func sourceArchives(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	type archive struct {
		index int
		path  string
	}
	var found []archive
	for _, e := range entries {
		m := archiveName.FindStringSubmatch(e.Name())
		if m == nil || !e.Type().IsRegular() {
			continue
		}
		idx, err := strconv.Atoi(m[1])
		if err != nil {
			continue
		}
		found = append(found, archive{idx, filepath.Join(dir, e.Name())})
	}
	slices.SortFunc(found, func(a, b archive) int { return a.index - b.index })
	paths := make([]string, len(found))
	for j, a := range found {
		paths[j] = a.path
	}
	return paths, nil
}

// extract unpacks archive into dest. Entries that would land outside dest, by their name or
// through a symlink already in dest, are refused. Directory modes are applied last, so a read-only
// directory can still be filled.
func extract(ctx context.Context, archive, dest string, w io.Writer) (int, error) {
	f, err := os.Open(archive)
	if err != nil {
		return 0, err
	}
	defer f.Close()

	type dirAttrs struct {
		path  string
		mode  fs.FileMode
		mtime time.Time
	}
	var dirs []dirAttrs
	n := 0
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, err
		}
		if ctx.Err() != nil {
			return n, errStopped
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		if !filepath.IsLocal(name) {
			return n, fmt.Errorf("entry %q escapes the destination directory", hdr.Name)
		}
		name = filepath.Clean(name)
		if name == "." {
			continue
		}
		if err := checkNoSymlinkParents(dest, name); err != nil {
			return n, fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		target := filepath.Join(dest, name)
		mode := hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)

		switch hdr.Typeflag {
		case tar.TypeDir:
			fi, err := os.Lstat(target)
			if err == nil && !fi.IsDir() {
				if err := os.Remove(target); err != nil {
					return n, err
				}
				err = fs.ErrNotExist
			}
			if err != nil {
				if err := os.MkdirAll(target, 0o755); err != nil {
					return n, err
				}
			}
			dirs = append(dirs, dirAttrs{target, mode, hdr.ModTime})
		case tar.TypeReg:
			if err := prepareTarget(target); err != nil {
				return n, err
			}
			if err := writeFile(target, tr, mode, hdr.ModTime); err != nil {
				return n, err
			}
		case tar.TypeSymlink:
			if err := prepareTarget(target); err != nil {
				return n, err
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return n, err
			}
		default:
			fmt.Fprintf(w, "skipping %s: unsupported entry type %q\n", hdr.Name, hdr.Typeflag)
			continue
		}
		n++
	}
	for _, d := range slices.Backward(dirs) {
		if err := os.Chmod(d.path, d.mode); err != nil {
			return n, err
		}
		_ = os.Chtimes(d.path, d.mtime, d.mtime)
	}
	return n, nil
}

// checkNoSymlinkParents refuses a name whose existing parent directories under dest include a
// symlink: writing through it could land anywhere. Archives made by saveToWorkspace never need
// it, as symlinks are archived, not followed.
func checkNoSymlinkParents(dest, name string) error {
	cur := dest
	parts := strings.Split(name, string(filepath.Separator))
	for _, part := range parts[:len(parts)-1] {
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s is a symlink", cur)
		}
	}
	return nil
}

// prepareTarget makes the parent of a file or symlink and removes what is in its way, so that
// an existing symlink is replaced instead of followed.
func prepareTarget(target string) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	fi, err := os.Lstat(target)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("cannot replace directory %s with a file", target)
	}
	return os.Remove(target)
}

func writeFile(target string, r io.Reader, mode fs.FileMode, mtime time.Time) error {
	f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	// Chmod after writing: the umask does not apply and setuid bits survive.
	if err := os.Chmod(target, mode); err != nil {
		return err
	}
	_ = os.Chtimes(target, mtime, mtime)
	return nil
}
