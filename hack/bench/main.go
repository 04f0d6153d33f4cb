// Command bench is `make bench`: it boots the local control plane, starts the manager in-process with
// its default options, and measures it against the raw rate of the same apiserver:
//
//   - baseline: ExecutorTask create + status update, with the executors' concurrency;
//   - service: runs of three tasks driven to Finished by fake executors that play a fast executor
//     through the API (Executor + Lease, a watch on their ExecutorTasks, Running then Success);
//   - kwok (-kwok): three Kubernetes-driver executors of one group, in this process, run fan-out
//     runs as pods on a node kwok simulates, against the raw pod create rate of the same apiserver;
//   - docker (-docker): a Docker executor's per-task overhead against raw containers, and fan-out runs/s;
//   - node (-node, as root): the Kubernetes driver on the real node of hack/node against bare pods;
//   - soak (-soak): issue 9's archive soak, the manager a process archiving at once, many runs;
//   - archive (-archive): 1M archived runs in each object store, queried by index and through the API;
//   - shards (-shards 1,2,3): issue 12's sharding, the cluster scenario's stack with 1, 2, 3 manager
//     replicas under the same load: per replica its cache, RSS, CPU and share of the runs;
//   - live (-live): issue 10's manager memory with 10,000 live runs, against the apiserver's;
//
// and prints throughput, scheduling latency and API writes per task, by writer.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/testenv"
)

type config struct {
	runs        int
	executors   int
	concurrency int
	submitters  int
	rate        float64
	baselineN   int
	quick       bool
	timeout     time.Duration
	verbose     bool
	profile     string
	docker      bool
	dockerTasks int
	kwok        bool
	kwokRuns    int
	node        bool
	service     bool
	cluster     bool
	// clusterProfile is where the cluster scenario writes an executor's profiles ("": none).
	clusterProfile string
	bursts         string
	archiveAfter   string
	burstSizes     []int
	steadyRate     float64
	steady         time.Duration
	reads          bool
	soak           soakConfig
	live           liveConfig
	archive        archiveBench
	archiveOn      bool
	archiveStore   string
	shards         string
	shardCounts    []int
	shardRuns      int
}

func main() {
	var c config
	flag.IntVar(&c.runs, "runs", 200, "runs to submit (3 tasks each)")
	flag.IntVar(&c.executors, "executors", 2, "fake executors, each with its own client, connection and watch")
	flag.IntVar(&c.concurrency, "concurrency", 1, "goroutines per executor writing task statuses; the baseline uses executors x concurrency writers")
	flag.IntVar(&c.submitters, "submitters", 4, "goroutines creating runs")
	flag.Float64Var(&c.rate, "rate", 0, "runs submitted per second; 0 submits them all at once")
	flag.IntVar(&c.baselineN, "baseline-objects", 0, "ExecutorTasks the baseline writes; 0 means as many as the service's tasks (at least 200)")
	flag.BoolVar(&c.quick, "quick", false, "smoke run: 20 runs unless -runs is given")
	flag.DurationVar(&c.timeout, "timeout", 45*time.Minute, "bound on the whole benchmark")
	flag.BoolVar(&c.verbose, "v", false, "show the manager's log (errors and up)")
	flag.StringVar(&c.profile, "profile", "", "write CPU, mutex and block profiles of the service benchmark (manager included) into this directory")
	flag.BoolVar(&c.docker, "docker", true, "also measure the Docker executor against raw containers (needs a Docker daemon)")
	flag.IntVar(&c.dockerTasks, "docker-tasks", 20, "one-step tasks timed through the Docker executor, and raw containers timed")
	flag.BoolVar(&c.kwok, "kwok", true, "also measure the Kubernetes driver: 3 executors in this process, pods on a node kwok simulates, against the raw pod create rate")
	flag.BoolVar(&c.node, "node", true, "also measure the Kubernetes driver on a real single-node Kubernetes (hack/node; needs root) against bare pods")
	flag.IntVar(&c.kwokRuns, "kwok-runs", 50, "runs of 10 parallel tasks through the Kubernetes-driver executors (10 with -quick)")
	flag.BoolVar(&c.service, "service", true, "measure the manager against fake executors and the raw ExecutorTask write rate")
	flag.BoolVar(&c.cluster, "cluster", true, "the cluster scenario of issue 10: kube-scheduler, 5 kwok nodes, the manager and 3 executors as processes; runs at once, then a steady rate")
	flag.StringVar(&c.bursts, "cluster-runs", "1000", "cluster scenario: runs submitted at once, a comma-separated list of sizes measured one after the other (e.g. 300,1000,3000 for CPU per task by load); 100 with -quick")
	flag.Float64Var(&c.steadyRate, "cluster-rate", 20, "cluster scenario: runs per second of the steady phase (5 with -quick)")
	flag.StringVar(&c.clusterProfile, "cluster-profile", "", "cluster scenario: write the CPU profiles of each phase of the first executor, the manager and the kube-apiserver (10s each: <process>-cpu-<phase><n>.pprof, merged by go tool pprof) and their heap profiles after each into this directory")
	flag.BoolVar(&c.reads, "cluster-reads", false, "cluster scenario: also count the reads (get, list) per task by component, from the audit log (which then costs the apiserver more)")
	flag.StringVar(&c.archiveAfter, "cluster-archive-after", "", "cluster scenario: the manager's --archive-after (e.g. 0s): each phase then lasts until its runs are archived, and reports the archive lag (finished -> gone from etcd) and the writes with the archive's; default: the manager's (10m), so nothing is archived during the scenario")
	flag.DurationVar(&c.steady, "cluster-steady", 2*time.Minute, "cluster scenario: how long the steady phase submits; 0 skips it (20s with -quick)")
	flag.StringVar(&c.shards, "shards", "", "issue 12's sharding scenario: the cluster scenario's stack with each of these counts of manager replicas (e.g. 1,2,3; the first is the baseline), the same runs at once for each; off when empty")
	flag.IntVar(&c.shardRuns, "shard-runs", 300, "sharding scenario: runs submitted at once for each count of replicas (12 with -quick)")
	c.soak.flags()
	c.live.flags()
	flag.BoolVar(&c.archiveOn, "archive", false, "issue 9's archive scenario: runs archived into each object store through the archiver's writer, the cold index rebuild, pages and counts by change group from the index and through the aggregated API, a kubectl scan's peak memory")
	flag.IntVar(&c.archive.runs, "archive-runs", 1_000_000, "archive scenario: archived runs generated per store")
	flag.StringVar(&c.archiveStore, "archive-stores", "file,s3", "archive scenario: the object stores measured, one after the other (file, s3: versitygw)")
	flag.IntVar(&c.archive.groups, "archive-groups", 10_000, "archive scenario: change groups, of Zipf-distributed sizes")
	flag.IntVar(&c.archive.hours, "archive-hours", 168, "archive scenario: the hours the runs were archived over")
	flag.IntVar(&c.archive.writers, "archive-writers", 32, "archive scenario: goroutines writing documents and segments, and the baseline's PUTs")
	flag.IntVar(&c.archive.samples, "archive-samples", 400, "archive scenario: timed queries of each kind per store and way")
	flag.BoolVar(&c.archive.scan, "archive-scan", true, "archive scenario: scan every archived run with kubectl get --chunk-size=500 on the first store, with the manager's and kubectl's peak memory")
	flag.StringVar(&c.archive.keep, "archive-keep", "", "archive scenario: keep the stores and indexes under this directory (default: deleted)")
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.quick && !set["runs"] {
		c.runs = 20
	}
	if c.quick && !set["kwok-runs"] {
		c.kwokRuns = 10
	}
	if c.quick && !set["cluster-runs"] {
		c.bursts = "100"
	}
	if c.quick && !set["cluster-rate"] {
		c.steadyRate = 5
	}
	if c.quick && !set["cluster-steady"] {
		c.steady = 20 * time.Second
	}
	if c.quick && !set["shard-runs"] {
		c.shardRuns = 12
	}
	if c.quick && !set["live-runs"] {
		c.live.runs = 200
	}
	if c.baselineN == 0 {
		c.baselineN = max(200, 3*c.runs)
	}
	if c.runs < 1 || c.executors < 1 || c.concurrency < 1 || c.submitters < 1 || c.rate < 0 || c.baselineN < 1 || c.kwokRuns < 1 {
		fmt.Fprintln(os.Stderr, "bench: -runs, -executors, -concurrency, -submitters, -baseline-objects and -kwok-runs must be positive, -rate not negative")
		os.Exit(2)
	}
	c.archive.stores = strings.Split(c.archiveStore, ",")
	if c.archive.runs < 1 || c.archive.groups < 1 || c.archive.groups > 1<<16 || c.archive.hours < 1 || c.archive.writers < 1 || c.archive.samples < 1 {
		fmt.Fprintln(os.Stderr, "bench: -archive-runs, -archive-hours, -archive-writers and -archive-samples must be positive, -archive-groups between 1 and 65536")
		os.Exit(2)
	}
	var err error
	if c.burstSizes, err = parseSizes(c.bursts); err != nil {
		fmt.Fprintln(os.Stderr, "bench: -cluster-runs:", err)
		os.Exit(2)
	}
	if c.shards != "" {
		if c.shardCounts, err = parseSizes(c.shards); err != nil {
			fmt.Fprintln(os.Stderr, "bench: -shards:", err)
			os.Exit(2)
		}
	}
	if c.shardRuns < 1 {
		fmt.Fprintln(os.Stderr, "bench: -shard-runs must be positive")
		os.Exit(2)
	}
	if err := c.live.check(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := run(c, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench: FAILED:", err)
		if !c.verbose {
			fmt.Fprintln(os.Stderr, "bench: rerun with -v to see the manager's log")
		}
		os.Exit(1)
	}
}

func run(c config, out io.Writer) (err error) {
	level := zapcore.FatalLevel
	if c.verbose {
		level = zapcore.ErrorLevel
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(level)))

	timedOut := fmt.Errorf("the benchmark took longer than -timeout %s", c.timeout)
	// Interrupted, the benchmark stops what it started: its processes, kwok, the control plane.
	sigCtx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	ctx, cancel := context.WithTimeoutCause(sigCtx, c.timeout, timedOut)
	defer cancel()
	defer func() {
		if err != nil && errors.Is(context.Cause(ctx), timedOut) && !errors.Is(err, timedOut) {
			err = fmt.Errorf("%w: %w", timedOut, err)
		}
	}()

	bootStart := time.Now()
	var envOpts []testenv.Option
	var audit auditLog
	if c.cluster || len(c.shardCounts) > 0 {
		dir, err := os.MkdirTemp("", "runservice-bench-audit-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		audit = auditLog{path: filepath.Join(dir, "audit.log")}
		envOpts = append(envOpts, testenv.WithAuditLog(audit.path))
		if c.reads {
			envOpts = append(envOpts, testenv.WithAuditedReads())
		}
	}
	env, err := testenv.Start(envOpts...)
	if err != nil {
		return err
	}
	defer func() {
		if serr := env.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("stopping the control plane: %w", serr)
		}
	}()
	fmt.Fprintf(out, "control plane: %s, up in %.1fs; clients at %g QPS (envtest's default)\n",
		env.Config.Host, time.Since(bootStart).Seconds(), env.Config.QPS)

	mgrReq := newRequests()
	mgr, err := startManager(ctx, env, mgrReq)
	if err != nil {
		return err
	}
	defer func() {
		if merr := mgr.stop(); merr != nil && err == nil {
			err = merr
		}
	}()
	fmt.Fprintf(out, "manager: in-process, default options (%d executors x %d status writers, %d run submitters)\n",
		c.executors, c.concurrency, c.submitters)

	kube, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	suffix := time.Now().Format("150405")

	if c.service {
		if err := runService(ctx, c, env, kube, suffix, mgrReq, mgr, out); err != nil {
			return err
		}
	}
	if c.kwok {
		if err := (&kwokBench{
			env: env, kube: kube, suffix: suffix, runs: c.kwokRuns, submitters: c.submitters,
			managerReq: mgrReq, managerExited: mgr.exited,
		}).run(ctx, out); err != nil {
			return fmt.Errorf("kwok benchmark: %w", err)
		}
	}
	if c.docker {
		dns, err := newNamespace(ctx, kube, "bench-docker-"+suffix)
		if err != nil {
			return err
		}
		fanRuns := 5
		if c.quick {
			fanRuns = 2
		}
		if err := (&dockerBench{env: env, ns: dns, tasks: c.dockerTasks, fanRuns: fanRuns}).run(ctx, out); err != nil {
			return fmt.Errorf("docker benchmark: %w", err)
		}
	}
	if c.node {
		nns, err := newNamespace(ctx, kube, "bench-node-"+suffix)
		if err != nil {
			return err
		}
		if err := (&nodeBench{env: env, ns: nns, tasks: c.dockerTasks}).run(ctx, out); err != nil {
			return fmt.Errorf("real-node benchmark: %w", err)
		}
	}
	if c.soak.on {
		// The soak runs its own manager, as a process: this one stops first.
		if err := mgr.stop(); err != nil {
			return err
		}
		if err := c.soak.bench(env, kube, suffix).run(ctx, out); err != nil {
			return fmt.Errorf("soak: %w", err)
		}
	}
	if c.cluster {
		// The scenario runs its own manager, as a process: this one stops first.
		if err := mgr.stop(); err != nil {
			return err
		}
		if err := (&clusterBench{
			env: env, kube: kube, audit: audit, suffix: suffix, bursts: c.burstSizes,
			rate: c.steadyRate, steady: c.steady, submitters: c.submitters, archiveAfter: c.archiveAfter,
			profile: c.clusterProfile,
		}).run(ctx, out); err != nil {
			return fmt.Errorf("cluster scenario: %w", err)
		}
	}
	if len(c.shardCounts) > 0 {
		// The scenario runs its own managers, as processes: this one stops first.
		if err := mgr.stop(); err != nil {
			return err
		}
		if err := (&shardBench{
			env: env, kube: kube, audit: audit, suffix: suffix, counts: c.shardCounts, runs: c.shardRuns, submitters: c.submitters,
		}).run(ctx, out); err != nil {
			return fmt.Errorf("sharding scenario: %w", err)
		}
	}
	if c.archiveOn {
		// The scenario runs its own manager, as a process: this one stops first.
		if err := mgr.stop(); err != nil {
			return err
		}
		c.archive.env = env
		if err := c.archive.run(ctx, out); err != nil {
			return fmt.Errorf("archive scenario: %w", err)
		}
	}
	if c.live.on {
		// Last: its runs stay live, held by executors that stop with it. It runs its own manager,
		// as a process: this one stops first.
		if err := mgr.stop(); err != nil {
			return err
		}
		if err := c.live.bench(env, kube, suffix).run(ctx, out); err != nil {
			return fmt.Errorf("live scenario: %w", err)
		}
	}
	return nil
}

// parseSizes parses a comma-separated list of positive numbers.
func parseSizes(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a list of positive numbers", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// runService is the service section: the manager against fake executors, between two baselines.
func runService(ctx context.Context, c config, env *testenv.Env, kube kubernetes.Interface, suffix string, mgrReq *requests, mgr *runningManager, out io.Writer) error {
	// The baseline runs before and after the service, in a namespace of its own: the pair shows how
	// much the machine drifted meanwhile (other processes, a growing etcd).
	baseNS, err := newNamespace(ctx, kube, "bench-baseline-"+suffix)
	if err != nil {
		return err
	}
	baseline := func(when string) (*baselineResult, error) {
		fmt.Fprintf(os.Stderr, "  ... baseline %s the service\n", when)
		return (&baselineBench{
			base: env.Config, ns: baseNS, prefix: "baseline-" + when, objects: c.baselineN, clients: c.executors, workers: c.concurrency,
		}).run(ctx)
	}
	before, err := baseline("before")
	if err != nil {
		return err
	}

	ns, err := newNamespace(ctx, kube, "bench-"+suffix)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  ... service: %d runs\n", c.runs)
	prof, err := startProfile(c.profile)
	if err != nil {
		return err
	}
	svc, err := (&serviceBench{
		base: env.Config, ns: ns, runs: c.runs, executors: c.executors, workers: c.concurrency,
		submitters: c.submitters, rate: c.rate, managerReq: mgrReq, managerExited: mgr.exited,
	}).run(ctx)
	if perr := prof.stop(); perr != nil && err == nil {
		err = perr
	}
	if err != nil {
		return err
	}
	after, err := baseline("after")
	if err != nil {
		return err
	}
	printService(out, c, svc, before, after)
	return nil
}

// runningManager is the manager started in this process.
type runningManager struct {
	cancel context.CancelFunc
	exited chan struct{} // closed when the manager's Start returned
	err    error         // what Start returned, once exited is closed
}

// stop stops the manager and returns what made it stop early, if it did.
func (m *runningManager) stop() error {
	select {
	case <-m.exited:
		if m.err != nil {
			return fmt.Errorf("the manager stopped: %w", m.err)
		}
		return nil
	default:
	}
	m.cancel()
	<-m.exited
	return nil
}

// startManager starts the manager as `cmd/manager` would, with every request it sends counted in reqs.
// It returns once the manager's caches are synced and its webhook serves.
func startManager(ctx context.Context, env *testenv.Env, reqs *requests) (*runningManager, error) {
	mctx, cancel := context.WithCancel(ctx)
	mgr, err := manager.New(mctx, clientConfig(env.Config, reqs), env.ManagerOptions())
	if err != nil {
		cancel()
		return nil, err
	}
	m := &runningManager{cancel: cancel, exited: make(chan struct{})}
	go func() {
		defer close(m.exited)
		m.err = mgr.Start(mctx)
	}()
	ready := mgr.GetWebhookServer().StartedChecker()
	probe, _ := http.NewRequest(http.MethodGet, "/", nil)
	deadline := time.Now().Add(30 * time.Second)
	for ready(probe) != nil {
		select {
		case <-m.exited:
			cancel()
			return nil, fmt.Errorf("the manager stopped while starting: %v", m.err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = m.stop()
			return nil, errors.New("the manager's webhook did not start serving within 30s")
		}
	}
	if !mgr.GetCache().WaitForCacheSync(mctx) {
		_ = m.stop()
		return nil, errors.New("the manager's caches did not sync")
	}
	return m, nil
}

func newNamespace(ctx context.Context, kube kubernetes.Interface, name string) (string, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return name, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

func printService(out io.Writer, c config, s *serviceResult, before, after *baselineResult) {
	base := before.plus(after)
	secs := s.elapsed.Seconds()
	tasksPerSec := float64(s.tasks) / secs
	submitted := fmt.Sprintf("all at once by %d goroutines", c.submitters)
	if c.rate > 0 {
		submitted = fmt.Sprintf("at %g runs/s by %d goroutines", c.rate, c.submitters)
	}
	fmt.Fprintf(out, "service: %d runs x %d tasks (%s) in %.2fs = %.1f runs/s (%.1f tasks/s), first create to last run Finished; submitted %s, the last create returned at %.2fs\n",
		s.runs, s.tasks/s.runs, runShape, secs, float64(s.runs)/secs, tasksPerSec, submitted, s.submittedIn.Seconds())
	fmt.Fprintf(out, "baseline: create+status update %.0f objects/s (ExecutorTasks, %d writers; %d before the service at %.0f/s, %d after at %.0f/s)\n",
		base.rate(), c.executors*c.concurrency, before.objects, before.rate(), after.objects, after.rate())
	fmt.Fprintf(out, "ratio: service %.1f tasks/s / baseline %.0f objects/s = %.3f (%.1f%% of the raw create+status update rate)\n",
		tasksPerSec, base.rate(), tasksPerSec/base.rate(), 100*tasksPerSec/base.rate())

	all := sortedCopy(s.roots, s.children)
	roots, children := sortedCopy(s.roots), sortedCopy(s.children)
	fmt.Fprintf(out, "scheduling latency p50 %s p99 %s max %s (%d tasks: ready -> ExecutorTask seen by its executor's watch)\n",
		ms(percentile(all, 0.5)), ms(percentile(all, 0.99)), ms(percentile(all, 1)), len(all))
	fmt.Fprintf(out, "  root tasks:  p50 %s p99 %s max %s (ready = the run's create call returned)\n",
		ms(percentile(roots, 0.5)), ms(percentile(roots, 0.99)), ms(percentile(roots, 1)))
	fmt.Fprintf(out, "  child tasks: p50 %s p99 %s max %s (ready = the executor's Success write of the parent returned)\n",
		ms(percentile(children, 0.5)), ms(percentile(children, 0.99)), ms(percentile(children, 1)))
	if s.managerLatency.count > 0 {
		fmt.Fprintf(out, "  the manager's own runservice_scheduling_latency_seconds: mean %s over %d tasks\n",
			ms(time.Duration(s.managerLatency.sum/float64(s.managerLatency.count)*float64(time.Second))), s.managerLatency.count)
	}

	per := func(n int) float64 { return float64(n) / float64(s.tasks) }
	mgrW, exW, subW := s.manager.totalWrites(), s.executors.totalWrites(), s.submitter.totalWrites()
	fmt.Fprintf(out, "API writes per task: manager %.2f, executors %.2f, total %.2f (total includes the run creates, %.2f; %d writes in all)\n",
		per(mgrW), per(exW), per(mgrW+exW+subW), per(subW), mgrW+exW+subW)
	fmt.Fprintf(out, "apiserver write load during the service: %.0f writes/s (the baseline sustained %.0f writes/s)\n",
		float64(mgrW+exW+subW)/secs, base.writeRate())
	printRequests(out, "manager", s.manager, s.tasks)
	printRequests(out, "executors", s.executors, s.tasks)
	printRequests(out, "run submitter", s.submitter, s.tasks)

	names := make([]string, 0, len(s.reconciles))
	for n := range s.reconciles {
		names = append(names, n)
	}
	sort.Strings(names)
	var recs []string
	for _, n := range names {
		r := s.reconciles[n]
		if r.total == 0 {
			continue
		}
		recs = append(recs, fmt.Sprintf("%s %d (%.2f/task, %d errors)", n, r.total, per(r.total), r.errors))
	}
	fmt.Fprintf(out, "manager reconciles: %s\n", strings.Join(recs, ", "))
}
