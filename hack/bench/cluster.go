package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/testenv"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

// The cluster scenario's stack, the one issue 10 measured Argo Workflows v4.0.5 on: kube-scheduler
// binding the pods to 5 kwok nodes, pods Succeeded 500ms after Running, runs of a then b and c
// with one container each, the manager and three Kubernetes-driver executors as processes of their
// own with their default options.
const (
	clusterNodes     = 5
	clusterExecutors = 3
	clusterPool      = "kwok-cluster"
	clusterComplete  = 500 * time.Millisecond
	// runningStatusDelay is the executors' default --running-status-delay: a task whose container
	// runs longer costs a Running write.
	runningStatusDelay = time.Second
	// schedulerQPS is kube-scheduler's client rate here: its default (50) binds fewer pods a second
	// than the targets need, and would measure the scheduler instead of the run service.
	schedulerQPS = 500
)

// Argo Workflows' figures on this stack (issue 10), what the targets are set against.
const (
	argoRunsPerMin   = 700.0 // 690-710 workflows/min, 1,000 at once
	argoP99          = 67 * time.Second
	argoWritesPerPod = 8.1
)

// clusterBench is the cluster scenario: runs at once (each size of bursts), then a steady rate.
type clusterBench struct {
	env        *testenv.Env
	kube       kubernetes.Interface
	audit      auditLog
	suffix     string
	bursts     []int
	rate       float64
	steady     time.Duration
	submitters int
	// archiveAfter, when set, is the manager's --archive-after: phases then last until their runs
	// are archived.
	archiveAfter string
	// seen, when set, is shown every version of a phase's runs that the bench's watch sees.
	seen func(*rsv1.Run)
	// profile, when set, is the directory the CPU profiles of each phase and the heap profiles at
	// each profile's end are written to (-cluster-profile), of the profiled processes: the first
	// executor, the manager and the kube-apiserver.
	profile  string
	profiled []profileTarget
}

// clusterPhase is what one phase measured.
type clusterPhase struct {
	name        string
	runs        int
	elapsed     time.Duration // first create to last Finished
	submittedIn time.Duration
	latency     []time.Duration // create returned -> seen Finished, sorted
	writes      writeCounts
	usage       usage
	peaksReset  bool
	// archiveLag (seen Finished -> seen deleted from etcd, sorted) and archivedIn (first create to
	// the last run archived), when the manager archives.
	archiveLag []time.Duration
	archivedIn time.Duration
	// statusWrites is the runs' status writes per run by what each changed (statusWrites.perRun).
	statusWrites string
}

func (p *clusterPhase) tasks() int { return p.runs * len(benchTasks()) }

// clusterStack is the scenario's stack without the manager: kwok's nodes, kube-scheduler, the
// three executors, the control plane's processes (measured as components too) and the runs'
// namespace. The sharding scenario starts its managers on the same stack.
type clusterStack struct {
	pd   *procDir
	set  *procSet
	ns   string
	pool string // the kwok nodes' pool, the executors' pods' node selector
	sub  versioned.Interface
	kw   *testenv.Kwok
	// pprof is the address the first executor serves its profiles at ("": none).
	pprof string
}

// stop stops the stack's processes and kwok.
func (s *clusterStack) stop() {
	for _, p := range s.set.procs {
		p.stop(15 * time.Second)
	}
	if s.kw != nil {
		s.kw.Stop()
	}
}

// startClusterStack starts the stack but for the executors, which startExecutors starts once the
// manager runs (the order the scenario has always had). Its nodes are named after pool, which a
// later scenario of the same bench must not reuse: the nodes stay in the apiserver.
func startClusterStack(ctx context.Context, env *testenv.Env, kube kubernetes.Interface, pd *procDir, ns, pool string) (_ *clusterStack, err error) {
	s := &clusterStack{pd: pd, set: &procSet{}, ns: ns, pool: pool}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	if s.kw, err = env.StartKwokWith(ctx, filepath.Join(pd.dir, "kwok"), testenv.KwokOptions{
		Nodes: clusterNodes, NodePrefix: pool, Complete: clusterComplete,
	}); err != nil {
		return nil, err
	}
	for _, n := range s.kw.Nodes {
		if err := waitNodeReady(ctx, kube, n); err != nil {
			return nil, err
		}
		// The apiserver taints a new node not-ready; kube-controller-manager, which is not part of
		// this stack, would lift the taint once the node reports Ready.
		untaint := []byte(`{"spec":{"taints":null}}`)
		if _, err := kube.CoreV1().Nodes().Patch(ctx, n, types.MergePatchType, untaint, metav1.PatchOptions{}); err != nil {
			return nil, fmt.Errorf("lifting the not-ready taint of node %s: %w", n, err)
		}
	}
	sched, err := startScheduler(env.Root, pd.dir, pd.kubeconfig)
	if err != nil {
		return nil, err
	}
	s.set.procs = append(s.set.procs, sched)
	if kp := childProcs("kwok", "kwok"); len(kp) > 0 {
		s.set.procs = append(s.set.procs, kp...)
	}
	s.set.procs = append(s.set.procs, childProcs("apiserver", "kube-apiserver")...)
	s.set.procs = append(s.set.procs, childProcs("etcd", "etcd")...)
	if s.ns, err = newPodNamespace(ctx, kube, ns); err != nil {
		return nil, err
	}
	if s.sub, err = versioned.NewForConfig(env.Config); err != nil {
		return nil, err
	}
	return s, nil
}

// startExecutors starts the scenario's Kubernetes-driver executors and waits until they are ready;
// with profiles, the first serves Go's profiles at an address of its own (s.pprof).
func (s *clusterStack) startExecutors(ctx context.Context, profiles bool) error {
	for i := range clusterExecutors {
		var extra []string
		if profiles && i == 0 {
			port, err := freePort()
			if err != nil {
				return err
			}
			s.pprof = fmt.Sprintf("127.0.0.1:%d", port)
			extra = append(extra, "--pprof-bind-address", s.pprof)
		}
		ex, err := startClusterExecutor(s.pd.dir, s.pd.bins, s.pd.kubeconfig, s.ns, s.pool, i, extra...)
		if err != nil {
			return err
		}
		s.set.procs = append(s.set.procs, ex)
	}
	return waitExecutorsReady(ctx, s.sub, s.ns, clusterExecutors)
}

func (b *clusterBench) run(ctx context.Context, out io.Writer) (err error) {
	pd, err := newProcDir(b.env, "", "runservice-bench-cluster-")
	if err != nil {
		return err
	}
	defer pd.finish(&err)
	st, err := startClusterStack(ctx, b.env, b.kube, pd, "bench-cluster-"+b.suffix, clusterPool)
	if err != nil {
		return err
	}
	defer st.stop()
	set, sub, ns := st.set, st.sub, st.ns
	fmt.Fprintf(out, "\ncluster scenario: kube-scheduler (client %d QPS) binding pods to %d kwok nodes, pods Succeeded %s after Running; runs of %s, one container each; the manager and %d Kubernetes-driver executors as processes with their default options\n",
		schedulerQPS, clusterNodes, clusterComplete, runShape, clusterExecutors)

	rawN := 3 * slices.Max(b.bursts)
	fmt.Fprintf(os.Stderr, "  ... cluster: raw pods, %d from %d writers, bound by kube-scheduler\n", rawN, clusterExecutors)
	set.begin()
	raw, err := b.rawPods(ctx, ns, rawN)
	if err != nil {
		return err
	}
	rawUsage := set.end()
	raw.usage = &rawUsage
	fmt.Fprintf(out, "baseline: raw pod creates %.0f/s (%d pods, %d writers); bound, run and Succeeded at %.0f pods/s (the most this scheduler and kwok do); CPU per raw pod (created, bound, run, deleted): %s\n",
		raw.create.rate(), rawN, clusterExecutors, raw.lifeRate(), cpuPer(rawUsage, rawN))

	mgrPprof := ""
	if b.profile != "" {
		port, err := freePort()
		if err != nil {
			return err
		}
		mgrPprof = fmt.Sprintf("127.0.0.1:%d", port)
	}
	mgr, err := b.startManager(pd.dir, pd.bins, pd.kubeconfig, mgrPprof)
	if err != nil {
		return err
	}
	set.procs = append(set.procs, mgr)
	if err := st.startExecutors(ctx, b.profile != ""); err != nil {
		return err
	}
	if b.profile != "" {
		ex := pprofOver("executor", st.pprof)
		ex.proc = set.procs[len(set.procs)-clusterExecutors]
		b.profiled = []profileTarget{ex, pprofOver("manager", mgrPprof), apiserverProfiles(b.kube)}
	}
	if err := waitWebhook(ctx, sub, ns); err != nil {
		return err
	}

	var phases []*clusterPhase
	for i, n := range b.bursts {
		fmt.Fprintf(os.Stderr, "  ... cluster: %d runs at once\n", n)
		p, err := b.phase(ctx, set, sub, ns, fmt.Sprintf("%d runs at once", n), fmt.Sprintf("burst%d-", i), n, 0)
		if err != nil {
			return err
		}
		printPhase(out, p, raw)
		phases = append(phases, p)
	}
	if b.steady > 0 && b.rate > 0 {
		n := int(b.rate * b.steady.Seconds())
		fmt.Fprintf(os.Stderr, "  ... cluster: %g runs/s for %s\n", b.rate, b.steady)
		p, err := b.phase(ctx, set, sub, ns, fmt.Sprintf("steady %g runs/s for %s", b.rate, b.steady), "steady-", n, b.rate)
		if err != nil {
			return err
		}
		printPhase(out, p, raw)
		phases = append(phases, p)
	}
	printTargets(out, phases, b.rate)
	return nil
}

// phase submits runs (all at once, or at rate) and measures them until every run is Finished and
// every pod is gone.
func (b *clusterBench) phase(ctx context.Context, set *procSet, sub versioned.Interface, ns, name, prefix string, runs int, rate float64) (*clusterPhase, error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	t := newTracker(runs)
	causes := newStatusWrites()
	t.prefix, t.seen = prefix, func(run *rsv1.Run) {
		causes.see(run)
		if b.seen != nil {
			b.seen(run)
		}
	}
	if err := watchRuns(ctx, sub, ns, t, &wg); err != nil {
		return nil, err
	}
	// The audit log is written in batches of up to a second: what the last phase's tail wrote is
	// in it by now.
	time.Sleep(2 * time.Second)
	from, err := b.audit.offset()
	if err != nil {
		return nil, err
	}
	set.begin()
	start := time.Now()
	profiled := b.profileProcs(ctx, prefix, &wg)
	submitErr := make(chan error, 1)
	go func() {
		submitErr <- (&serviceBench{ns: ns, runs: runs, prefix: prefix, submitters: b.submitters, rate: rate}).submit(ctx, sub, benchTasks(), t)
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastReport := time.Now()
	for done := false; !done; {
		select {
		case <-t.done:
			done = true
		case err := <-submitErr:
			if err != nil {
				return nil, err
			}
			submitErr = nil
		case <-ctx.Done():
			n, _ := t.progress()
			return nil, withFailedTasks(ctx, sub, ns, fmt.Errorf("%d of %d runs finished: %w", n, runs, ctx.Err()))
		case <-tick.C:
			n, failed := t.progress()
			if failed != nil {
				return nil, withFailedTasks(ctx, sub, ns, failed)
			}
			if p := set.exited(); p != nil {
				return nil, fmt.Errorf("%s exited during the benchmark: %v", p.name, p.err)
			}
			if time.Since(lastReport) >= 10*time.Second {
				fmt.Fprintf(os.Stderr, "  ... cluster: %d/%d runs finished\n", n, runs)
				lastReport = time.Now()
			}
		}
	}
	end, lastCreated := t.last()
	if err := profiled(); err != nil {
		return nil, err
	}
	if err := waitNoPods(ctx, b.kube, ns); err != nil {
		return nil, err
	}
	if b.archiveAfter != "" {
		select {
		case <-t.archived:
		case <-ctx.Done():
			return nil, fmt.Errorf("%d of %d runs archived: %w", len(t.deletedR), runs, ctx.Err())
		}
	}
	p := &clusterPhase{name: name, runs: runs, elapsed: end.Sub(start), submittedIn: lastCreated.Sub(start), usage: set.end(), peaksReset: set.resets}
	t.mu.Lock()
	p.statusWrites = causes.perRun(runs)
	t.mu.Unlock()
	if b.archiveAfter != "" {
		t.mu.Lock()
		for run, gone := range t.deletedR {
			if fin, ok := t.finishedR[run]; ok {
				p.archiveLag = append(p.archiveLag, gone.Sub(fin))
			}
			p.archivedIn = max(p.archivedIn, gone.Sub(start))
		}
		t.mu.Unlock()
		p.archiveLag = sortedCopy(p.archiveLag)
	}
	time.Sleep(2 * time.Second)
	to, err := b.audit.offset()
	if err != nil {
		return nil, err
	}
	if p.writes, err = b.audit.between(from, to); err != nil {
		return nil, err
	}
	t.mu.Lock()
	for run, created := range t.created {
		if fin, ok := t.finishedR[run]; ok {
			p.latency = append(p.latency, fin.Sub(created))
		}
	}
	t.mu.Unlock()
	p.latency = sortedCopy(p.latency)
	return p, nil
}

// profileChunk is the length of each CPU profile of a phase: the profile in flight when the phase's
// last run finished is dropped, so a phase's profiles miss at most that much of its end.
const profileChunk = 10 * time.Second

// profileTarget is a process the cluster scenario profiles with -cluster-profile: get reads one of
// its profiles (a path under /debug/pprof/ with its query) into a file.
type profileTarget struct {
	name string
	get  func(ctx context.Context, path, file string) error
	// proc, when set, is the process: after each heap profile its memory is written beside it
	// (<target>-mem-<prefix><n>.txt: /proc's resident set by kind, Go's own accounts, goroutines),
	// to say what a peak resident set is made of.
	proc *proc
}

// pprofOver is a profileTarget serving Go's profiles over plain http at addr.
func pprofOver(name, addr string) profileTarget {
	return profileTarget{name: name, get: func(ctx context.Context, path, file string) error {
		return saveProfile(ctx, "http://"+addr+"/debug/pprof/"+path, file)
	}}
}

// apiserverProfiles is the kube-apiserver as a profileTarget: it serves /debug/pprof/ to the
// bench's administrator credentials.
func apiserverProfiles(kube kubernetes.Interface) profileTarget {
	return profileTarget{name: "apiserver", get: func(ctx context.Context, path, file string) error {
		p, q, _ := strings.Cut(path, "?")
		req := kube.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/" + p)
		if q != "" {
			vals, err := url.ParseQuery(q)
			if err != nil {
				return err
			}
			for k, v := range vals {
				req = req.Param(k, v[0])
			}
		}
		body, err := req.DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("reading the apiserver's profile %s: %w", path, err)
		}
		return os.WriteFile(file, body, 0o644)
	}}
}

// memSnapshot writes what t's process holds now: its resident set by kind (/proc/<pid>/status),
// the Go runtime's accounts (the heap profile's runtime.MemStats: heap in use, idle and released,
// goroutine stacks) and its goroutines.
func (t profileTarget) memSnapshot(ctx context.Context, file string) error {
	var b strings.Builder
	for _, f := range []string{"VmRSS:", "VmHWM:", "RssAnon:", "RssFile:", "RssShmem:"} {
		fmt.Fprintf(&b, "%s %d kB\n", f, t.proc.status(f)>>10)
	}
	tmp := file + ".tmp"
	defer os.Remove(tmp)
	for _, path := range []string{"heap?debug=1", "goroutine?debug=1"} {
		if err := t.get(ctx, path, tmp); err != nil {
			return err
		}
		body, err := os.ReadFile(tmp)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(line, "# ") && !strings.HasPrefix(line, "# 0x") || strings.HasPrefix(line, "goroutine profile:") {
				b.WriteString(line + "\n")
			}
		}
	}
	return os.WriteFile(file, []byte(b.String()), 0o644)
}

// profileProcs writes CPU profiles of each target into b.profile, one per profileChunk
// (<target>-cpu-<prefix><n>.pprof; `go tool pprof -top bin/executor executor-cpu-burst1-*` merges a
// phase's) with its heap profile at the end of each (<target>-heap-<prefix><n>.pprof: the largest is
// near the peak of tasks in flight), until the func it returns is called, which drops the chunks in
// flight. Without -cluster-profile it does nothing.
func (b *clusterBench) profileProcs(ctx context.Context, prefix string, wg *sync.WaitGroup) func() error {
	if b.profile == "" {
		return func() error { return nil }
	}
	if err := os.MkdirAll(b.profile, 0o755); err != nil {
		return func() error { return err }
	}
	pctx, stop := context.WithCancel(ctx)
	errc := make(chan error, len(b.profiled))
	for _, t := range b.profiled {
		wg.Go(func() {
			for i := 0; ; i++ {
				file := func(kind string) string {
					return filepath.Join(b.profile, fmt.Sprintf("%s-%s-%s%d.pprof", t.name, kind, prefix, i))
				}
				err := t.get(pctx, fmt.Sprintf("profile?seconds=%d", int(profileChunk.Seconds())), file("cpu"))
				if pctx.Err() != nil {
					_ = os.Remove(file("cpu"))
					errc <- nil
					return
				}
				if err == nil {
					err = t.get(pctx, "heap", file("heap"))
				}
				if err == nil && t.proc != nil {
					err = t.memSnapshot(pctx, strings.TrimSuffix(file("mem"), ".pprof")+".txt")
				}
				if err != nil && pctx.Err() == nil {
					errc <- fmt.Errorf("profiling %s: %w", t.name, err)
					return
				}
			}
		})
	}
	return func() error {
		stop()
		var errs []error
		for range b.profiled {
			errs = append(errs, <-errc)
		}
		return errors.Join(errs...)
	}
}

// buildBinaries builds the manager and the executor as `make build` would, into dir.
func buildBinaries(root, dir string) (string, error) {
	bins := filepath.Join(dir, "bin")
	cmd := exec.Command("go", "build", "-o", bins+"/", "./cmd/manager", "./cmd/executor")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the manager and the executor: %v: %s", err, out)
	}
	return bins, nil
}

// startScheduler starts kube-scheduler (built by hack/node/node.sh) with its client rate raised.
func startScheduler(root, dir, kubeconfig string) (*proc, error) {
	out, err := exec.Command(filepath.Join(root, "hack", "node", "node.sh"), "build").Output()
	if err != nil {
		return nil, fmt.Errorf("finding kube-scheduler with hack/node/node.sh build: %w", err)
	}
	bin := filepath.Join(strings.TrimSpace(string(out)), "bin", "kube-scheduler")
	cfg := filepath.Join(dir, "scheduler.yaml")
	conf := fmt.Sprintf(`apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: %q, qps: %d, burst: %d}
leaderElection: {leaderElect: false}
`, kubeconfig, schedulerQPS, 2*schedulerQPS)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return startProc(dir, "scheduler", "kube-scheduler", nil, bin, "--config", cfg, "--secure-port", "0")
}

// startManager starts the scenario's manager; with pprof, it serves Go's profiles there.
func (b *clusterBench) startManager(dir, bins, kubeconfig, pprof string) (*proc, error) {
	var args []string
	if pprof != "" {
		args = append(args, "--pprof-bind-address", pprof)
	}
	if b.archiveAfter != "" {
		args = append(args, "--archive-after", b.archiveAfter)
	}
	return startManagerProc(b.env, dir, bins, kubeconfig, "file://"+filepath.Join(dir, "store"), nil, args...)
}

// startManagerProc starts the manager binary of bins with its default options but for the webhook
// (served where the control plane calls it), the object store at storeURL (a file:// one under dir is
// created), its archive index under dir, the fetcher's leave to dial executors on loopback over http,
// unsharded (--shards off; the sharding scenario gives --shards auto and the ring's namespace),
// procEnv added to its environment and args to its flags (a flag given again there wins); its log
// goes to dir/manager.log.
func startManagerProc(env *testenv.Env, dir, bins, kubeconfig, storeURL string, procEnv []string, args ...string) (*proc, error) {
	return startNamedManagerProc(env, dir, "manager", bins, kubeconfig, storeURL, procEnv, args...)
}

// startNamedManagerProc is startManagerProc for a process named name (its log is dir/name.log).
func startNamedManagerProc(env *testenv.Env, dir, name, bins, kubeconfig, storeURL string, procEnv []string, args ...string) (*proc, error) {
	if path, ok := strings.CutPrefix(storeURL, "file://"); ok {
		if err := os.MkdirAll(path, 0o755); err != nil {
			return nil, err
		}
	}
	w := env.WebhookInstallOptions
	args = append([]string{"--metrics-bind-address", "0", "--health-probe-bind-address", "0",
		"--webhook-port", strconv.Itoa(w.LocalServingPort), "--webhook-cert-dir", w.LocalServingCertDir,
		"--object-store", storeURL, "--archive-index-dir", filepath.Join(dir, "archive-index"),
		"--executor-insecure-http", "--executor-endpoint-allow", "loopback",
		// One unsharded manager, as the figures before sharding were measured.
		"--shards", "off"}, args...)
	procEnv = append([]string{"KUBECONFIG=" + kubeconfig}, procEnv...)
	return startProc(dir, "manager", name, procEnv, filepath.Join(bins, "manager"), args...)
}

func startClusterExecutor(dir, bins, kubeconfig, ns, pool string, i int, extra ...string) (*proc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("bench-cluster-%d", i)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := append([]string{"--driver", string(rsv1.DriverKubernetes), "--namespace", ns, "--group", "bench", "--name", name,
		"--listen", addr, "--endpoint", "http://" + addr, "--insecure-http",
		"--data-dir", filepath.Join(dir, name), "--object-store=",
		"--toolbox-image", kwokToolboxImage, "--pod-node-selector", testenv.KwokPoolLabel + "=" + pool}, extra...)
	return startProc(dir, "executors", name, []string{"KUBECONFIG=" + kubeconfig}, filepath.Join(bins, "executor"), args...)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitWebhook waits until the manager's webhook admits a run (a dry run creates nothing).
func waitWebhook(ctx context.Context, c versioned.Interface, ns string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	probe := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: ns}, Spec: rsv1.RunSpec{Tasks: benchTasks()}}
	for {
		_, err := c.RunserviceV1alpha1().Runs(ns).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the manager's webhook (last error %v): %w", err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitNoPods waits until the namespace has no pods left.
func waitNoPods(ctx context.Context, kube kubernetes.Interface, ns string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		list, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err == nil && len(list.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			n := -1
			if list != nil {
				n = len(list.Items)
			}
			return fmt.Errorf("waiting for the pods to be gone (%d left): %w", n, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// rawPods creates n pods of the driver's shape, unbound, from one client per executor, and times
// the creates; then waits until kube-scheduler bound them and kwok took them to Succeeded; then
// removes them.
func (b *clusterBench) rawPods(ctx context.Context, ns string, n int) (*rawResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var succeeded atomic.Int64
	factory := informers.NewSharedInformerFactoryWithOptions(b.kube, 0, informers.WithNamespace(ns))
	inf := factory.Core().V1().Pods().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(old, obj any) {
			o, p := old.(*corev1.Pod), obj.(*corev1.Pod)
			if o.Status.Phase != corev1.PodSucceeded && p.Status.Phase == corev1.PodSucceeded {
				succeeded.Add(1)
			}
		},
	}); err != nil {
		return nil, err
	}
	factory.Start(ctx.Done())
	defer func() {
		cancel()
		factory.Shutdown() // waits for the informer, which stops with ctx
	}()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, errors.New("the watch on pods did not sync")
	}
	var next atomic.Int64
	errs := make(chan error, clusterExecutors)
	start := time.Now()
	var wg sync.WaitGroup
	for range clusterExecutors {
		c, err := kubernetes.NewForConfig(b.env.Config)
		if err != nil {
			return nil, err
		}
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				pod := rawPod(ns, "", i)
				pod.Spec.NodeSelector = map[string]string{testenv.KwokPoolLabel: clusterPool}
				if _, err := c.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("raw: creating pod %s: %w", pod.Name, err)
					return
				}
			}
		})
	}
	wg.Wait()
	created := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	deadline := time.After(5 * time.Minute)
	for succeeded.Load() < int64(n) {
		select {
		case <-deadline:
			return nil, fmt.Errorf("raw pods: %d of %d Succeeded within 5 minutes", succeeded.Load(), n)
		case <-time.After(50 * time.Millisecond):
		}
	}
	res := &rawResult{create: &baselineResult{objects: n, elapsed: created}, lifeElapsed: time.Since(start)}
	return res, removePods(ctx, b.kube, ns)
}

// cpuPer is each component's CPU per one of n objects.
func cpuPer(u usage, n int) string {
	var parts []string
	for _, c := range clusterComponents {
		if d, ok := u.cpu[c]; ok {
			parts = append(parts, fmt.Sprintf("%s %.1fms", c, float64(d.Microseconds())/1000/float64(n)))
		}
	}
	return strings.Join(parts, ", ")
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// clusterComponents in the order they are printed.
var clusterComponents = []string{"manager", "executors", "scheduler", "kwok", "submitter", "apiserver", "etcd"}

func printPhase(out io.Writer, p *clusterPhase, raw *rawResult) {
	tasks := p.tasks()
	secs := p.elapsed.Seconds()
	fmt.Fprintf(out, "%s: %d runs (%d tasks) in %.1fs = %.0f runs/min; create->finish p50 %.2fs p99 %.2fs max %.2fs; the last create returned at %.1fs\n",
		p.name, p.runs, tasks, secs, float64(p.runs)/secs*60,
		percentile(p.latency, 0.5).Seconds(), percentile(p.latency, 0.99).Seconds(), percentile(p.latency, 1).Seconds(), p.submittedIn.Seconds())
	if p.archiveLag != nil {
		fmt.Fprintf(out, "  archived (the manager's --archive-after and the fetches included): finished -> gone from etcd p50 %.2fs p99 %.2fs max %.2fs; all %d archived %.1fs after the first create = %.0f runs/min (finished at %.0f runs/min)\n",
			percentile(p.archiveLag, 0.5).Seconds(), percentile(p.archiveLag, 0.99).Seconds(), percentile(p.archiveLag, 1).Seconds(),
			p.runs, p.archivedIn.Seconds(), float64(p.runs)/p.archivedIn.Seconds()*60, float64(p.runs)/secs*60)
	}
	fmt.Fprintf(out, "  ratio: %.1f tasks/s / raw pod creates %.0f/s = %.3f; / raw pods Succeeded %.0f/s = %.3f\n",
		float64(tasks)/secs, raw.create.rate(), float64(tasks)/secs/raw.create.rate(), raw.lifeRate(), float64(tasks)/secs/raw.lifeRate())
	per := func(n int) float64 { return float64(n) / float64(tasks) }
	var parts []string
	for _, c := range sortedKeys(p.writes.writes) {
		s := fmt.Sprintf("%s %.2f", c, per(p.writes.total(c)))
		if n := p.writes.conflicts[c]; n > 0 {
			s += fmt.Sprintf(" (%d conflicts)", n)
		}
		parts = append(parts, s)
	}
	fmt.Fprintf(out, "  apiserver writes per task: manager+executors %.2f, total %.2f: %s\n",
		per(p.writes.total("manager", "executors")), per(p.writes.all()), strings.Join(parts, ", "))
	for _, c := range sortedKeys(p.writes.writes) {
		fmt.Fprintf(out, "    %s: %s\n", c, p.writes.breakdown(c, tasks))
	}
	fmt.Fprintf(out, "  run status writes per run (as the bench's watch saw them), by what each changed: %s\n", p.statusWrites)
	for _, c := range sortedKeys(p.writes.reads) {
		fmt.Fprintf(out, "  %s reads per task: %s\n", c, perTask(p.writes.reads[c], tasks))
	}
	if r := p.writes.podRun; len(r) > 0 {
		longer := len(r) - sort.Search(len(r), func(i int) bool { return r[i] > runningStatusDelay })
		fmt.Fprintf(out, "  task pods' run (kwok's Running -> Succeeded status patches, %s asked): p10 %.1fs p50 %.1fs p90 %.1fs; %.0f%% longer than the executors' --running-status-delay (%s), each a Running write\n",
			clusterComplete, percentile(r, 0.1).Seconds(), percentile(r, 0.5).Seconds(), percentile(r, 0.9).Seconds(),
			100*float64(longer)/float64(len(r)), runningStatusDelay)
	}
	fmt.Fprintf(out, "  CPU per run: %s\n", cpuPer(p.usage, p.runs))
	if raw.usage != nil {
		// What a run costs beyond its pods: the same pods, raw, cost this much each.
		pods := len(benchTasks())
		parts = parts[:0]
		for _, c := range clusterComponents {
			d, ok := p.usage.cpu[c]
			r, rok := raw.usage.cpu[c]
			if !ok || !rok {
				continue
			}
			perRun := float64(d.Milliseconds()) / float64(p.runs)
			rawPer := float64(r.Milliseconds()) * float64(pods) / float64(raw.create.objects)
			parts = append(parts, fmt.Sprintf("%s %.1fms (%.1fx)", c, perRun-rawPer, perRun/rawPer))
		}
		fmt.Fprintf(out, "  CPU per run beyond its %d pods' (raw pods' CPU as the baseline; the ratio: a run's CPU / its pods' raw): %s\n", pods, strings.Join(parts, ", "))
	}
	parts = parts[:0]
	for _, c := range clusterComponents {
		if b, ok := p.usage.peak[c]; ok && b > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", c, mib(b)))
		}
	}
	since := "over the phase"
	if !p.peaksReset {
		since = "since the process started (clear_refs refused)"
	}
	fmt.Fprintf(out, "  peak RSS %s (the largest process of each): %s\n", since, strings.Join(parts, ", "))
}

// printTargets compares the phases with issue 10's targets.
func printTargets(out io.Writer, phases []*clusterPhase, rate float64) {
	verdict := metOrMissed
	fmt.Fprintln(out, "targets (issue 10):")
	var bursts []*clusterPhase
	for _, p := range phases {
		if strings.Contains(p.name, "at once") {
			bursts = append(bursts, p)
		}
	}
	for _, p := range bursts {
		if p.runs != 1000 {
			continue
		}
		rpm := float64(p.runs) / p.elapsed.Seconds() * 60
		p99 := percentile(p.latency, 0.99)
		fmt.Fprintf(out, "  1,000 runs at once: %.0f runs/min, %.2fx Argo's %.0f (target >= 2x): %s; p99 %.1fs vs Argo's %.0fs: %s\n",
			rpm, rpm/argoRunsPerMin, argoRunsPerMin, verdict(rpm >= 2*argoRunsPerMin), p99.Seconds(), argoP99.Seconds(), verdict(p99 < argoP99))
	}
	for _, p := range phases {
		own := float64(p.writes.total("manager", "executors")) / float64(p.tasks())
		all := float64(p.writes.all()-p.writes.total("submitter")) / float64(p.tasks())
		fmt.Fprintf(out, "  %s: manager+executors %.2f writes/task (target <= 4.5): %s; all but the run creates %.2f (target < Argo's %.1f): %s\n",
			p.name, own, verdict(own <= 4.5), all, argoWritesPerPod, verdict(all < argoWritesPerPod))
	}
	if len(bursts) > 1 {
		lo, hi := bursts[0], bursts[len(bursts)-1]
		var parts []string
		flat := true
		for _, c := range clusterComponents {
			a, b := lo.usage.cpu[c], hi.usage.cpu[c]
			if a == 0 || c == "submitter" {
				continue
			}
			r := (float64(b) / float64(hi.tasks())) / (float64(a) / float64(lo.tasks()))
			flat = flat && (c != "manager" && c != "executors" || r <= 1.2)
			parts = append(parts, fmt.Sprintf("%s %.2fx", c, r))
		}
		fmt.Fprintf(out, "  CPU per task at %d vs %d runs: %s (target <= 1.2x for the manager and executors): %s\n",
			hi.runs, lo.runs, strings.Join(parts, ", "), verdict(flat))
	}
	for _, p := range phases {
		if strings.HasPrefix(p.name, "steady") {
			p99 := percentile(p.latency, 0.99)
			fmt.Fprintf(out, "  steady %g runs/s: p99 %.2fs (target < 3s): %s\n", rate, p99.Seconds(), verdict(p99 < 3*time.Second))
		}
	}
	for _, p := range bursts {
		if p.runs == 1000 {
			fmt.Fprintf(out, "  executors' peak RSS at 1,000 runs: %s (target < 100 MiB): %s\n", mib(p.usage.peak["executors"]), verdict(p.usage.peak["executors"] < 100<<20))
		}
	}
}
