package executor

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor/toolbox"
)

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// serve serves the tasks' logs and archives:
//
//	GET  /v1/tasks/{name}/steps/{i}/log[?follow=true]  a step's log, followed until the step ends
//	GET  /v1/tasks/{name}/archives/{i}                 the archive of saveToWorkspace step i
//	POST /v1/tasks/{name}/fetched?uid=<uid>            the manager's word that the task's run records
//	                                                   its fetch: its copy here may go
//	GET  /v1/tasks/{name}/workspace                    the parents' archives for the task's pod, as a tar
//	                                                   of <source>/<i>.tar (drivers without a shared dir)
func (e *Executor) serve(ctx context.Context) error {
	if e.opts.Listen == "" {
		<-ctx.Done()
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tasks/{name}/steps/{i}/log", e.authToken(e.serveLog))
	mux.HandleFunc("GET /v1/tasks/{name}/archives/{i}", e.authToken(e.serveArchive))
	mux.HandleFunc("POST /v1/tasks/{name}/fetched", e.authToken(e.serveFetched))
	mux.HandleFunc("GET /v1/tasks/{name}/workspace", e.serveWorkspace)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	ln, err := net.Listen("tcp", e.opts.Listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", e.opts.Listen, err)
	}
	t := e.opts.ServerTimeouts
	srv := &http.Server{
		Handler:           writeStall(mux, t.WriteStall),
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    64 << 10,
	}
	if e.cert != nil {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: e.cert.get}
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// writeStall gives each write of a response d to complete, instead of a WriteTimeout on the whole
// response, which would cut followed logs short: a client that stops reading is cut off, one that
// reads a long stream slowly is not.
func writeStall(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &stallWriter{ResponseWriter: w, rc: http.NewResponseController(w), d: d}
		h.ServeHTTP(sw, r)
		sw.extend() // for the server's final flush of the buffered tail
	})
}

type stallWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
	d  time.Duration
}

func (w *stallWriter) extend() { _ = w.rc.SetWriteDeadline(time.Now().Add(w.d)) }

func (w *stallWriter) Write(p []byte) (int, error) {
	w.extend()
	return w.ResponseWriter.Write(p)
}

// Flush keeps serveLog's follow mode flushing through the wrapper.
func (w *stallWriter) Flush() {
	w.extend()
	_ = w.rc.Flush()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *stallWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// authToken lets through requests with the namespace's token (credentials.go); a task's
// credential is forbidden here.
func (e *Executor) authToken(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		bearer := bearer(r)
		switch {
		case isTaskCredential(bearer):
			http.Error(w, "forbidden: a task's credential reads only its own workspace", http.StatusForbidden)
		case !e.creds.isToken(r.Context(), bearer):
			http.Error(w, "unauthorized", http.StatusUnauthorized)
		default:
			h(w, r)
		}
	}
}

func bearer(r *http.Request) string {
	v, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return v
}

// task finds the ExecutorTask of a request and its step index.
func (e *Executor) task(w http.ResponseWriter, r *http.Request) (*rsv1.ExecutorTask, int, bool) {
	i, err := strconv.Atoi(r.PathValue("i"))
	if err != nil || i < 0 {
		http.Error(w, "bad step index", http.StatusBadRequest)
		return nil, 0, false
	}
	et := &rsv1.ExecutorTask{}
	if err := e.client.Get(r.Context(), types.NamespacedName{Namespace: e.opts.Namespace, Name: r.PathValue("name")}, et); err != nil {
		http.Error(w, "no such task on this executor", http.StatusNotFound)
		return nil, 0, false
	}
	if i >= len(et.Spec.Task.Steps) {
		http.Error(w, "no such step", http.StatusNotFound)
		return nil, 0, false
	}
	return et, i, true
}

func (e *Executor) serveArchive(w http.ResponseWriter, r *http.Request) {
	et, i, ok := e.task(w, r)
	if !ok {
		return
	}
	f, err := toolbox.OpenFile(e.taskDir(et.UID), toolbox.ArchiveFile(i), i, "archive", e.opts.Limits.Archive)
	if err == nil {
		if err = f.Whole(); err != nil {
			_ = f.Close()
		}
	}
	if err != nil {
		notKept(w, "no archive", err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/x-tar")
	if _, err := io.Copy(w, f); errors.Is(err, toolbox.ErrRefused) {
		// It grew past its bound while served: a cut archive must not pass for a whole one.
		panic(http.ErrAbortHandler)
	}
}

// serveFetched is the manager's word that the run of a final task records its fetch (its logs and
// archives are in the object store, or known lost): the task's directory goes, and with it what
// kept a member of a group from leaving (pendingTask). The manager says so only after that record
// is written, so nothing goes here that is not stored. Idempotent: 204 whether the directory was
// there or not; 404 for a task this executor does not have (of that uid), whose directory, if
// any, goes with its deletion; 409 while this executor does not see the task final yet (the
// manager asks again).
func (e *Executor) serveFetched(w http.ResponseWriter, r *http.Request) {
	uid := types.UID(r.URL.Query().Get("uid"))
	if uid == "" {
		http.Error(w, "uid is required", http.StatusBadRequest)
		return
	}
	et := &rsv1.ExecutorTask{}
	err := e.client.Get(r.Context(), types.NamespacedName{Namespace: e.opts.Namespace, Name: r.PathValue("name")}, et)
	switch {
	case apierrors.IsNotFound(err) || err == nil && et.UID != uid:
		http.Error(w, "no such task on this executor", http.StatusNotFound)
		return
	case err != nil:
		http.Error(w, "reading the task: "+err.Error(), http.StatusInternalServerError)
		return
	case !et.Status.Phase.IsFinal() || e.following(uid):
		http.Error(w, "the task is not final here yet", http.StatusConflict)
		return
	}
	if err := os.RemoveAll(e.taskDir(uid)); err != nil {
		http.Error(w, "removing the task's directory: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// notKept answers for a file of a task that does not exist, or that the executor refuses to read
// (the task made it a link, a FIFO, ...; its status says so): both 404, nothing to keep.
func notKept(w http.ResponseWriter, what string, err error) {
	if errors.Is(err, toolbox.ErrRefused) {
		what = err.Error()
	}
	http.Error(w, what, http.StatusNotFound)
}

// serveWorkspace serves a task's pod, with its own credential only: nobody else needs a task's
// workspace. Whether the task exists is not told before the credential is checked.
func (e *Executor) serveWorkspace(w http.ResponseWriter, r *http.Request) {
	cred := bearer(r)
	if !isTaskCredential(cred) {
		if e.creds.isToken(r.Context(), cred) {
			http.Error(w, "forbidden: a workspace is served to its task's pod only", http.StatusForbidden)
		} else {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
		}
		return
	}
	et := &rsv1.ExecutorTask{}
	err := e.client.Get(r.Context(), types.NamespacedName{Namespace: e.opts.Namespace, Name: r.PathValue("name")}, et)
	if err != nil || !e.creds.isTaskCredential(r.Context(), cred, et.UID) {
		http.Error(w, "forbidden: not this task's credential", http.StatusForbidden)
		return
	}
	dir := e.taskDir(et.UID)
	root := filepath.Join(dir, toolbox.WorkspaceDir)
	w.Header().Set("Content-Type", "application/x-tar")
	tw := tar.NewWriter(w)
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		f, err := toolbox.OpenFile(dir, filepath.ToSlash(rel), -1, "", e.opts.Limits.Archive)
		if err != nil {
			return err
		}
		defer f.Close()
		name, _ := filepath.Rel(root, path)
		if err := tw.WriteHeader(&tar.Header{Name: filepath.ToSlash(name), Mode: 0o644, Size: f.Size(), ModTime: time.Now()}); err != nil {
			return err
		}
		_, err = io.CopyN(tw, f, f.Size())
		return err
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return // the client sees a truncated tar and fails
	}
	_ = tw.Close()
}

func (e *Executor) serveLog(w http.ResponseWriter, r *http.Request) {
	et, i, ok := e.task(w, r)
	if !ok {
		return
	}
	dir := e.taskDir(et.UID)
	follow := r.URL.Query().Get("follow") == "true"
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	var f *toolbox.File
	for {
		var err error
		if f, err = toolbox.OpenFile(dir, toolbox.StepLogFile(i), i, "log", e.opts.Limits.Log); err == nil {
			break
		}
		if errors.Is(err, toolbox.ErrRefused) || !follow || e.stepEnded(r.Context(), et, dir, i) {
			notKept(w, "no log", err)
			return
		}
		if !sleep(r.Context(), 200*time.Millisecond) {
			return
		}
	}
	defer f.Close()
	flusher, _ := w.(http.Flusher)
	// copyLog copies what the log has now; past its bound the reader says so to the client, once
	// the bound's worth was sent, and the log ends there: the task fails for it.
	copyLog := func() bool {
		_, err := io.Copy(w, f)
		if errors.Is(err, toolbox.ErrRefused) {
			_, _ = fmt.Fprintf(w, "\n[runservice: the log is cut here: %v]\n", err)
		}
		return err == nil
	}
	for {
		if !copyLog() || !follow {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
		if e.stepEnded(r.Context(), et, dir, i) {
			copyLog() // what was written before the end
			return
		}
		if !sleep(r.Context(), 200*time.Millisecond) {
			return
		}
	}
}

// stepEnded says whether step i will write no more log.
func (e *Executor) stepEnded(ctx context.Context, et *rsv1.ExecutorTask, dir string, i int) bool {
	if res, err := toolbox.ReadResult(dir, i); err == nil && res.Phase != rsv1.StepPhaseRunning {
		return true
	}
	cur := &rsv1.ExecutorTask{}
	if err := e.client.Get(ctx, types.NamespacedName{Namespace: et.Namespace, Name: et.Name}, cur); err != nil {
		return true
	}
	return cur.Status.Phase.IsFinal()
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
