package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/shard"
	"runservice.dev/runservice/internal/testenv"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

// liveBench is issue 10's "manager RSS < 200 MiB with 10,000 live runs": the manager, a process of
// its own with its default options (one replica of --shards=auto, or --shards=off), takes N runs of
// benchTasks whose a ends and whose b and c stay Running on fake executors, so that every run is live
// with its three ExecutorTasks in the manager's caches. It reads the manager's resident set and Go
// heap (after a GC) with no run and with N live runs, beside the kube-apiserver's resident set, which
// holds the same objects in its watch cache: the baseline measured in the same run.
type liveBench struct {
	env    *testenv.Env
	kube   kubernetes.Interface
	suffix string
	liveConfig
}

// livePrefix names the scenario's runs.
const livePrefix = "live-"

// liveSample is what one look at the processes read.
type liveSample struct {
	managers              []managerSample // one per replica
	apiserverRSS, etcdRSS int64
}

// managerSample is one manager replica's memory.
type managerSample struct {
	// anon is the part of rss that is the process's own memory (RssAnon), not pages of its binary
	// and other files mapped (RssFile: clean, shared, reclaimable).
	rss, anon, heap int64
	// live is the heap's live objects after the GC (heap_alloc then): heap counts whole spans in
	// use, with the free slots the objects freed left in them.
	live int64
}

func (b *liveBench) run(ctx context.Context, out io.Writer) (err error) {
	pd, err := newProcDir(b.env, "", "runservice-bench-live-")
	if err != nil {
		return err
	}
	defer pd.finish(&err)
	ns, err := newNamespace(ctx, b.kube, "bench-live-"+b.suffix)
	if err != nil {
		return err
	}
	mgrs, members, err := b.startManagers(ctx, pd)
	defer func() {
		for _, m := range mgrs {
			m.stop(15 * time.Second)
		}
	}()
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	t := newTracker(b.runs)
	t.prefix = livePrefix
	live := map[string]bool{} // under t.mu: the runs whose status shows a ended and b and c Running
	t.seen = func(run *rsv1.Run) {
		if isLive(run) {
			live[run.Name] = true
		}
	}
	exs, sub, err := startFakeExecutors(ctx, &wg, b.env, ns, "live-executor", b.executors, 4, t, func(ex *executor) {
		ex.hold = func(task string) bool { return task != "a" }
	})
	if err != nil {
		return err
	}
	if len(members) > 1 {
		if err := waitRing(ctx, sub, ns, shard.NewRing(members...)); err != nil {
			return err
		}
	}
	mode := "--shards=off"
	switch {
	case len(mgrs) > 1:
		mode = fmt.Sprintf("%d replicas of --shards=auto, each a process of its own", len(mgrs))
	case b.shards == "auto":
		mode = "one replica of --shards=auto (the default), a process of its own"
	}
	if b.envVars > 0 {
		mode += fmt.Sprintf("; each run's environment %d variables of 40 bytes", b.envVars)
	}
	if b.script > 0 {
		mode += fmt.Sprintf("; each task's command %d bytes", b.script)
	}
	if b.applied {
		mode += "; each run with kubectl apply's annotation"
	}
	fmt.Fprintf(out, "\nlive runs (issue 10: manager RSS < 200 MiB with 10,000 live runs): %d runs of %s, a ended and b and c held Running by %d fake executors, so every run is live with 3 ExecutorTasks; the manager %s, default options; memory read when the manager is idle, the heap in use after a GC (its heap profile with gc=1)\n",
		b.runs, runShape, b.executors, mode)

	look := &liveLook{managers: mgrs, dir: b.profile}
	if err := look.settle(ctx); err != nil {
		return err
	}
	idle, err := look.sample(ctx, "heap-0.pprof")
	if err != nil {
		return err
	}
	for _, m := range mgrs {
		_ = m.resetPeak() // else the peak counts from the start
	}

	start := time.Now()
	submitted := make(chan error, 1)
	go func() { submitted <- b.submit(ctx, sub, ns, t, func() int { return len(live) }) }()
	lastReport := time.Now()
	for done := false; !done; {
		select {
		case err := <-submitted:
			if err != nil {
				return err
			}
			submitted = nil
		case <-ctx.Done():
			t.mu.Lock()
			n := len(live)
			t.mu.Unlock()
			return fmt.Errorf("%d of %d runs live: %w", n, b.runs, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
		t.mu.Lock()
		n, failed := len(live), t.failed
		t.mu.Unlock()
		if failed != nil {
			return failed
		}
		for _, m := range mgrs {
			select {
			case <-m.exited:
				return fmt.Errorf("the manager %s exited: %v", m.name, m.err)
			default:
			}
		}
		for _, ex := range exs {
			if err := ex.failure(); err != nil {
				return err
			}
		}
		done = n == b.runs
		if time.Since(lastReport) >= 10*time.Second {
			fmt.Fprintf(os.Stderr, "  ... live: %d/%d runs live, manager RSS %s\n", n, b.runs, look.rss())
			lastReport = time.Now()
		}
	}
	took := time.Since(start)
	peak := make([]int64, len(mgrs))
	for i, m := range mgrs {
		peak[i] = m.peakRSS()
	}
	if err := look.settle(ctx); err != nil {
		return err
	}
	full, err := look.sample(ctx, fmt.Sprintf("heap-%d.pprof", b.runs))
	if err != nil {
		return err
	}
	printLive(out, b.runs, members, took, idle, full, peak, b.profile)
	return nil
}

// startManagers starts the manager: b.replicas processes, members of one ring (the first is the
// webhook's and the leader), or one unsharded. It returns those it started, also on an error.
func (b *liveBench) startManagers(ctx context.Context, pd *procDir) (mgrs []*observedManager, members []string, _ error) {
	if b.shards == "off" {
		m, err := startObservedManager(b.env, pd)
		if err != nil {
			return nil, nil, err
		}
		return []*observedManager{m}, nil, nil
	}
	ring, err := newNamespace(ctx, b.kube, "bench-live-ring-"+b.suffix)
	if err != nil {
		return nil, nil, err
	}
	for i := range b.replicas {
		member := fmt.Sprintf("live-%d", i)
		args := []string{"--shards", "auto", "--shard-identity", member, "--namespace", ring,
			"--leader-elect", "--leader-election-namespace", ring}
		name := "manager"
		if b.replicas > 1 {
			name = member
		}
		if i > 0 {
			args = append(args, "--webhook-port", "0")
		}
		m, err := startObservedReplica(b.env, pd, name, args...)
		if err != nil {
			return mgrs, members, err
		}
		mgrs, members = append(mgrs, m), append(members, member)
		if i == 0 && b.replicas > 1 {
			if err := waitLeader(ctx, b.kube, ring, m.proc); err != nil {
				return mgrs, members, err
			}
		}
	}
	return mgrs, members, nil
}

// isLive says whether the run's status shows what the scenario holds it at: a ended, b and c Running.
func isLive(run *rsv1.Run) bool {
	want := map[string]rsv1.TaskPhase{"a": rsv1.TaskPhaseSuccess, "b": rsv1.TaskPhaseRunning, "c": rsv1.TaskPhaseRunning}
	n := 0
	for _, ts := range run.Status.Tasks {
		if p, ok := want[ts.Name]; ok && ts.Phase == p {
			n++
		}
	}
	return n == len(want)
}

// submit creates the runs from 4 goroutines, keeping at most b.inflight of them submitted and not yet
// live (live counts them, under t.mu): the figures are about runs held, not a burst in the queues.
func (b *liveBench) submit(ctx context.Context, c versioned.Interface, ns string, t *tracker, live func() int) error {
	names := make(chan string)
	errs := make(chan error, 4)
	wait := createRuns(ctx, c, ns, b.newRun(ns), 4, names, errs, func(name string) { t.runCreated(name, time.Now()) })
	defer func() {
		close(names)
		wait()
	}()
	for i := range b.runs {
		for {
			t.mu.Lock()
			n := live()
			t.mu.Unlock()
			if i-n < b.inflight {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case err := <-errs:
				return err
			case <-time.After(10 * time.Millisecond):
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			return err
		case names <- fmt.Sprintf("%s%05d", livePrefix, i):
		}
	}
	return nil
}

// liveLook reads the processes' memory.
type liveLook struct {
	managers []*observedManager
	dir      string // where heap profiles go ("": nowhere)
}

// settle waits until every manager's work queues have stayed empty for 5 seconds (a minute at
// most): its caches and controllers hold the runs, nothing is on its way.
func (l *liveLook) settle(ctx context.Context) error {
	for _, m := range l.managers {
		deadline := time.Now().Add(time.Minute)
		quiet := 0
		for quiet < 5 && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			fams, err := scrapeFamilies(ctx, m.metrics)
			if err != nil {
				return err
			}
			depth, _ := labelled(fams, "workqueue_depth", nil)
			if depth == 0 {
				quiet++
			} else {
				quiet = 0
			}
		}
	}
	return nil
}

// sample forces a GC in each manager (its heap profile with gc=1, kept in l.dir as name, with the
// replica's name when there are several), then reads its heap in use and every resident set.
func (l *liveLook) sample(ctx context.Context, name string) (liveSample, error) {
	var out liveSample
	for _, m := range l.managers {
		path := os.DevNull
		if l.dir != "" {
			path = filepath.Join(l.dir, profileName(name, m, len(l.managers)))
		}
		if err := saveProfile(ctx, m.pprof+"/debug/pprof/heap?gc=1", path); err != nil {
			return liveSample{}, err
		}
		h, err := scrape(ctx, m.metrics, "go_memstats_heap_inuse_bytes", "go_memstats_heap_alloc_bytes")
		if err != nil {
			return liveSample{}, err
		}
		out.managers = append(out.managers, managerSample{rss: m.rss(), anon: m.status("RssAnon:"),
			heap: int64(h["go_memstats_heap_inuse_bytes"]), live: int64(h["go_memstats_heap_alloc_bytes"])})
	}
	m := l.managers[0]
	out.apiserverRSS, out.etcdRSS = m.apiserver.rss(), m.etcd.rss()
	return out, nil
}

// profileName is where a replica's heap profile goes: name, or name-<replica>.pprof of several.
func profileName(name string, m *observedManager, replicas int) string {
	if replicas == 1 {
		return name
	}
	return strings.TrimSuffix(name, ".pprof") + "-" + m.name + ".pprof"
}

// rss is the managers' resident sets, for progress lines.
func (l *liveLook) rss() string {
	var parts []string
	for _, m := range l.managers {
		parts = append(parts, fmt.Sprintf("%.0f", mibf(m.rss())))
	}
	return strings.Join(parts, " / ") + " MiB"
}

func printLive(out io.Writer, runs int, members []string, took time.Duration, idle, full liveSample, peak []int64, dir string) {
	per := func(a, b int64) float64 { return mibf(b-a) * 1000 / float64(runs) }
	fmt.Fprintf(out, "%d runs live %.1fs after the first submission (%.1f runs/s)\n", runs, took.Seconds(), float64(runs)/took.Seconds())
	fmt.Fprintf(out, "%-28s %10s %12s %18s\n", "", "0 runs", strconv.Itoa(runs)+" live", "per 1,000 live")
	row := func(name string, a, b int64) {
		fmt.Fprintf(out, "%-28s %6.0f MiB %8.0f MiB %12.2f MiB\n", name, mibf(a), mibf(b), per(a, b))
	}
	// at10k is a replica's RSS with 10,000 live runs in all: measured, or extrapolated linearly.
	at10k := func(a, b int64) float64 { return mibf(a) + 10*per(a, b) }
	var worst, worstAnon float64
	var rssGrowth, heapGrowth float64
	for i := range idle.managers {
		i0, i1 := idle.managers[i], full.managers[i]
		name := "manager"
		if len(members) > 1 {
			name = "replica " + members[i]
		}
		row(name+" RSS", i0.rss, i1.rss)
		row("  of which anonymous", i0.anon, i1.anon)
		row("  heap after GC", i0.heap, i1.heap)
		row("  of which live objects", i0.live, i1.live)
		fmt.Fprintf(out, "  peak RSS while the runs were submitted: %.0f MiB\n", mibf(peak[i]))
		if v := at10k(i0.rss, i1.rss); v > worst {
			worst, worstAnon = v, at10k(i0.anon, i1.anon)
		}
		rssGrowth += per(i0.rss, i1.rss)
		heapGrowth += per(i0.heap, i1.heap)
	}
	row("kube-apiserver RSS (base)", idle.apiserverRSS, full.apiserverRSS)
	row("etcd RSS", idle.etcdRSS, full.etcdRSS)
	if base := per(idle.apiserverRSS, full.apiserverRSS); base > 0 {
		fmt.Fprintf(out, "manager RSS growth (all replicas) / kube-apiserver RSS growth for the same objects: %.2f; heap growth / apiserver's: %.2f\n",
			rssGrowth/base, heapGrowth/base)
	}
	verdict := "met"
	if worst >= 200 {
		verdict = "MISSED"
	}
	measured := "extrapolated linearly from this run"
	if runs == 10_000 {
		measured = "measured"
	}
	who := "manager"
	if len(members) > 1 {
		who = fmt.Sprintf("largest of %d replicas", len(members))
	}
	fmt.Fprintf(out, "manager RSS with 10,000 live runs (%s): %.0f MiB, of which anonymous %.0f MiB (%s; target < 200 MiB): %s\n", who, worst, worstAnon, measured, verdict)
	if dir != "" {
		fmt.Fprintf(out, "heap profiles: go tool pprof -sample_index=inuse_space -top -base %s %s\n",
			filepath.Join(dir, "heap-0*.pprof"), filepath.Join(dir, fmt.Sprintf("heap-%d*.pprof", runs)))
	}
}

// liveConfig is the scenario's flags.
type liveConfig struct {
	on        bool
	runs      int
	inflight  int
	executors int
	shards    string
	replicas  int
	profile   string
	envVars   int
	script    int
	applied   bool
}

// newRun makes the runs of namespace ns: benchTasks, with -live-env variables of 40 bytes in the
// run's environment, which each ExecutorTask carries too, -live-script bytes in each task's
// command (as a real run's environment and scripts), and with -live-applied the annotation kubectl
// apply adds, the run's manifest.
func (c *liveConfig) newRun(ns string) func(name string) *rsv1.Run {
	spec := rsv1.RunSpec{Tasks: benchTasks()} // shared by the runs, only read
	for i := range c.envVars {
		spec.Environment = append(spec.Environment, rsv1.EnvVar{Name: fmt.Sprintf("BENCH_VAR_%d", i), Value: strings.Repeat("v", 40)})
	}
	if c.script > 0 {
		for i := range spec.Tasks {
			spec.Tasks[i].Steps[0].Run.Command = strings.Repeat("#", c.script)
		}
	}
	return func(name string) *rsv1.Run {
		run := &rsv1.Run{TypeMeta: metav1.TypeMeta{APIVersion: rsv1.GroupVersion.String(), Kind: "Run"}, ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
		if c.applied {
			manifest, _ := json.Marshal(run) // a run of these types always marshals
			run.Annotations = map[string]string{corev1.LastAppliedConfigAnnotation: string(manifest)}
		}
		return run
	}
}

func (c *liveConfig) flags() {
	flag.BoolVar(&c.on, "live", false, "issue 10's live-runs scenario: the manager as a process holding -live-runs runs live (b and c Running on fake executors); its RSS and heap at 0 and at N live runs, beside the kube-apiserver's RSS")
	flag.IntVar(&c.runs, "live-runs", 10_000, "live scenario: runs held live (200 with -quick)")
	flag.IntVar(&c.inflight, "live-inflight", 500, "live scenario: runs submitted and not yet live at most")
	flag.IntVar(&c.executors, "live-executors", 2, "live scenario: fake executors")
	flag.StringVar(&c.shards, "live-shards", "auto", "live scenario: the manager's --shards (auto: one replica of a ring, the default deployment; off: unsharded)")
	flag.IntVar(&c.replicas, "live-replicas", 1, "live scenario: manager replicas of one ring with -live-shards auto (the runs divide among them)")
	flag.IntVar(&c.envVars, "live-env", 0, "live scenario: variables of 40 bytes in each run's environment (each of its ExecutorTasks carries them too)")
	flag.IntVar(&c.script, "live-script", 0, "live scenario: bytes of each task's command, a script (0: echo <task>)")
	flag.BoolVar(&c.applied, "live-applied", false, "live scenario: runs carry the annotation kubectl apply adds (their manifest)")
	flag.StringVar(&c.profile, "live-profile", "", "live scenario: write the manager's heap profiles (after a GC) at 0 and N live runs into this directory")
}

func (c *liveConfig) check() error {
	if c.runs < 1 || c.inflight < 1 || c.executors < 1 || c.envVars < 0 || c.envVars > 128 || c.script < 0 || c.script > 64<<10 {
		return errors.New("-live-runs, -live-inflight and -live-executors must be positive, -live-env 0 to 128, -live-script 0 to 65536")
	}
	if c.shards != "auto" && c.shards != "off" {
		return fmt.Errorf("-live-shards is %q, want auto or off", c.shards)
	}
	if c.replicas < 1 || (c.replicas > 1 && c.shards != "auto") {
		return errors.New("-live-replicas must be positive, and 1 with -live-shards off")
	}
	return nil
}

func (c *liveConfig) bench(env *testenv.Env, kube kubernetes.Interface, suffix string) *liveBench {
	return &liveBench{env: env, kube: kube, suffix: suffix, liveConfig: *c}
}
