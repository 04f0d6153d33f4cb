// Command bench is `make bench`: it boots the local control plane, starts the manager in-process with
// its default options, and measures it against the raw rate of the same apiserver:
//
//   - baseline: ExecutorTask create + status update, with the executors' concurrency;
//   - service: runs of three tasks driven to Finished by fake executors that play a fast executor
//     through the API (Executor + Lease, a watch on their ExecutorTasks, Running then Success);
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
	"sort"
	"strings"
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
	flag.DurationVar(&c.timeout, "timeout", 10*time.Minute, "bound on the whole benchmark")
	flag.BoolVar(&c.verbose, "v", false, "show the manager's log (errors and up)")
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.quick && !set["runs"] {
		c.runs = 20
	}
	if c.baselineN == 0 {
		c.baselineN = max(200, 3*c.runs)
	}
	if c.runs < 1 || c.executors < 1 || c.concurrency < 1 || c.submitters < 1 || c.rate < 0 || c.baselineN < 1 {
		fmt.Fprintln(os.Stderr, "bench: -runs, -executors, -concurrency, -submitters and -baseline-objects must be positive, -rate not negative")
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
	level := zapcore.Level(zapcore.FatalLevel)
	if c.verbose {
		level = zapcore.ErrorLevel
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(level)))

	ctx, cancel := context.WithTimeoutCause(context.Background(), c.timeout, fmt.Errorf("the benchmark took longer than -timeout %s", c.timeout))
	defer cancel()

	bootStart := time.Now()
	env, err := testenv.Start()
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
	stopManager, err := startManager(ctx, env, mgrReq)
	if err != nil {
		return err
	}
	defer stopManager()
	fmt.Fprintf(out, "manager: in-process, default options (%d executors x %d status writers, %d run submitters)\n",
		c.executors, c.concurrency, c.submitters)

	kube, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		return fmt.Errorf("admin client: %w", err)
	}
	suffix := time.Now().Format("150405")

	baseNS, err := newNamespace(ctx, kube, "bench-baseline-"+suffix)
	if err != nil {
		return err
	}
	base, err := (&baselineBench{
		base: env.Config, ns: baseNS, objects: c.baselineN, clients: c.executors, workers: c.concurrency,
	}).run(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "baseline: create+status update %.0f objects/s (%d ExecutorTasks in %.2fs by %d writers, %.1f writes/s)\n",
		base.rate(), base.objects, base.elapsed.Seconds(), c.executors*c.concurrency,
		float64(base.writes.totalWrites())/base.elapsed.Seconds())

	ns, err := newNamespace(ctx, kube, "bench-"+suffix)
	if err != nil {
		return err
	}
	svc, err := (&serviceBench{
		base: env.Config, ns: ns, runs: c.runs, executors: c.executors, workers: c.concurrency,
		submitters: c.submitters, rate: c.rate, managerReq: mgrReq,
	}).run(ctx)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			return fmt.Errorf("%w (%v)", err, cause)
		}
		return err
	}
	printService(out, c, base, svc)
	return nil
}

// startManager starts the manager as `cmd/manager` would, with every request it sends counted in reqs.
// It returns once the manager's caches are synced and its webhook serves.
func startManager(ctx context.Context, env *testenv.Env, reqs *requests) (stop func(), err error) {
	mctx, cancel := context.WithCancel(ctx)
	mgr, err := manager.New(mctx, clientConfig(env.Config, reqs), env.ManagerOptions())
	if err != nil {
		cancel()
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(mctx) }()
	stop = func() {
		cancel()
		<-done
	}
	ready := mgr.GetWebhookServer().StartedChecker()
	probe, _ := http.NewRequest(http.MethodGet, "/", nil)
	deadline := time.Now().Add(30 * time.Second)
	for ready(probe) != nil {
		select {
		case err := <-done:
			cancel()
			return nil, fmt.Errorf("the manager stopped while starting: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, errors.New("the manager's webhook did not start serving within 30s")
		}
	}
	if !mgr.GetCache().WaitForCacheSync(mctx) {
		stop()
		return nil, errors.New("the manager's caches did not sync")
	}
	return stop, nil
}

func newNamespace(ctx context.Context, kube kubernetes.Interface, name string) (string, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return name, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

func printService(out io.Writer, c config, base *baselineResult, s *serviceResult) {
	secs := s.elapsed.Seconds()
	tasksPerSec := float64(s.tasks) / secs
	submitted := fmt.Sprintf("all at once by %d goroutines", c.submitters)
	if c.rate > 0 {
		submitted = fmt.Sprintf("at %g runs/s by %d goroutines", c.rate, c.submitters)
	}
	fmt.Fprintf(out, "service: %d runs x 3 tasks (%s) in %.2fs = %.1f runs/s (%.1f tasks/s), first create to last run Finished; submitted %s, the last create returned at %.2fs\n",
		s.runs, runShape, secs, float64(s.runs)/secs, tasksPerSec, submitted, s.submittedIn.Seconds())
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
	section := func(title string, rc requestCounts) {
		fmt.Fprintf(out, "  %s: %d writes (%d conflicts), %d reads (GET/LIST, not watches)\n", title, rc.totalWrites(), rc.totalConflicts(), rc.reads)
		for _, l := range rc.breakdown(s.tasks) {
			fmt.Fprintf(out, "    %s\n", l)
		}
	}
	section("manager", s.manager)
	section("executors", s.executors)
	section("run submitter", s.submitter)

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
