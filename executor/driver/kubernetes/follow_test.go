package kubernetes

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor"
	"runservice.dev/runservice/executor/toolbox"
)

// These tests drive a task's podFollow by hand: the pod index is fed the pod's states, and the
// main container's log comes from a scripted log source (fakeLogs), one answer per request.

// logAnswer is the answer to one log request: the request's error, or the log it streams; a hung
// stream blocks after its log until the request is cancelled (a node that stops mid-read), a cut
// one fails with cut after it.
type logAnswer struct {
	err  error
	log  string
	hung bool
	cut  error
}

// fakeLogs serves scripted answers in order and records each request's follow flag.
type fakeLogs struct {
	mu      sync.Mutex
	answers []logAnswer
	asked   []bool
	closed  int // streams closed
}

func (l *fakeLogs) script(a ...logAnswer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.answers = append(l.answers, a...)
}

func (l *fakeLogs) requests() []bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]bool(nil), l.asked...)
}

func (l *fakeLogs) open(ctx context.Context, _ *corev1.Pod, follow bool) (io.ReadCloser, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.asked = append(l.asked, follow)
	if len(l.answers) == 0 {
		return nil, errors.New("the test scripted no answer to this log request")
	}
	a := l.answers[0]
	l.answers = l.answers[1:]
	if a.err != nil {
		return nil, a.err
	}
	var r io.Reader = strings.NewReader(a.log)
	if a.hung {
		r = io.MultiReader(r, &hungReader{ctx: ctx})
	}
	if a.cut != nil {
		r = io.MultiReader(r, iotest.ErrReader(a.cut))
	}
	return &fakeStream{Reader: r, l: l}, nil
}

type fakeStream struct {
	io.Reader
	l *fakeLogs
}

func (s *fakeStream) Close() error {
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	s.l.closed++
	return nil
}

// hungReader blocks until its request is cancelled, as a stream from a node that stopped sending.
type hungReader struct{ ctx context.Context }

func (h *hungReader) Read([]byte) (int, error) {
	<-h.ctx.Done()
	return 0, h.ctx.Err()
}

// followTest is a driver whose pod index holds the pods the test puts there.
type followTest struct {
	t    *testing.T
	d    *Driver
	logs *fakeLogs
	dir  string
	// finished is when setPod says the main container ended (zero: unknown).
	finished time.Time
}

const (
	testUID  = "task-uid"
	testNode = "node-a"
)

func newFollowTest(t *testing.T) *followTest {
	t.Helper()
	ix := &podIndex{
		indexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byTaskUID: taskUIDIndex}),
		waiters: map[string]map[chan struct{}]struct{}{}, created: map[string]createdPod{},
	}
	logs := &fakeLogs{}
	d := &Driver{pods: ix, openLog: logs.open}
	d.logs = newLogGate(ix.wakeNode)
	return &followTest{t: t, d: d, logs: logs, dir: t.TempDir()}
}

// follow begins following the task's pod.
func (ft *followTest) follow(steps int) *podFollow {
	f := ft.d.Follow(ft.t.Context(), testUID, ft.dir, steps, toolbox.Limits{}.WithDefaults()).(*podFollow)
	ft.t.Cleanup(f.Close)
	return f
}

// setPod puts the task's pod in the index with its main container running, or ended with exit
// code 0 and the termination message msg, and wakes its waits as the informer does.
func (ft *followTest) setPod(ended bool, msg string) {
	ft.t.Helper()
	main := corev1.ContainerStatus{Name: mainName, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
	phase := corev1.PodRunning
	if ended {
		main.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Message: msg, FinishedAt: metav1.NewTime(ft.finished)}}
		phase = corev1.PodSucceeded
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{rsv1.LabelExecutorTaskUID: testUID}},
		Spec:       corev1.PodSpec{NodeName: testNode},
		Status:     corev1.PodStatus{Phase: phase, ContainerStatuses: []corev1.ContainerStatus{main}},
	}
	if err := ft.d.pods.indexer.Update(pod); err != nil {
		ft.t.Fatal(err)
	}
	ft.d.pods.changed(pod)
}

func (ft *followTest) look(f *podFollow) executor.Seen {
	ft.t.Helper()
	seen, err := f.Look(ft.t.Context())
	if err != nil {
		ft.t.Fatal(err)
	}
	return seen
}

// copyEnds waits until the read under way has ended (its end is then taken by the next look).
func (ft *followTest) copyEnds(f *podFollow) {
	ft.t.Helper()
	deadline := time.After(10 * time.Second)
	for len(f.copied) == 0 {
		select {
		case <-f.Changed():
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			ft.t.Fatal("the read of the log did not end")
		}
	}
}

// readAgainAt waits until at, when the failed read of the ended pod's log is tried again, and
// checks that the task is then done with its whole log ("one\ntwo\n").
func (ft *followTest) readAgainAt(f *podFollow, at time.Time) {
	ft.t.Helper()
	time.Sleep(time.Until(at))
	ft.look(f)
	ft.copyEnds(f)
	if seen := ft.look(f); !seen.Done || seen.Copied != nil {
		ft.t.Fatalf("after the read tried again: done %v, copied %v", seen.Done, seen.Copied)
	}
	if got := ft.stepLog(0); got != "one\ntwo\n" {
		ft.t.Fatalf("step log %q, want the whole log", got)
	}
}

// followEndsWhileRunning follows the running pod of a one-step task; the follow ends cleanly with
// "one\n" read (the apiserver closed it); the next request reads the whole log, "one\ntwo\n".
func (ft *followTest) followEndsWhileRunning() *podFollow {
	ft.t.Helper()
	ft.setPod(false, "")
	f := ft.follow(1)
	ft.logs.script(logAnswer{log: frames(false, "one\n")}, logAnswer{log: frames(true, "one\n", "two\n")})
	ft.look(f) // follows
	ft.copyEnds(f)
	return f
}

// stepLog is the step's log as the copy has it.
func (ft *followTest) stepLog(i int) string {
	b, err := os.ReadFile(toolbox.StepLogPath(ft.dir, i))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		ft.t.Fatal(err)
	}
	return string(b)
}

// frames is a toolbox's log: step 0 wrote lines (each at its offset in the step's log), and,
// when ended, step 0's result.
func frames(ended bool, lines ...string) string {
	var b strings.Builder
	off := 0
	for _, l := range lines {
		fmt.Fprintf(&b, toolbox.FramePrefix+`{"t":"log","i":0,"o":%d,"d":%q}`+"\n", off, base64.StdEncoding.EncodeToString([]byte(l)))
		off += len(l)
	}
	if ended {
		fmt.Fprintf(&b, toolbox.FramePrefix+`{"t":"result","i":0,"r":%s}`+"\n", successResult)
	}
	return b.String()
}

const successResult = `{"phase":"Success","startTime":"2026-01-02T03:04:05Z","endTime":"2026-01-02T03:04:06Z","exitCode":0}`

// unreachable is what the apiserver answers when it cannot reach the pod's node.
var unreachable = apierrors.NewInternalError(errors.New(`Get "https://10.0.0.1:10250/containerLogs/ns/p/main": dial tcp 10.0.0.1:10250: connect: connection refused`))

// TestAFailedLastReadIsTriedAgain: the read of an ended pod's log that its node fails (a kubelet
// restarting) is tried again, after the task's backoff and once the node's gate lets it, and the
// task is done only once its log is whole; on a node that never served a log (kwok, a kubelet
// that serves none) the failed read is not tried again: the task ends at once with what it has.
func TestAFailedLastReadIsTriedAgain(t *testing.T) {
	t.Run("a node that served logs", func(t *testing.T) {
		ft := newFollowTest(t)
		ft.d.logs.answered(testNode, nil) // another pod's follow: the node serves logs
		ft.setPod(true, "")
		f := ft.follow(1)
		ft.logs.script(logAnswer{err: unreachable}, logAnswer{log: frames(true, "one\n", "two\n")})
		if seen := ft.look(f); seen.Done {
			t.Fatal("done before the ended pod's log was read")
		}
		ft.copyEnds(f)
		seen := ft.look(f)
		if seen.Done {
			t.Fatalf("done after the read of the ended pod's log failed (copy %q, requests %v): its log is lost", ft.stepLog(0), ft.logs.requests())
		}
		if seen.At.IsZero() {
			t.Fatal("no time to look again after the failed read")
		}
		ft.d.logs.answered(testNode, nil) // the node is back: another pod's probe got an answer
		ft.readAgainAt(f, seen.At)
		if got := ft.logs.requests(); len(got) != 2 || got[0] || got[1] {
			t.Fatalf("log requests (follow flags) %v, want two reads", got)
		}
	})
	t.Run("a pod whose log streamed, on a node the gate forgot", func(t *testing.T) {
		ft := newFollowTest(t)
		ft.setPod(false, "")
		f := ft.follow(1)
		ft.logs.script(logAnswer{log: frames(false, "one\n"), cut: io.ErrUnexpectedEOF}, logAnswer{err: unreachable},
			logAnswer{log: frames(true, "one\n", "two\n")})
		ft.look(f)
		ft.copyEnds(f)
		ft.d.logs.mu.Lock()
		delete(ft.d.logs.nodes, testNode) // forgotten (forgetIdle) while the follow streamed
		ft.d.logs.mu.Unlock()
		ft.setPod(true, "")
		ft.look(f)
		ft.copyEnds(f)
		for start := time.Now(); ; {
			seen := ft.look(f)
			if seen.Done {
				break
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("not done 10s after the failed read (requests %v)", ft.logs.requests())
			}
			if f.copying {
				ft.copyEnds(f)
			} else {
				time.Sleep(time.Until(seen.At))
			}
		}
		if got := ft.stepLog(0); got != "one\ntwo\n" {
			t.Fatalf("step log %q, want the whole log (requests %v)", got, ft.logs.requests())
		}
	})
	t.Run("a stream that breaks mid-read", func(t *testing.T) {
		ft := newFollowTest(t)
		ft.d.logs.answered(testNode, nil)
		ft.setPod(true, "")
		f := ft.follow(1)
		ft.logs.script(logAnswer{log: frames(false, "one\n"), cut: io.ErrUnexpectedEOF}, logAnswer{log: frames(true, "one\n", "two\n")})
		ft.look(f)
		ft.copyEnds(f)
		seen := ft.look(f)
		if seen.Done {
			t.Fatalf("done after the stream of the ended pod's log broke (copy %q)", ft.stepLog(0))
		}
		ft.readAgainAt(f, seen.At)
	})
	// An answer that will not change (the container's log removed: 4xx) is not asked again: the
	// task would wait copyWait for nothing, reading its log again every backoff.
	t.Run("a node that answers for good", func(t *testing.T) {
		ft := newFollowTest(t)
		ft.d.logs.answered(testNode, nil)
		ft.setPod(true, "")
		f := ft.follow(1)
		ft.logs.script(logAnswer{err: apierrors.NewBadRequest(`container "main" in pod "p" is not available`)})
		ft.look(f)
		ft.copyEnds(f)
		seen := ft.look(f)
		if !seen.Done {
			t.Fatalf("not done after a read the node refused for good (look again at %v, requests %v)", seen.At, ft.logs.requests())
		}
		if seen.Copied == nil {
			t.Error("the read's failure was not reported (Seen.Copied)")
		}
		if got := ft.logs.requests(); len(got) != 1 {
			t.Fatalf("%d log requests, want one", len(got))
		}
	})
	t.Run("a node that never served a log", func(t *testing.T) {
		ft := newFollowTest(t)
		ft.setPod(true, "")
		f := ft.follow(1)
		ft.logs.script(logAnswer{err: unreachable})
		ft.look(f)
		ft.copyEnds(f)
		seen := ft.look(f)
		if !seen.Done {
			t.Fatalf("not done after the one read of a node that serves no log failed (look again at %v)", seen.At)
		}
		if got := ft.logs.requests(); len(got) != 1 {
			t.Fatalf("%d log requests, want one", len(got))
		}
	})
}

// TestCutStopsTheReadAndFillsInTheTerminationMessage: a read of an ended pod's log that hangs (the
// node stopped sending) is cancelled and waited for by Cut, so nothing writes the task's directory
// once the runner writes its final status, and the step the log did not bring to its end takes its
// result from the termination message.
func TestCutStopsTheReadAndFillsInTheTerminationMessage(t *testing.T) {
	ft := newFollowTest(t)
	ft.d.logs.answered(testNode, nil)
	ft.setPod(true, `{"steps":[`+successResult+`]}`)
	f := ft.follow(1)
	running := toolbox.FramePrefix + `{"t":"result","i":0,"r":{"phase":"Running","startTime":"2026-01-02T03:04:05Z"}}` + "\n"
	ft.logs.script(logAnswer{log: running + frames(false, "one\n"), hung: true})
	ft.look(f)
	if seen := ft.look(f); seen.Done {
		t.Fatal("done while the read is under way")
	}
	if err := f.Cut(); err != nil {
		t.Fatalf("cut: %v", err)
	}
	ft.logs.mu.Lock()
	closed := ft.logs.closed
	ft.logs.mu.Unlock()
	if closed != 1 || f.copying {
		t.Fatalf("Cut returned with the read under way (streams closed %d, copying %v)", closed, f.copying)
	}
	if got := ft.stepLog(0); got != "one\n" {
		t.Errorf("step log %q, want what was read before the cut", got)
	}
	res, err := toolbox.ReadResult(ft.dir, 0)
	if err != nil || res.Phase != rsv1.StepPhaseSuccess {
		t.Fatalf("step result %+v (%v), want Success from the termination message", res, err)
	}
}

// TestAFollowThatEndedWhileThePodRanIsReadAgainAtTheEnd: a follow that ended cleanly while the pod
// still ran (the apiserver closed it), and could not be followed again (its node's gate closed by
// another pod's failed follow), leaves the copy behind: when the pod ends with a termination
// message that tells nothing (none, or not the toolbox's), its log is read once more.
func TestAFollowThatEndedWhileThePodRanIsReadAgainAtTheEnd(t *testing.T) {
	ft := newFollowTest(t)
	f := ft.followEndsWhileRunning()
	seen := ft.look(f)
	if seen.At.IsZero() {
		t.Fatal("no follow again after the follow ended while the pod ran")
	}
	time.Sleep(time.Until(seen.At))
	ft.d.logs.answered(testNode, unreachable) // another pod's follow: the node did not answer
	if seen := ft.look(f); f.copying || seen.At.IsZero() {
		t.Fatalf("not held at the node's closed gate: following %v, look again at %v", f.copying, seen.At)
	}
	if got := ft.logs.requests(); len(got) != 1 {
		t.Fatalf("log requests %v, want the one follow (the gate is closed)", got)
	}
	ft.setPod(true, "not the toolbox's")
	if seen := ft.look(f); seen.Done {
		t.Fatalf("done without reading the ended pod's log: step log %q, want %q", ft.stepLog(0), "one\ntwo\n")
	}
	ft.copyEnds(f)
	if seen := ft.look(f); !seen.Done {
		t.Fatal("not done after the read of the ended pod's log")
	}
	if got := ft.stepLog(0); got != "one\ntwo\n" {
		t.Fatalf("step log %q, want the whole log", got)
	}
}

// TestAFollowThatEndedBeforeTheContainerIsReadAgain: a follow that ended cleanly while the pod ran
// (the apiserver closed it), the pod ending before the task's backoff let it follow again, leaves
// the copy behind when the container ended later than the follow did (its FinishedAt): its log is
// read once more, though the termination message tells nothing (not the toolbox's). A follow that
// the kubelet ended at the container's exit costs no second read.
func TestAFollowThatEndedBeforeTheContainerIsReadAgain(t *testing.T) {
	t.Run("the container ended after the follow", func(t *testing.T) {
		ft := newFollowTest(t)
		f := ft.followEndsWhileRunning()
		ft.finished = time.Now().Add(3 * time.Second) // the container wrote on for 3 s, then exited
		ft.setPod(true, "not the toolbox's")
		if seen := ft.look(f); seen.Done {
			t.Fatalf("done without reading the ended pod's log: step log %q, requests %v", ft.stepLog(0), ft.logs.requests())
		}
		ft.copyEnds(f)
		if seen := ft.look(f); !seen.Done {
			t.Fatal("not done after the read of the ended pod's log")
		}
		if got := ft.stepLog(0); got != "one\ntwo\n" {
			t.Fatalf("step log %q, want the whole log", got)
		}
	})
	t.Run("the kubelet ended the follow at the exit", func(t *testing.T) {
		ft := newFollowTest(t)
		ft.setPod(false, "")
		f := ft.follow(1)
		ft.logs.script(logAnswer{log: frames(true, "one\n")})
		ft.finished = time.Now().Truncate(time.Second) // FinishedAt counts whole seconds
		ft.look(f)
		ft.copyEnds(f)
		ft.setPod(true, "not the toolbox's")
		if seen := ft.look(f); !seen.Done {
			t.Fatalf("not done: the follow that ended at the container's exit is read again (requests %v)", ft.logs.requests())
		}
		if got := ft.logs.requests(); len(got) != 1 {
			t.Fatalf("log requests %v, want the one follow", got)
		}
	})
}
