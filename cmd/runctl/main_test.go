package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with what the commands print")

var (
	env        *testenv.Env
	k8s        client.Client
	kubeconfig string // the admin's kubeconfig file
	binary     string // runctl built, for the tests that need its exit code
	storeURL   string // the manager's object store
)

func TestMain(m *testing.M) {
	flag.Parse()
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	klog.SetLogger(logf.Log) // the archive API's generic server logs, at the same level
	code, err := setUp(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

func setUp(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "runctl-test-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "runctl")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		return 1, fmt.Errorf("building runctl: %w\n%s", err, out)
	}
	if env, err = testenv.Start(); err != nil {
		return 1, err
	}
	defer env.Stop()
	kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.Kubeconfig, 0o600); err != nil {
		return 1, err
	}
	if k8s, err = client.New(env.Config, client.Options{Scheme: manager.Scheme()}); err != nil {
		return 1, err
	}
	// The manager archives runs that ask for it at once, and serves the archive API.
	var archiving func(*manager.Options)
	archiving, storeURL, err = env.Archiving(context.Background(), dir)
	if err != nil {
		return 1, err
	}
	stop, err := env.StartManager(archiving)
	if err != nil {
		return 1, err
	}
	defer stop()
	return m.Run(), nil
}

// runctl runs runctl's commands in this process, in namespace ns, and returns what they printed
// and the exit code.
func runctl(t *testing.T, ns string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code = run(ctx, append([]string{"--kubeconfig", kubeconfig, "-n", ns}, args...), &out, &errOut)
	return out.String(), errOut.String(), code
}

// mustRunctl runs runctl and fails the test unless it succeeds.
func mustRunctl(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, errOut, code := runctl(t, ns, args...)
	if code != 0 {
		t.Fatalf("runctl %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func newNamespace(t *testing.T) string { return e2e.NewNamespace(t, k8s, "runctl") }

// ---- runs to operate on ----

type taskOpt func(*rsv1.Task)

func task(name string, opts ...taskOpt) rsv1.Task {
	t := rsv1.Task{
		Name:       name,
		Containers: []rsv1.Container{{Image: "busybox:1.36"}},
		Steps:      []rsv1.Step{{Run: &rsv1.RunStep{Name: ptr.To("make"), Command: "make " + name}}},
	}
	for _, o := range opts {
		o(&t)
	}
	return t
}

func after(parent string, conds ...rsv1.DependCondition) taskOpt {
	return func(t *rsv1.Task) {
		t.Depends = append(t.Depends, rsv1.TaskDependency{Task: parent, Conditions: conds})
	}
}

func needsApproval(t *rsv1.Task) { t.NeedsApproval = ptr.To(true) }

func createRun(t *testing.T, ns, name string, groups []string, change func(*rsv1.Run), tasks ...rsv1.Task) {
	t.Helper()
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: rsv1.RunSpec{ChangeGroups: groups, Tasks: tasks}}
	if change != nil {
		change(run)
	}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatalf("creating run %s: %v", name, err)
	}
}

// epoch is when the fake executor says tasks ran: their durations are then the same every time.
var epoch = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// ended is an ExecutorTask status of a task that ran from second from to second to, its one step
// exiting with exit.
func ended(from, to int, exit int32) rsv1.ExecutorTaskStatus {
	start, end := metav1.NewTime(epoch.Add(time.Duration(from)*time.Second)), metav1.NewTime(epoch.Add(time.Duration(to)*time.Second))
	phase, step := rsv1.TaskPhaseSuccess, rsv1.StepPhaseSuccess
	if exit != 0 {
		phase, step = rsv1.TaskPhaseFailed, rsv1.StepPhaseFailed
	}
	return rsv1.ExecutorTaskStatus{Phase: phase, StartTime: &start, EndTime: &end, Steps: []rsv1.StepStatus{
		{Name: "make", Phase: step, ExitCode: ptr.To(exit), StartTime: &start, EndTime: &end},
	}}
}

func getRun(t *testing.T, ns, name string) *rsv1.Run {
	t.Helper()
	run := &rsv1.Run{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, run); err != nil {
		t.Fatalf("reading run %s: %v", name, err)
	}
	return run
}

// eventually waits up to 30 s for the run to meet cond, and returns it.
func eventually(t *testing.T, what string, cond func(*rsv1.Run) bool, ns, name string) *rsv1.Run {
	t.Helper()
	var run *rsv1.Run
	e2e.Eventually(t, 30*time.Second, "run "+name+": "+what, func() bool {
		run = getRun(t, ns, name)
		return cond(run)
	})
	return run
}

func phaseIs(p rsv1.RunPhase) func(*rsv1.Run) bool {
	return func(r *rsv1.Run) bool { return r.Status.Phase == p }
}

// fixture makes the runs most tests read, in a new namespace, and returns it:
//   - diamond: checkout, then build and test, then package after both. test fails (exit 2), so
//     package is skipped and the run Finished Failed.
//   - release (change group project-a): build succeeds, deploy waits for approval: Running.
//   - held (change group project-a): suspended, Queued.
//   - ok: one task that succeeds: Finished Success.
func fixture(t *testing.T) string {
	t.Helper()
	ns := newNamespace(t)
	testenv.StartFakeExecutor(t, k8s, ns, "docker-1")
	createRun(t, ns, "diamond", nil, nil, task("checkout"), task("build", after("checkout")), task("test", after("checkout")),
		task("package", after("build"), after("test")))
	createRun(t, ns, "release", []string{"project-a"}, nil, task("build"), task("deploy", after("build"), needsApproval))
	createRun(t, ns, "held", []string{"project-a"}, func(r *rsv1.Run) { r.Spec.Suspend = ptr.To(true) }, task("only"))
	createRun(t, ns, "ok", nil, nil, task("only"))
	testenv.ReportTask(t, k8s, ns, "diamond", "checkout", ended(0, 3, 0))
	testenv.ReportTask(t, k8s, ns, "diamond", "build", ended(3, 65, 0))
	testenv.ReportTask(t, k8s, ns, "diamond", "test", ended(3, 10, 2))
	testenv.ReportTask(t, k8s, ns, "release", "build", ended(0, 42, 0))
	testenv.ReportTask(t, k8s, ns, "ok", "only", ended(0, 1, 0))
	eventually(t, "finished", phaseIs(rsv1.RunPhaseFinished), ns, "diamond")
	eventually(t, "finished", phaseIs(rsv1.RunPhaseFinished), ns, "ok")
	eventually(t, "deploy waiting for approval", func(r *rsv1.Run) bool {
		return taskStatus(r, "deploy").WaitingApproval
	}, ns, "release")
	eventually(t, "queued", phaseIs(rsv1.RunPhaseQueued), ns, "held")
	return ns
}

// ---- golden files ----

var (
	// What changes from one test run to the next: ages, timestamps, the run's own durations (its
	// start is the manager's clock), namespaces.
	ageCell = regexp.MustCompile(`\b(\d+(ms|s|m|h|d|y))+\b`)
	timeRE  = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`)
	nsName  = regexp.MustCompile(`runctl\d+-\d+`)
)

// normalizeTable replaces the ages of a table's rows (its date columns) with <age>. Cells are cut
// where the header's column names start and joined by " | ": an age's width would shift the
// columns after it, and an empty cell must stay one.
func normalizeTable(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	var starts []int
	for _, m := range regexp.MustCompile(`\S+`).FindAllStringIndex(lines[0], -1) {
		starts = append(starts, m[0])
	}
	var b strings.Builder
	for _, line := range lines {
		cells := make([]string, len(starts))
		for i, start := range starts {
			end := len(line)
			if i+1 < len(starts) && starts[i+1] < end {
				end = starts[i+1]
			}
			if start < end {
				cells[i] = strings.TrimSpace(line[start:end])
			}
			if ageCell.FindString(cells[i]) == cells[i] && cells[i] != "" {
				cells[i] = "<age>"
			}
		}
		b.WriteString(strings.TrimRight(strings.Join(cells, " | "), " ") + "\n")
	}
	return nsName.ReplaceAllString(b.String(), "NS")
}

func normalizeDescribe(s string) string {
	s = timeRE.ReplaceAllString(s, "<time>")
	s = regexp.MustCompile(`(?m)^Duration:(\s+)\S+`).ReplaceAllString(s, "Duration:$1<duration>")
	return nsName.ReplaceAllString(s, "NS")
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s is missing: go test ./cmd/runctl -run %s -update writes it", path, t.Name())
	}
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test ./cmd/runctl -run %s -update rewrites it)\n--- got\n%s--- want\n%s", path, t.Name(), got, want)
	}
}

// lockedBuffer is a buffer a process writes to while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls cond for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	e2e.Eventually(t, 30*time.Second, what, cond)
}
