package executor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor/toolbox"
)

// These tests run a runner's follow loop against a real apiserver (the task's status) with a
// driver whose Following the test scripts: what each Look sees, and what Cut does.

// scriptedFollower is a Follower whose one task is followed by its Following.
type scriptedFollower struct {
	Driver // nil: the runner calls only Follow and Remove here
	f      *scriptedFollowing
}

func (d *scriptedFollower) Follow(context.Context, string, string, int, toolbox.Limits) Following {
	return d.f
}

func (d *scriptedFollower) Remove(context.Context, string) error { return nil }

// scriptedFollowing answers each Look with the next of looks (the last one again once they run
// out), and calls cut on Cut.
type scriptedFollowing struct {
	mu      sync.Mutex
	looks   []func() (Seen, error)
	n       int
	changed chan struct{}
	cut     func() error
	cuts    int
}

func (f *scriptedFollowing) Changed() <-chan struct{} { return f.changed }

func (f *scriptedFollowing) Look(context.Context) (Seen, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	look := f.looks[min(f.n, len(f.looks)-1)]
	f.n++
	return look()
}

func (f *scriptedFollowing) Cut() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cuts++
	if f.cut == nil {
		return nil
	}
	return f.cut()
}

func (f *scriptedFollowing) Close() {}

// newScriptedRunner is a runner of a one-step ExecutorTask created in a namespace of its own,
// whose driver's Following is f; step 0's result in the task's directory says Running.
func newScriptedRunner(t *testing.T, f *scriptedFollowing) *runner {
	t.Helper()
	if f.changed == nil {
		f.changed = make(chan struct{}, 1)
	}
	return newTestRunner(t, &scriptedFollower{f: f})
}

// newTestRunner is a runner of a one-step ExecutorTask created in a namespace of its own, run by
// d; step 0's result in the task's directory says Running.
func newTestRunner(t *testing.T, d Driver) *runner {
	t.Helper()
	c, err := client.New(env.Config, client.Options{Scheme: Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	et := createTestTask(t, c, "fol", "true")
	now := metav1.Now()
	et.Status.StartTime = &now
	e := &Executor{client: c, reader: c, uid: "uid", runners: map[types.UID]*runner{}, driver: d,
		opts: Options{Name: "ex", Namespace: et.Namespace, DataDir: t.TempDir(), Limits: toolbox.Limits{}.WithDefaults()}}
	r := &runner{e: e, et: et, id: et.UID, name: et.Name, dir: e.taskDir(et.UID), stopped: make(chan struct{})}
	writeStepResult(t, r.dir, `{"phase":"Running","startTime":"2026-01-02T03:04:05Z"}`)
	return r
}

func writeStepResult(t *testing.T, dir, result string) {
	t.Helper()
	path := toolbox.StepResultPath(dir, 0)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(result), 0o644); err != nil {
		t.Fatal(err)
	}
}

// finalStatus runs the runner's follow loop to its end and returns the task's recorded status.
func finalStatus(t *testing.T, r *runner) rsv1.ExecutorTaskStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := r.follow(ctx); err != nil {
		t.Fatalf("the runner ended with %v", err)
	}
	got := &rsv1.ExecutorTask{}
	if err := r.e.reader.Get(ctx, client.ObjectKeyFromObject(r.et), got); err != nil {
		t.Fatal(err)
	}
	return got.Status
}

var ended = &State{Started: true}

// TestACopyStillUnderWayAtCopyWaitIsCutFirst: when the copy of an ended task's reports takes
// longer than copyWait, the runner cuts it (the driver stops the read and fills in what the
// container's termination message reported) before it reads the steps for the final status: a
// step whose end the copy missed is not left Running, failing the task as "stopped or killed".
func TestACopyStillUnderWayAtCopyWaitIsCutFirst(t *testing.T) {
	defer func(w time.Duration) { copyWait = w }(copyWait)
	copyWait = 200 * time.Millisecond
	f := &scriptedFollowing{looks: []func() (Seen, error){func() (Seen, error) { return Seen{State: ended}, nil }}}
	r := newScriptedRunner(t, f)
	f.cut = func() error {
		writeStepResult(t, r.dir, `{"phase":"Success","startTime":"2026-01-02T03:04:05Z","endTime":"2026-01-02T03:04:06Z","exitCode":0}`)
		return nil
	}
	st := finalStatus(t, r)
	if f.cuts != 1 {
		t.Errorf("the copy was cut %d times, want once", f.cuts)
	}
	if st.Phase != rsv1.TaskPhaseSuccess || len(st.Steps) != 1 || st.Steps[0].Phase != rsv1.StepPhaseSuccess {
		t.Fatalf("task %s %q, steps %+v; want Success with its step's end as the termination message reports it", st.Phase, st.Message, st.Steps)
	}
}

// TestALookThatFailsIsTriedAgain: a look at the task's containers that fails for a moment (the
// driver's live pod List cut off by the apiserver) is not the containers' end: the runner looks
// again and writes the final status the next look sees, not none at all.
func TestALookThatFailsIsTriedAgain(t *testing.T) {
	f := &scriptedFollowing{looks: []func() (Seen, error){
		func() (Seen, error) {
			return Seen{}, fmt.Errorf("listing the pod of task x: %w", apierrors.NewServiceUnavailable("the apiserver is shutting down"))
		},
		func() (Seen, error) { return Seen{State: ended, Done: true}, nil },
	}}
	r := newScriptedRunner(t, f)
	writeStepResult(t, r.dir, `{"phase":"Success","startTime":"2026-01-02T03:04:05Z","endTime":"2026-01-02T03:04:06Z","exitCode":0}`)
	if st := finalStatus(t, r); st.Phase != rsv1.TaskPhaseSuccess {
		t.Fatalf("task %s %q, want Success", st.Phase, st.Message)
	}
}

// TestAReadUnderWayWhenTheContainersAreGoneIsCutFirst: containers found gone (the pod deleted)
// while a read of their reports is under way: the runner cuts the copy (the driver stops the read
// and waits for it) before it writes the final status, so nothing writes the task's directory
// after it.
func TestAReadUnderWayWhenTheContainersAreGoneIsCutFirst(t *testing.T) {
	f := &scriptedFollowing{looks: []func() (Seen, error){
		func() (Seen, error) { return Seen{}, fmt.Errorf("the pod of task x: %w", ErrNotFound) },
	}}
	r := newScriptedRunner(t, f)
	var phaseAtCut rsv1.TaskPhase
	f.cut = func() error {
		got := &rsv1.ExecutorTask{}
		if err := r.e.reader.Get(t.Context(), client.ObjectKeyFromObject(r.et), got); err != nil {
			t.Error(err)
		}
		phaseAtCut = got.Status.Phase
		return nil
	}
	st := finalStatus(t, r)
	if f.cuts != 1 {
		t.Fatalf("the copy was cut %d times, want once before the final status (%s %q)", f.cuts, st.Phase, st.Message)
	}
	if phaseAtCut == st.Phase {
		t.Fatalf("the copy was cut after the final status %s was written", st.Phase)
	}
}

// flakyWaiter is a driver, no Follower, whose Wait fails once for a moment (the daemon restarting)
// before it returns the task's end.
type flakyWaiter struct {
	Driver // nil: the runner calls only Inspect, Wait and Remove here
	mu     sync.Mutex
	waits  int
}

func (d *flakyWaiter) Inspect(context.Context, string) (*State, error) {
	return &State{Running: true, Started: true}, nil
}

func (d *flakyWaiter) Wait(context.Context, string) (*State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waits++
	if d.waits == 1 {
		return nil, errors.New("waiting for the container: the daemon is restarting")
	}
	return ended, nil
}

func (d *flakyWaiter) Remove(context.Context, string) error { return nil }

// TestAWaitThatFailsIsWaitedForAgain: a driver that is no Follower, whose Wait fails for a moment,
// is waited on again (the runner looks again after its backoff): the task gets the final status
// of its end, not a look that fails for ever.
func TestAWaitThatFailsIsWaitedForAgain(t *testing.T) {
	d := &flakyWaiter{}
	r := newTestRunner(t, d)
	writeStepResult(t, r.dir, `{"phase":"Success","startTime":"2026-01-02T03:04:05Z","endTime":"2026-01-02T03:04:06Z","exitCode":0}`)
	if st := finalStatus(t, r); st.Phase != rsv1.TaskPhaseSuccess {
		t.Fatalf("task %s %q, want Success", st.Phase, st.Message)
	}
	if d.waits != 2 {
		t.Fatalf("Wait called %d times, want twice", d.waits)
	}
}
