package executor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor/toolbox"
	"runservice.dev/runservice/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	var err error
	if env, err = testenv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	_ = env.Stop()
	os.Exit(code)
}

// testServer is an executor's HTTP server with one real ExecutorTask whose step 0 has a log.
type testServer struct {
	addr, token string
	client      client.Client
	task        *rsv1.ExecutorTask
	log         string // the step-0 log's path
	e           *Executor
}

// startServer serves a real ExecutorTask's step-0 log of size bytes with the executor's HTTP
// server and timeouts t.
func startServer(t *testing.T, size int64, timeouts ServerTimeouts) *testServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c, err := client.New(env.Config, client.Options{Scheme: Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	et := createTestTask(t, c, "srv", "yes")
	ns := et.Namespace
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: rsv1.ExecutorTokenSecret, Namespace: ns},
		StringData: map[string]string{rsv1.ExecutorTokenKey: "tok", rsv1.ExecutorTaskKeyKey: "key"},
	}
	if err := c.Create(ctx, secret); err != nil {
		t.Fatalf("creating the token secret: %v", err)
	}
	e := &Executor{client: c, reader: c, creds: newCredentials(c, ns), uid: "uid", runners: map[types.UID]*runner{},
		opts: Options{Name: "ex", Namespace: ns, DataDir: t.TempDir(), Listen: addr, ServerTimeouts: timeouts,
			Limits: toolbox.Limits{Log: 1 << 30}.WithDefaults()}}
	log := toolbox.StepLogPath(e.taskDir(et.UID), 0)
	if err := os.MkdirAll(filepath.Dir(log), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	done := make(chan error, 1)
	go func() { done <- e.serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_ = c.Close()
			break
		}
		if i == 100 {
			t.Fatalf("the server does not listen: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &testServer{addr: addr, token: "tok", client: c, task: et, log: log, e: e}
}

// createTestTask creates, in a new namespace named after prefix, an ExecutorTask "run-a" of
// executor "ex" whose one step runs command.
func createTestTask(t *testing.T, c client.Client, prefix, command string) *rsv1.ExecutorTask {
	t.Helper()
	ns := fmt.Sprintf("%s%d", prefix, time.Now().UnixNano()%1e9)
	if err := c.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	et := &rsv1.ExecutorTask{
		ObjectMeta: metav1.ObjectMeta{Name: "run-a", Namespace: ns, Labels: map[string]string{rsv1.LabelExecutor: "ex"}},
		Spec: rsv1.ExecutorTaskSpec{RunName: "run", TaskName: "a", Executor: "ex", ExecutorUID: "uid",
			Task: rsv1.Task{Name: "a", Containers: []rsv1.Container{{Image: "busybox:1.36"}},
				Steps: []rsv1.Step{{Run: &rsv1.RunStep{Command: command}}}}},
	}
	if err := c.Create(t.Context(), et); err != nil {
		t.Fatalf("creating the executor task: %v", err)
	}
	return et
}

// status sends a request for the server's task (path under /v1/tasks/<name>) with token and
// returns the response's status code.
func (s *testServer) status(t *testing.T, method, path, token string) int {
	t.Helper()
	req, _ := http.NewRequest(method, fmt.Sprintf("http://%s/v1/tasks/%s%s", s.addr, s.task.Name, path), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// TestServerCutsOffSlowClients: a client that sends its headers a byte at a time, or asks for a
// large log and then reads nothing, is disconnected by the server's timeouts instead of holding a
// connection, a goroutine and an open file for ever.
func TestServerCutsOffSlowClients(t *testing.T) {
	timeouts := ServerTimeouts{ReadHeader: time.Second, WriteStall: time.Second}
	const size = 64 << 20 // far more than the sockets' buffers
	srv := startServer(t, size, timeouts)
	addr, task, token := srv.addr, srv.task.Name, srv.token

	t.Run("slow headers", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n"); err != nil {
			t.Fatal(err)
		}
		for time.Since(start) < 10*time.Second {
			if _, err := io.WriteString(c, "X"); err != nil {
				break // the server closed the connection
			}
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("a client trickling its headers was served for %v, want it cut off after about %v", d.Round(time.Millisecond), timeouts.ReadHeader)
		}
	})

	t.Run("reader that stops reading", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /v1/tasks/%s/steps/0/log HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", task, token)
		time.Sleep(3 * time.Second) // reads nothing for longer than the write stall timeout
		_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		var n int64
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err == nil {
			n, err = io.Copy(io.Discard, resp.Body)
		}
		if n >= size {
			t.Fatalf("the server sent all %d bytes to a client that read nothing for 3s (error %v), want it cut off after about %v", n, err, timeouts.WriteStall)
		}
		t.Logf("cut off after %d of %d bytes (%v)", n, size, err)
	})
	t.Run("followed log outlives the write stall", func(t *testing.T) {
		f := startServer(t, 0, timeouts)
		et := f.task.DeepCopy()
		et.Status.Phase = rsv1.TaskPhaseRunning
		if err := f.client.Status().Update(context.Background(), et); err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/v1/tasks/%s/steps/0/log?follow=true", f.addr, et.Name), nil)
		req.Header.Set("Authorization", "Bearer "+f.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got := make(chan string, 1)
		go func() { b, err := io.ReadAll(resp.Body); got <- fmt.Sprintf("%s (error %v)", b, err) }()
		// Lines 1.5s apart, longer than the write stall timeout, as a quiet step writes them.
		log, err := os.OpenFile(f.log, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer log.Close()
		for i := range 3 {
			fmt.Fprintf(log, "line %d\n", i)
			time.Sleep(1500 * time.Millisecond)
		}
		et.Status.Phase = rsv1.TaskPhaseSuccess
		if err := f.client.Status().Update(context.Background(), et); err != nil {
			t.Fatal(err)
		}
		if s, want := <-got, "line 0\nline 1\nline 2\n (error <nil>)"; s != want {
			t.Fatalf("followed log %q, want %q", s, want)
		}
	})
}

// TestServerAcceptsARotatedToken: the token Secret is rotated while the executor serves; the new
// token is accepted without a restart, and the old one no longer is.
func TestServerAcceptsARotatedToken(t *testing.T) {
	srv := startServer(t, 3, ServerTimeouts{ReadHeader: 10 * time.Second, WriteStall: 10 * time.Second})
	status := func(token string) int { return srv.status(t, http.MethodGet, "/steps/0/log", token) }
	if got := status("tok"); got != http.StatusOK {
		t.Fatalf("with the token: %d, want 200", got)
	}
	s := &corev1.Secret{}
	if err := srv.client.Get(context.Background(), client.ObjectKey{Namespace: srv.task.Namespace, Name: rsv1.ExecutorTokenSecret}, s); err != nil {
		t.Fatal(err)
	}
	s.Data[rsv1.ExecutorTokenKey] = []byte("rotated")
	if err := srv.client.Update(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for status("rotated") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("the rotated token is still refused after 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := status("tok"); got != http.StatusUnauthorized {
		t.Fatalf("with the rotated-out token: %d, want 401", got)
	}
}

// TestAFinishedTaskIsKeptUntilItsFetchIsRecorded: the executor keeps a finished task's directory (its
// logs and archives), and counts it as keeping a leaving member of a group (pendingTask), until the
// manager says that the task's run records its fetch; then it drops it. What the manager says of a
// task not final here yet, of another task of the name, or without the token, drops nothing.
func TestAFinishedTaskIsKeptUntilItsFetchIsRecorded(t *testing.T) {
	srv := startServer(t, 3, ServerTimeouts{ReadHeader: 10 * time.Second, WriteStall: 10 * time.Second})
	ctx := context.Background()
	dir := srv.e.taskDir(srv.task.UID)
	ack := func(token, uid string) int { return srv.status(t, http.MethodPost, "/fetched?uid="+uid, token) }
	kept := func(when string) {
		t.Helper()
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("%s: the task's directory is gone (%v), want it kept", when, err)
		}
	}
	pending := func(want string) {
		t.Helper()
		if name, unfinished, err := srv.e.pendingTask(ctx); err != nil || name != want || unfinished {
			t.Fatalf("pending task %q (unfinished %v, %v), want %q", name, unfinished, err, want)
		}
	}
	uid := string(srv.task.UID)

	if got := ack("tok", uid); got != http.StatusConflict {
		t.Errorf("told while the task is not final: %d, want 409", got)
	}
	kept("not final")
	et := srv.task.DeepCopy()
	now := metav1.Now()
	et.Status = rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseSuccess, StartTime: &now, EndTime: &now}
	if err := srv.client.Status().Update(ctx, et); err != nil {
		t.Fatal(err)
	}
	pending(et.Name)
	for _, c := range []struct {
		what, token, uid string
		want             int
	}{
		{"without the token", "wrong", uid, http.StatusUnauthorized},
		{"without a uid", "tok", "", http.StatusBadRequest},
		{"of another task of the name", "tok", "00000000-0000-0000-0000-000000000000", http.StatusNotFound},
	} {
		if got := ack(c.token, c.uid); got != c.want {
			t.Errorf("told %s: %d, want %d", c.what, got, c.want)
		}
		kept("told " + c.what)
	}
	pending(et.Name)

	if got := ack("tok", uid); got != http.StatusNoContent {
		t.Fatalf("told that the fetch is recorded: %d, want 204", got)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("told that the fetch is recorded, the task's directory is still there (%v)", err)
	}
	pending("")
	if got := ack("tok", uid); got != http.StatusNoContent {
		t.Errorf("told again: %d, want 204 (idempotent)", got)
	}
}
