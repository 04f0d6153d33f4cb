package controllers_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/objectstore"
)

// ackingExecutor is an executor's endpoint that serves every step's log and takes the manager's
// word that a task's fetch is recorded (the ack), noting for each ack what the task's run recorded
// of the fetch when it came.
type ackingExecutor struct {
	*httptest.Server
	logs atomic.Int32
	// refuse answers that many acks 503 before it takes one (an ack lost on its way); refuseAll
	// answers every ack 503 while it is set.
	refuse    atomic.Int32
	refuseAll atomic.Bool
	refused   atomic.Int32

	mu   sync.Mutex
	acks []ackSeen
}

type ackSeen struct {
	task, uid, recorded string
	at                  time.Time
}

func serveAcking(t *testing.T, ns string) *ackingExecutor {
	t.Helper()
	executorToken(t, ns)
	e := &ackingExecutor{}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testToken {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		name, isAck := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/v1/tasks/"), "/fetched")
		if !isAck {
			e.logs.Add(1)
			_, _ = io.WriteString(w, "log of "+r.URL.Path)
			return
		}
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		if e.refuseAll.Load() || e.refuse.Add(-1) >= 0 {
			e.refused.Add(1)
			http.Error(w, "down for a moment", http.StatusServiceUnavailable)
			return
		}
		et := &rsv1.ExecutorTask{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, et); err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		run := &rsv1.Run{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: et.Spec.RunName}, run); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		e.mu.Lock()
		e.acks = append(e.acks, ackSeen{task: name, uid: r.URL.Query().Get("uid"), recorded: run.Status.RecordedFetch(et), at: time.Now()})
		e.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(e.Close)
	return e
}

// acksOf returns the acks the executor took for the ExecutorTask et.
func (e *ackingExecutor) acksOf(et string) []ackSeen {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []ackSeen
	for _, a := range e.acks {
		if a.task == et {
			out = append(out, a)
		}
	}
	return out
}

// waitAck waits until the executor took an ack for et and returns the first; every ack it took must
// have come after the run recorded a real fetch (not lost) of et, of its uid.
func (e *ackingExecutor) waitAck(t *testing.T, ns, et string, within time.Duration) ackSeen {
	t.Helper()
	eventually(t, within, "the executor told that "+et+"'s copy may go", func() (bool, error) {
		return len(e.acksOf(et)) > 0, nil
	})
	obj := &rsv1.ExecutorTask{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: et}, obj); err != nil {
		t.Fatal(err)
	}
	acks := e.acksOf(et)
	for _, a := range acks {
		if a.recorded == "" || a.recorded == rsv1.FetchedLost || a.uid != string(obj.UID) {
			t.Fatalf("the executor was told that %s (uid %s)'s copy may go while the run recorded its fetch as %q", et, a.uid, a.recorded)
		}
	}
	return acks[0]
}

// storedLog reads step 0's log of the ExecutorTask et of run from the manager's object store.
func storedLog(t *testing.T, ns, run, et string) string {
	t.Helper()
	store, err := objectstore.Open(context.Background(), storeURL)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	rc, err := store.Get(context.Background(), objectstore.Task{Namespace: ns, Run: run, RunUID: string(getRun(t, ns, run).UID), ExecutorTask: et}.LogKey(0))
	if err != nil {
		t.Fatalf("reading the stored log of %s: %v", et, err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}

// checkRecorded checks that run records task a's fetch as ack saw it, with step 0 pointing at the
// stored log.
func checkRecorded(t *testing.T, ns, run, et string, ack ackSeen) {
	t.Helper()
	ts := taskStatus(getRun(t, ns, run), "a")
	if ts.Fetched != ack.recorded {
		t.Errorf("task a recorded fetched %q, the executor was told when it was %q", ts.Fetched, ack.recorded)
	}
	want := objectstore.Task{Namespace: ns, Run: run, RunUID: string(getRun(t, ns, run).UID), ExecutorTask: et}.LogKey(0)
	if len(ts.Steps) == 0 || ts.Steps[0].LogKey != want {
		t.Errorf("task a's steps %+v, want step 0 at %s", ts.Steps, want)
	}
	if got, want := storedLog(t, ns, run, et), "log of /v1/tasks/"+et+"/steps/0/log"; got != want {
		t.Errorf("stored log %q, want %q", got, want)
	}
}

// TestAFetchWritesNoExecutorTask: fetching a task's logs writes nothing to its ExecutorTask (issue
// 10: the fetched mark was one apiserver write per task); the run's status records the fetch, with
// the log keys, and only then is the executor told that its copy may go.
func TestAFetchWritesNoExecutorTask(t *testing.T) {
	ns := newNamespace(t)
	exe := serveAcking(t, ns)
	startExecutor(t, ns, "ex", withFetchEndpoint(exe.URL))
	et := finishOn(t, ns, "r", "ex")
	ack := exe.waitAck(t, ns, et, 15*time.Second)
	checkRecorded(t, ns, "r", et, ack)
	time.Sleep(500 * time.Millisecond) // a write still on its way would show up meanwhile

	var etWrites, runWrites []string
	for _, w := range managerWritesIn(ns) {
		switch {
		case strings.Contains(w.path, "/executortasks/"):
			etWrites = append(etWrites, fmt.Sprintf("%s %s %d", w.method, w.path, w.code))
		case strings.Contains(w.path, "/runs/"):
			runWrites = append(runWrites, fmt.Sprintf("%s %s %d", w.method, w.path, w.code))
		}
	}
	t.Logf("the manager's writes of the run:\n%s", strings.Join(runWrites, "\n"))
	if len(etWrites) > 0 {
		t.Fatalf("the manager wrote the ExecutorTask after creating it (%d writes), want none:\n%s", len(etWrites), strings.Join(etWrites, "\n"))
	}
}

// TestAFetchLostInACrashIsFetchedAgain: the manager stops after it fetched a task's logs and before
// the run's status write that would record it. Nothing is lost: the executor was not told to drop
// its copy; the next manager fetches it again, into the same keys, records it, and then tells it.
func TestAFetchLostInACrashIsFetchedAgain(t *testing.T) {
	ns := newNamespace(t)
	exe := serveAcking(t, ns)
	startExecutor(t, ns, "ex", withFetchEndpoint(exe.URL))
	t.Cleanup(func() { fetchRecording.Store(nil) })
	crash := newManagerCrash()
	hook := crash.in(ns)
	fetchRecording.Store(&hook)
	et := finishOn(t, ns, "r", "ex")
	crash.wait(t, "the status write recording the fetch")

	if n := exe.logs.Load(); n != 1 {
		t.Fatalf("the log was asked for %d times before the crash, want once", n)
	}
	if got := recordedFetch(t, ns, et); got != "" {
		t.Fatalf("the run recorded the fetch as %q though the manager stopped before writing it", got)
	}
	if acks := exe.acksOf(et); len(acks) > 0 {
		t.Fatalf("the executor was told that its copy may go before the run recorded the fetch: %+v", acks)
	}

	fetchRecording.Store(nil)
	if err := startManager(); err != nil {
		t.Fatal(err)
	}
	ack := exe.waitAck(t, ns, et, 30*time.Second)
	if n := exe.logs.Load(); n != 2 {
		t.Errorf("the log was asked for %d times in all, want twice: once by each manager", n)
	}
	checkRecorded(t, ns, "r", et, ack)
}

// TestALostAckIsSentAgain: the executor does not take the manager's word that a task's copy may go
// (down for a moment: 503). The manager says it again after its backoff; and when the executor
// cordons itself (a member of a group draining to leave, waiting for that word), at once, not after
// the backoff grown meanwhile.
func TestALostAckIsSentAgain(t *testing.T) {
	ns := newNamespace(t)
	exe := serveAcking(t, ns)
	startExecutor(t, ns, "ex", withFetchEndpoint(exe.URL))

	exe.refuse.Store(1)
	et := finishOn(t, ns, "once", "ex")
	exe.waitAck(t, ns, et, 15*time.Second)
	if n := exe.refused.Load(); n != 1 {
		t.Fatalf("%d acks refused before one was taken, want 1", n)
	}

	// Refused until the manager's backoff for the executor (500ms, doubling) is 8s.
	exe.refused.Store(0)
	exe.refuseAll.Store(true)
	et = finishOn(t, ns, "cordoned", "ex")
	eventually(t, 30*time.Second, "five acks refused", func() (bool, error) { return exe.refused.Load() >= 5, nil })
	exe.refuseAll.Store(false)
	cordoned := time.Now()
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		ex := &rsv1.Executor{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "ex"}, ex); err != nil {
			return err
		}
		ex.Spec.Unschedulable = true
		return k8s.Update(context.Background(), ex)
	})
	if err != nil {
		t.Fatal(err)
	}
	ack := exe.waitAck(t, ns, et, 30*time.Second)
	if d := ack.at.Sub(cordoned); d > 4*time.Second {
		t.Fatalf("the executor, cordoned, was told %v later, want at once (before the 8s backoff)", d.Round(time.Millisecond))
	}
}
