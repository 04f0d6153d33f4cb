package controllers_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/objectstore"
)

// The controller suite's manager allows the fetcher to dial 127.0.0.1 only (startManager), the way
// an operator allows a local executor; every other loopback address stays forbidden, and this is
// one that a test can listen on to see whether the fetcher connected.
const forbiddenHost = "127.0.0.2"

const testToken = "test-token"

// tcpListener accepts and holds connections on addr, counting them, and never answers: a forbidden
// address the fetcher must not reach, or an executor that hangs before sending headers.
type tcpListener struct {
	ln    net.Listener
	conns atomic.Int64
}

func listen(t *testing.T, host string) *tcpListener {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatalf("listening on %s: %v", host, err)
	}
	l := &tcpListener{ln: ln}
	var mu sync.Mutex
	var held []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.conns.Add(1)
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			_ = c.Close()
		}
	})
	return l
}

func (l *tcpListener) port() int { return l.ln.Addr().(*net.TCPAddr).Port }

// httpExecutor serves h on 127.0.0.1 and counts its connections.
type httpExecutor struct {
	*httptest.Server
	conns atomic.Int64
}

func serveHTTP(t *testing.T, h http.HandlerFunc) *httpExecutor {
	t.Helper()
	e := &httpExecutor{}
	e.Server = httptest.NewUnstartedServer(h)
	e.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			e.conns.Add(1)
		}
	}
	e.Start()
	t.Cleanup(func() {
		e.CloseClientConnections()
		e.Close()
	})
	return e
}

// executorToken creates the Secret the fetcher reads the executors' bearer token from.
func executorToken(t *testing.T, ns string) {
	t.Helper()
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: rsv1.ExecutorTokenSecret, Namespace: ns},
		Data:       map[string][]byte{rsv1.ExecutorTokenKey: []byte(testToken)},
	}
	if err := k8s.Create(context.Background(), s); err != nil {
		t.Fatalf("creating the executors' token: %v", err)
	}
}

func withFetchEndpoint(url string) executorOpt {
	return func(e *rsv1.Executor) {
		e.Spec.Endpoint = url
		e.Labels = map[string]string{"fetch-test": e.Name}
	}
}

// finishOn runs a one-task run on executor ex to Success and returns its ExecutorTask's name: the
// fetcher then fetches step 0's log from ex's endpoint.
func finishOn(t *testing.T, ns, run, ex string) string {
	t.Helper()
	tk := task("a")
	tk.ExecutorSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"fetch-test": ex}}
	createRun(t, newRun(ns, run, tk))
	complete(t, ns, run, "a", rsv1.TaskPhaseSuccess)
	return waitTask(t, ns, run, "a").Name
}

// recordedFetch is what the run of ExecutorTask et records of its fetch ("" while nothing).
func recordedFetch(t *testing.T, ns, et string) string {
	t.Helper()
	obj := &rsv1.ExecutorTask{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: et}, obj); err != nil {
		t.Fatalf("reading %s: %v", et, err)
	}
	return getRun(t, ns, obj.Spec.RunName).Status.RecordedFetch(obj)
}

// events lists the events about an ExecutorTask with a reason.
func events(t *testing.T, ns, et, reason string) []eventsv1.Event {
	t.Helper()
	var list eventsv1.EventList
	if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatalf("listing events: %v", err)
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Name == et && e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

func TestFetcherRefusesForbiddenEndpoints(t *testing.T) {
	ns := newNamespace(t)
	executorToken(t, ns)
	forbidden := listen(t, forbiddenHost)
	cases := []struct{ name, endpoint, says string }{
		{"metadata", "http://169.254.169.254", "169.254.169.254"},
		{"loopback", fmt.Sprintf("http://%s:%d", forbiddenHost, forbidden.port()), forbiddenHost},
		{"mapped", fmt.Sprintf("http://[::ffff:%s]:%d", forbiddenHost, forbidden.port()), forbiddenHost},
		{"unspecified", fmt.Sprintf("http://0.0.0.0:%d", forbidden.port()), "0.0.0.0"},
	}
	ets := map[string]string{}
	for _, c := range cases {
		startExecutor(t, ns, c.name, withFetchEndpoint(c.endpoint))
		ets[c.name] = finishOn(t, ns, c.name, c.name)
	}
	for _, c := range cases {
		et := ets[c.name]
		eventually(t, 15*time.Second, "a refusal of "+c.endpoint+" or a connection to it", func() (bool, error) {
			return forbidden.conns.Load() > 0 || len(events(t, ns, et, rsv1.ReasonEndpointRefused)) > 0, nil
		})
		if n := forbidden.conns.Load(); n > 0 {
			t.Fatalf("%s: the fetcher connected to the forbidden address %s (%d connections)", c.name, forbiddenHost, n)
		}
		if note := events(t, ns, et, rsv1.ReasonEndpointRefused)[0].Note; !strings.Contains(note, c.says) {
			t.Errorf("%s: the event says %q, want it to name %s", c.name, note, c.says)
		}
		if v := recordedFetch(t, ns, et); v != "" {
			t.Errorf("%s: fetch recorded (%q) though nothing was fetched", c.name, v)
		}
	}
}

func TestFetcherDoesNotFollowRedirects(t *testing.T) {
	ns := newNamespace(t)
	executorToken(t, ns)
	forbidden := listen(t, forbiddenHost)
	var asked atomic.Int64
	redirector := serveHTTP(t, func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		http.Redirect(w, r, fmt.Sprintf("http://%s:%d%s", forbiddenHost, forbidden.port(), r.URL.Path), http.StatusFound)
	})
	startExecutor(t, ns, "redirector", withFetchEndpoint(redirector.URL))
	et := finishOn(t, ns, "redirected", "redirector")
	eventually(t, 15*time.Second, "a failed fetch or a connection to the redirect's target", func() (bool, error) {
		return forbidden.conns.Load() > 0 || len(events(t, ns, et, rsv1.ReasonFetchFailed)) > 0, nil
	})
	if n := forbidden.conns.Load(); n > 0 {
		t.Fatalf("the fetcher followed a redirect to the forbidden address %s (%d connections)", forbiddenHost, n)
	}
	if asked.Load() == 0 {
		t.Fatal("the redirecting executor was never asked")
	}
	if note := events(t, ns, et, rsv1.ReasonFetchFailed)[0].Note; !strings.Contains(note, "302") {
		t.Errorf("the event says %q, want it to name the 302", note)
	}
}

// TestHungExecutorsDoNotStarveOthers: four executors that hang (two never answer, two send headers
// and stall the body) must not keep a healthy executor's task from being fetched promptly, and
// their own fetches time out and are tried again.
func TestHungExecutorsDoNotStarveOthers(t *testing.T) {
	ns := newNamespace(t)
	executorToken(t, ns)
	stop := make(chan struct{})
	stall := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "the first bytes, then nothing")
		w.(http.Flusher).Flush()
		select {
		case <-stop:
		case <-r.Context().Done():
		}
	}
	silent := []*tcpListener{listen(t, "127.0.0.1"), listen(t, "127.0.0.1")}
	stalling := []*httpExecutor{serveHTTP(t, stall), serveHTTP(t, stall)}
	t.Cleanup(func() { close(stop) }) // before the servers close (cleanups run last first)
	healthy := serveHTTP(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, "log of "+r.URL.Path)
	})

	hung := map[string]func() int64{
		"silent-0":   silent[0].conns.Load,
		"silent-1":   silent[1].conns.Load,
		"stalling-0": stalling[0].conns.Load,
		"stalling-1": stalling[1].conns.Load,
	}
	startExecutor(t, ns, "silent-0", withFetchEndpoint(fmt.Sprintf("http://127.0.0.1:%d", silent[0].port())))
	startExecutor(t, ns, "silent-1", withFetchEndpoint(fmt.Sprintf("http://127.0.0.1:%d", silent[1].port())))
	startExecutor(t, ns, "stalling-0", withFetchEndpoint(stalling[0].URL))
	startExecutor(t, ns, "stalling-1", withFetchEndpoint(stalling[1].URL))
	startExecutor(t, ns, "healthy", withFetchEndpoint(healthy.URL))
	hungTasks := map[string]string{}
	for name := range hung {
		hungTasks[name] = finishOn(t, ns, name, name)
	}
	for name, conns := range hung {
		eventually(t, 15*time.Second, "the fetcher connecting to "+name, func() (bool, error) { return conns() > 0, nil })
	}

	et := finishOn(t, ns, "healthy", "healthy")
	start := time.Now()
	eventually(t, 5*time.Second, "the healthy executor's task fetched while four executors hang", func() (bool, error) {
		v := recordedFetch(t, ns, et)
		return v != "" && v != "lost", nil
	})
	t.Logf("the healthy executor's task was fetched %v after it finished, with four executors hanging", time.Since(start).Round(time.Millisecond))
	store, err := objectstore.Open(context.Background(), storeURL)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	rc, err := store.Get(context.Background(), objectstore.Task{Namespace: ns, Run: "healthy", RunUID: string(getRun(t, ns, "healthy").UID), ExecutorTask: et}.LogKey(0))
	if err != nil {
		t.Fatalf("reading the fetched log: %v", err)
	}
	got, _ := io.ReadAll(rc)
	_ = rc.Close()
	if want := "log of /v1/tasks/" + et + "/steps/0/log"; string(got) != want {
		t.Fatalf("stored log %q, want %q", got, want)
	}

	// The hung fetches time out (visibly) and are tried again, not given up and not stuck.
	for name, conns := range hung {
		eventually(t, 20*time.Second, name+" timed out and tried again", func() (bool, error) {
			return conns() >= 2 && len(events(t, ns, hungTasks[name], rsv1.ReasonFetchFailed)) > 0, nil
		})
		if v := recordedFetch(t, ns, hungTasks[name]); v != "" {
			t.Errorf("%s: fetch recorded (%q) though its executor never answered", name, v)
		}
	}
}
