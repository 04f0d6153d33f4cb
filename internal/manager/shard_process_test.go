package manager_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/shard"
	"runservice.dev/runservice/internal/testenv"
)

// managerProc is a manager process of the three-process test.
type managerProc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
}

// TestThreeManagerProcessesShareRuns is issue 12's test: three manager processes (cmd/manager,
// each with its own shard identity, user agent and ports; the first serves the webhook) on the
// real control plane, with a fake executor played by the test. 300 runs spread with no shard above
// 1.5× the mean; one process (not the webhook's) killed mid-run: its runs move to the others within
// its Lease's expiry (plus the relabelling) and finish; a fourth joining takes about 1/3 of the
// runs, from both others, and moves none between them. The apiserver's audit log (the user agent
// names the process) shows that no run or ExecutorTask was written by two shards interleaved (each
// shard's writes to an object form one stretch: A's all come before B's first) and that each
// task's ExecutorTask was created once.
func TestThreeManagerProcessesShareRuns(t *testing.T) {
	auditFrom := auditSize(t)
	ring, ns := newNamespace(t, "ring"), newNamespace(t, "procs")
	ps := newProcs(t)
	dir := ps.dir
	// Short for the test, long enough for a loaded machine: a member that cannot renew within 2/3
	// of it stops.
	const lease = 10 * time.Second
	start := func(name string, webhook bool) *managerProc {
		return ps.start(t, name, webhook, "--shards", "auto", "--shard-identity", name, "--shard-lease-duration", lease.String(),
			"--leader-elect", "--leader-election-namespace", ring, "--namespace", ring)
	}
	ctx := context.Background()
	procs := []*managerProc{start("manager-0", true), start("manager-1", false), start("manager-2", false)}
	dropRunsAtEnd(t, ns)
	view := shard.NewLeaseView("test")
	vctx, vcancel := context.WithCancel(ctx)
	defer vcancel()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := view.Start(vctx, cs, ring); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "three members in the ring", func() (bool, error) { return view.Ring().Len() == 3, nil })
	eventually(t, 30*time.Second, "the webhook serving", func() (bool, error) {
		return k8s.Create(ctx, twoTaskRun(ns, "probe"), client.DryRunAll) == nil, nil
	})
	testenv.StartFakeExecutor(t, k8s, ns, "fake")

	createRuns(t, ns, "run", 300)
	three := view.Ring()
	eventually(t, 30*time.Second, "300 runs placed on three shards", func() (bool, error) {
		_, placed, err := owners(ns, three)
		return placed, err
	})
	count, _, _ := owners(ns, three)
	t.Logf("300 runs by shard: %v", count)
	for m, c := range count {
		if float64(c) > 1.5*100 {
			t.Errorf("shard %s owns %d runs, more than 1.5× the mean 100", m, c)
		}
	}

	// Kill a member mid-run, neither the webhook's nor the leader (whose sharder would come back
	// only after the leader election's own Lease, 15s): the executor plays for a moment, then the
	// process dies at once.
	playExecutor(t, ns)
	time.Sleep(time.Second)
	victim := procs[1]
	if leader := leaderOf(t, dir, ring, "manager-0", "manager-1", "manager-2"); leader == victim.name {
		victim = procs[2]
	}
	killed := time.Now()
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-victim.exited
	// Within its Lease's expiry the leader sees it gone; relabelling its hundred runs takes
	// seconds more.
	eventually(t, lease+30*time.Second, victim.name+"'s runs moved to the others", func() (bool, error) {
		c, _, err := owners(ns, three)
		return c[victim.name] == 0 && c[""] == 0, err
	})
	moved := time.Since(killed)
	t.Logf("%s's %d runs moved %s after it was killed (its Lease lasts %s)", victim.name, count[victim.name], moved.Round(time.Millisecond), lease)
	var left []string
	for _, p := range procs {
		if p != victim {
			left = append(left, p.name)
		}
	}
	two := shard.NewRing(left...)
	eventually(t, 90*time.Second, "every run finished and placed on the two left", func() (bool, error) {
		_, placed, err := owners(ns, two)
		return placed && allFinished(ns), err
	})
	for _, p := range procs {
		select {
		case <-p.exited:
			if p != victim {
				t.Fatalf("%s exited (see its log): on a machine this loaded, a member cannot renew its Lease", p.name)
			}
		default:
		}
	}

	// A fourth joins while new runs are in flight.
	createRuns(t, ns, "late", 60)
	before := labelsOf(t, ns)
	procs = append(procs, start("manager-3", false))
	four := shard.NewRing(append(left, "manager-3")...)
	var misplaced string
	deadline := time.Now().Add(60 * time.Second)
	for {
		var err error
		if _, misplaced, err = placement(ns, four); err != nil {
			t.Fatal(err)
		}
		if misplaced == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("runs not moved to manager-3 as the ring says within 60s: %s", misplaced)
		}
		time.Sleep(100 * time.Millisecond)
	}
	after := labelsOf(t, ns)
	toNew, between := 0, 0
	for name, was := range before {
		switch now := after[name]; {
		case now == was:
		case now == "manager-3":
			toNew++
		default:
			between++
		}
	}
	t.Logf("manager-3 joined: %d of %d runs moved to it, %d between the others", toNew, len(before), between)
	if between > 0 {
		t.Errorf("%d runs moved between members that stayed", between)
	}
	if third := float64(len(before)) / 3; float64(toNew) < 0.5*third || float64(toNew) > 1.5*third {
		t.Errorf("%d runs moved to the newcomer, not about a third of %d", toNew, len(before))
	}
	eventually(t, 90*time.Second, "every run finished", func() (bool, error) { return allFinished(ns), nil })

	checkAudit(t, ns, auditFrom)
}

// managerProcs builds cmd/manager once and starts manager processes on the test's control plane, each
// with its own log (kept when the test fails), archive index and ports, sharing a file:// store.
type managerProcs struct {
	dir, bins, kubeconfig, storeURL string
}

func newProcs(t *testing.T) *managerProcs {
	t.Helper()
	dir, err := os.MkdirTemp("", "runservice-shard-procs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the processes' logs are in %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	p := &managerProcs{dir: dir, bins: filepath.Join(dir, "bin"), kubeconfig: filepath.Join(dir, "kubeconfig"), storeURL: objectstore.FileURL(filepath.Join(dir, "store"))}
	if err := e2e.Build(env.Root, p.bins, "./cmd/manager"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.kubeconfig, env.Kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// start starts manager process name with args after the common ones; only a process with webhook
// serves the webhook. It is stopped (SIGTERM, then SIGKILL after 20s) when the test ends.
func (ps *managerProcs) start(t *testing.T, name string, webhook bool, args ...string) *managerProc {
	t.Helper()
	w := env.WebhookInstallOptions
	port := "0"
	if webhook {
		port = strconv.Itoa(w.LocalServingPort)
	}
	logf, err := os.Create(filepath.Join(ps.dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(ps.bins, "manager"), append([]string{
		"--metrics-bind-address", "0", "--health-probe-bind-address", "0",
		"--webhook-port", port, "--webhook-cert-dir", w.LocalServingCertDir,
		"--object-store", ps.storeURL, "--archive-index-dir", filepath.Join(ps.dir, name+"-index"),
		"--archive-after", "1h", "--executor-insecure-http", "--executor-endpoint-allow", "loopback"}, args...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+ps.kubeconfig)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &managerProc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(p.exited) }()
	t.Cleanup(func() { p.stop(20 * time.Second) })
	return p
}

// stop stops the process cleanly (SIGTERM), killing it after grace.
func (p *managerProc) stop(grace time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// checkAudit reads the audit log from offset from (after its last batch is written) and checks the
// writes of the manager processes' shard work (user agent "... shard/<member>", not the sharder's)
// to the runs and ExecutorTasks of ns.
func checkAudit(t *testing.T, ns string, from int64) {
	t.Helper()
	time.Sleep(1500 * time.Millisecond) // the apiserver writes its audit log in batches of a second
	writers := map[string][]string{}    // object -> its writers in order, consecutive ones once
	creates := map[string]int{}
	// unanswered counts the creates that got a server error or no answer: the apiserver answers 5xx a
	// create whose client went away (a process killed mid-request) and may still store the object.
	unanswered := map[string]int{}
	err := testenv.ScanAuditLog(auditLog, from, -1, func(e testenv.AuditEvent) error {
		ref := e.ObjectRef
		if ref.Namespace != ns || (ref.Resource != "runs" && ref.Resource != "executortasks") ||
			e.Verb == "get" || e.Verb == "list" || e.Verb == "watch" {
			return nil
		}
		_, member, ok := strings.Cut(e.UserAgent, " shard/")
		if !ok || strings.HasSuffix(member, " sharder") {
			return nil // the test's own writes (the executor's), or the sharder's labels
		}
		if e.ResponseStatus == nil || e.ResponseStatus.Code >= 300 {
			if (e.ResponseStatus == nil || e.ResponseStatus.Code >= 500) && ref.Resource == "executortasks" && e.Verb == "create" {
				unanswered[ref.Name]++
			}
			return nil
		}
		obj := ref.Resource + "/" + ref.Name
		if ref.Resource == "executortasks" && e.Verb == "create" {
			creates[ref.Name]++
		}
		w := writers[obj]
		if len(w) == 0 || w[len(w)-1] != member {
			writers[obj] = append(w, member)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for obj, w := range writers {
		seen := map[string]bool{}
		for _, m := range w {
			if seen[m] {
				t.Errorf("%s was written by shards interleaved: %v", obj, w)
				break
			}
			seen[m] = true
		}
		if len(w) > 1 && strings.HasPrefix(obj, "runs/") {
			moved++
		}
	}
	var ets rsv1.ExecutorTaskList
	if err := k8s.List(context.Background(), &ets, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(ets.Items) != 2*360 {
		t.Errorf("%d ExecutorTasks, want 2 for each of 360 runs", len(ets.Items))
	}
	for _, et := range ets.Items {
		if n := creates[et.Name]; n != 1 && (n != 0 || unanswered[et.Name] == 0) {
			t.Errorf("ExecutorTask %s created %d times (and %d creates answered with a server error)", et.Name, n, unanswered[et.Name])
		}
	}
	t.Logf("audit: %d runs and executor tasks written by the shards, %d runs by two or more shards one after the other, %d executor tasks each created once",
		len(writers), moved, len(creates))
	if moved == 0 {
		t.Error("no run was written by two shards: the audit proves nothing about handovers")
	}
}

// leaderOf is the manager process of names that leads ring, from the processes' logs.
func leaderOf(t *testing.T, dir, ring string, names ...string) string {
	t.Helper()
	lock := fmt.Sprintf(`"lock":"%s/runservice-manager.runservice.dev"`, ring)
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, name := range names {
			b, err := os.ReadFile(filepath.Join(dir, name+".log"))
			if err != nil {
				t.Fatal(err)
			}
			for line := range strings.SplitSeq(string(b), "\n") {
				if strings.Contains(line, "Successfully acquired lease") && strings.Contains(line, lock) {
					return name
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no manager process says it leads")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func auditSize(t *testing.T) int64 {
	fi, err := os.Stat(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// createRuns creates n two-task runs named prefix-<i>, ten at a time.
func createRuns(t *testing.T, ns, prefix string, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 10)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := k8s.Create(context.Background(), twoTaskRun(ns, fmt.Sprintf("%s-%d", prefix, i))); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func labelsOf(t *testing.T, ns string) map[string]string {
	t.Helper()
	var runs rsv1.RunList
	if err := k8s.List(context.Background(), &runs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, r := range runs.Items {
		out[r.Name] = r.Labels[rsv1.LabelShard]
	}
	return out
}

func allFinished(ns string) bool {
	var runs rsv1.RunList
	if err := k8s.List(context.Background(), &runs, client.InNamespace(ns)); err != nil {
		return false
	}
	for _, r := range runs.Items {
		if r.Status.Phase != rsv1.RunPhaseFinished {
			return false
		}
	}
	return true
}
