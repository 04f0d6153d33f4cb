package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	rsv1 "runservice.dev/runservice/api/v1alpha1"

	"runservice.dev/runservice/internal/testenv"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

// soakBench is issue 9's archive soak: the manager, a process of its own with --archive-after=0s
// and a file:// object store, takes many runs of benchTasks from fake executors (the service
// section's, with an endpoint serving each step's log, so every task is fetched into the store
// before its run is archived); the runs are submitted at a steady rate, or kept at a number in
// flight (submitted, not yet Finished: the rate the service finishes them). Every few seconds it
// samples the runs finished and archived (gone from etcd), the manager's resident set and heap, and
// the objects etcd holds; at the end it says whether memory and objects stayed flat and how far
// archiving lagged behind the finishes.
type soakBench struct {
	env    *testenv.Env
	kube   kubernetes.Interface
	suffix string
	soakConfig
}

// soakPrefix names the soak's runs.
const soakPrefix = "soak-"

// soakSample is one look at the service during the soak.
type soakSample struct {
	at                            time.Duration // since the first submission
	submitted, finished, archived int
	// Objects of the kinds the soak creates that etcd holds now, in every namespace.
	runs, tasks, events int
	// The manager's resident set and Go heap in use (its metrics), etcd's and the apiserver's
	// resident sets.
	managerRSS, managerHeap, etcdRSS, apiserverRSS int64
	goroutines                                     int
}

func (b *soakBench) run(ctx context.Context, out io.Writer) (err error) {
	pd, err := newProcDir(b.env, "", "runservice-bench-soak-")
	if err != nil {
		return err
	}
	defer pd.finish(&err)
	ns, err := newNamespace(ctx, b.kube, "bench-soak-"+b.suffix)
	if err != nil {
		return err
	}
	logs, err := startLogServer(ctx, b.kube, ns)
	if err != nil {
		return err
	}
	defer logs.close()

	mgr, err := startObservedManager(b.env, pd, "--archive-after", "0s")
	if err != nil {
		return err
	}
	defer mgr.stop(15 * time.Second)

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	t := newTracker(b.runs)
	t.prefix = soakPrefix
	exs, sub, err := startFakeExecutors(ctx, &wg, b.env, ns, "soak-executor", b.executors, b.workers, t, func(ex *executor) { ex.endpoint = logs.url })
	if err != nil {
		return err
	}

	how := fmt.Sprintf("closed loop, %d runs in flight (submitted, not yet Finished)", b.inflight)
	if b.rate > 0 {
		how = fmt.Sprintf("open loop at %g runs/s", b.rate)
	}
	if b.submitFor > 0 {
		how += fmt.Sprintf(", for at most %s", b.submitFor)
	}
	fmt.Fprintf(out, "\nsoak: %d runs of %s submitted %s; the manager a process of its own with --archive-after=0s and a file:// object store; %d fake executors (%d status writers each) serving each step's log over http, fetched into the store; a sample every %s\n",
		b.runs, runShape, how, b.executors, b.workers, b.every)

	look := &soakLook{sub: sub, kube: b.kube, t: t, manager: mgr.proc, etcd: mgr.etcd, apiserver: mgr.apiserver, metrics: mgr.metrics}
	var submitted atomic.Int64
	start := time.Now()
	type submission struct {
		n   int
		err error
	}
	submitDone := make(chan submission, 1)
	go func() {
		n, err := b.submit(ctx, sub, ns, t, &submitted)
		submitDone <- submission{n, err}
	}()

	var samples []soakSample
	tick := time.NewTicker(b.every)
	defer tick.Stop()
	check := time.NewTicker(100 * time.Millisecond)
	defer check.Stop()
	var submittedAt time.Duration // when the last run was submitted
	heap := func(name string) error {
		if b.profiles == "" {
			return nil
		}
		return saveProfile(ctx, mgr.pprof+"/debug/pprof/heap?gc=1", filepath.Join(b.profiles, name))
	}
	warm := false
	for done := false; !done; {
		select {
		case <-t.archived:
			done = true
		case sd := <-submitDone:
			if sd.err != nil {
				return sd.err
			}
			submitDone = nil
			submittedAt = time.Since(start)
			t.expect(sd.n)
			if err := heap("heap-submitted.pprof"); err != nil {
				return err
			}
		case <-ctx.Done():
			t.mu.Lock()
			n := len(t.deletedR)
			t.mu.Unlock()
			return fmt.Errorf("%d of %d runs archived: %w", n, b.runs, ctx.Err())
		case <-check.C:
			if _, failed := t.progress(); failed != nil {
				return failed
			}
			for _, ex := range exs {
				if err := ex.failure(); err != nil {
					return err
				}
			}
			select {
			case <-mgr.exited:
				return fmt.Errorf("the manager exited during the soak: %v", mgr.err)
			default:
			}
		case <-tick.C:
			s, err := look.sample(ctx, time.Since(start), int(submitted.Load()))
			if err != nil {
				return err
			}
			samples = append(samples, s)
			fmt.Fprintf(os.Stderr, "  ... soak %s\n", s.row())
			if !warm && s.submitted >= b.runs/10 {
				warm = true
				if err := heap("heap-warm.pprof"); err != nil {
					return err
				}
			}
		}
	}
	last, err := look.sample(ctx, time.Since(start), int(submitted.Load()))
	if err != nil {
		return err
	}
	samples = append(samples, last)
	printSoak(out, int(submitted.Load()), samples, start, submittedAt, t)
	return printArchiveSteps(ctx, out, look.metrics)
}

// printArchiveSteps prints where the archive lag went: the mean of each step of the manager's
// runservice_archive_step_seconds, in the order they happen.
func printArchiveSteps(ctx context.Context, out io.Writer, url string) error {
	families, err := scrapeFamilies(ctx, url)
	if err != nil {
		return err
	}
	steps := map[string]histogramSummary{}
	for _, m := range families["runservice_archive_step_seconds"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "step" {
				steps[l.GetValue()] = histogramSummary{count: m.GetHistogram().GetSampleCount(), sum: m.GetHistogram().GetSampleSum()}
			}
		}
	}
	fmt.Fprint(out, "archive steps, mean (the manager's runservice_archive_step_seconds; settle: from due to the archiver taking the run, the run controller's last writes and the queue; executortasks and delete at once):")
	mean := map[string]float64{}
	for _, step := range []string{"settle", "document", "segment", "executortasks", "delete", "finalizer"} {
		h := steps[step]
		if h.count == 0 {
			fmt.Fprintf(out, " %s -;", step)
			continue
		}
		mean[step] = h.sum / float64(h.count)
		fmt.Fprintf(out, " %s %.0fms (%d);", step, 1000*mean[step], h.count)
	}
	path := mean["settle"] + mean["document"] + mean["segment"] + max(mean["executortasks"], mean["delete"]) + mean["finalizer"]
	fmt.Fprintf(out, " one after the other %.2fs\n", path)
	return nil
}

// submit creates the runs: at b.rate per second, or whenever fewer than b.inflight of them are
// submitted and not yet Finished; it stops early after b.submitFor, if set. submitted counts the
// creates that returned; it returns how many runs it created.
func (b *soakBench) submit(ctx context.Context, c versioned.Interface, ns string, t *tracker, submitted *atomic.Int64) (int, error) {
	var tick *time.Ticker
	if b.rate > 0 {
		tick = time.NewTicker(time.Duration(float64(time.Second) / b.rate))
		defer tick.Stop()
	}
	var deadline <-chan time.Time
	if b.submitFor > 0 {
		deadline = time.After(b.submitFor)
	}
	names := make(chan string)
	errs := make(chan error, 4)
	spec := rsv1.RunSpec{Tasks: benchTasks()} // shared by the runs, only read
	newRun := func(name string) *rsv1.Run {
		return &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: spec}
	}
	wait := createRuns(ctx, c, ns, newRun, 4, names, errs, func(name string) {
		t.runCreated(name, time.Now())
		submitted.Add(1)
	})
	err := b.handOut(ctx, t, names, errs, tick, deadline)
	close(names)
	wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return int(submitted.Load()), err
}

// createRuns starts n goroutines that create the run newRun makes of each name received (in
// namespace ns), until names is closed; created is told each name whose create returned, and the
// first error of a goroutine goes to errs (of n places), which stops it. wait waits for the goroutines.
func createRuns(ctx context.Context, c versioned.Interface, ns string, newRun func(name string) *rsv1.Run, n int, names <-chan string, errs chan<- error, created func(name string)) (wait func()) {
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for name := range names {
				if _, err := c.RunserviceV1alpha1().Runs(ns).Create(ctx, newRun(name), metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("creating run %s: %w", name, err)
					return
				}
				created(name)
			}
		})
	}
	return wg.Wait
}

// handOut hands the runs' names to the submitters, paced by tick or by the runs in flight, until
// every run is handed out or the deadline passes.
func (b *soakBench) handOut(ctx context.Context, t *tracker, names chan<- string, errs <-chan error, tick *time.Ticker, deadline <-chan time.Time) error {
	stopped := errors.New("past the deadline")
	// wait waits for next (a tick) or, with a name, until the name is taken.
	wait := func(next <-chan time.Time, name string) error {
		var out chan<- string
		if name != "" {
			out = names
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			return err
		case <-deadline:
			return stopped
		case <-next:
		case out <- name:
		}
		return nil
	}
	for i := range b.runs {
		var err error
		if tick != nil {
			err = wait(tick.C, "")
		}
		// i runs were handed out; without a rate, the gate waits for one of the last inflight to finish.
		for finished, _ := t.progress(); tick == nil && err == nil && i-finished >= b.inflight; finished, _ = t.progress() {
			err = wait(time.After(5*time.Millisecond), "")
		}
		if err == nil {
			err = wait(nil, fmt.Sprintf("%s%05d", soakPrefix, i))
		}
		if err != nil {
			if errors.Is(err, stopped) {
				return nil
			}
			return err
		}
	}
	return nil
}

// expect makes the tracker wait for n runs: those submitted when the soak stopped early.
func (t *tracker) expect(n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n >= t.want {
		return
	}
	t.want = n
	if len(t.finishedR) >= n {
		close(t.done)
	}
	if len(t.deletedR) >= n {
		close(t.archived)
	}
}

// soakLook takes the samples.
type soakLook struct {
	sub                      versioned.Interface
	kube                     kubernetes.Interface
	t                        *tracker
	manager, etcd, apiserver *proc
	metrics                  string // the manager's metrics URL
}

func (l *soakLook) sample(ctx context.Context, at time.Duration, submitted int) (soakSample, error) {
	s := soakSample{at: at, submitted: submitted}
	l.t.mu.Lock()
	s.finished, s.archived = len(l.t.finishedR), len(l.t.deletedR)
	l.t.mu.Unlock()
	// A list of one object tells how many there are in all (remainingItemCount), without reading them.
	one := metav1.ListOptions{Limit: 1}
	count := func(items int, meta metav1.ListMeta) int {
		if meta.RemainingItemCount != nil {
			return items + int(*meta.RemainingItemCount)
		}
		return items
	}
	runs, err := l.sub.RunserviceV1alpha1().Runs("").List(ctx, one)
	if err != nil {
		return s, fmt.Errorf("counting runs: %w", err)
	}
	tasks, err := l.sub.RunserviceV1alpha1().ExecutorTasks("").List(ctx, one)
	if err != nil {
		return s, fmt.Errorf("counting executor tasks: %w", err)
	}
	events, err := l.kube.CoreV1().Events("").List(ctx, one)
	if err != nil {
		return s, fmt.Errorf("counting events: %w", err)
	}
	s.runs, s.tasks, s.events = count(len(runs.Items), runs.ListMeta), count(len(tasks.Items), tasks.ListMeta), count(len(events.Items), events.ListMeta)
	s.managerRSS, s.etcdRSS, s.apiserverRSS = l.manager.rss(), l.etcd.rss(), l.apiserver.rss()
	m, err := scrape(ctx, l.metrics, "go_memstats_heap_inuse_bytes", "go_goroutines")
	if err != nil {
		return s, err
	}
	s.managerHeap, s.goroutines = int64(m["go_memstats_heap_inuse_bytes"]), int(m["go_goroutines"])
	return s, nil
}

// scrape reads the unlabelled gauges and counters names from a Prometheus text endpoint.
func scrape(ctx context.Context, url string, names ...string) (map[string]float64, error) {
	families, err := scrapeFamilies(ctx, url)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, n := range names {
		f, ok := families[n]
		if !ok || len(f.GetMetric()) == 0 {
			return nil, fmt.Errorf("the manager's metrics have no %s", n)
		}
		m := f.GetMetric()[0]
		out[n] = m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
	}
	return out, nil
}

// scrapeFamilies reads every metric family of a Prometheus text endpoint.
func scrapeFamilies(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading the manager's metrics: %w", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading the manager's metrics at %s: %w", url, err)
	}
	return families, nil
}

const soakHeader = "     t  submitted  finished  archived | etcd: runs  tasks  events | manager: RSS  heap  goroutines | etcd RSS  apiserver RSS"

func (s soakSample) row() string {
	return fmt.Sprintf("%5.0fs  %9d  %8d  %8d |       %5d  %5d  %6d |   %6.0fMiB %4.0fMiB  %5d      | %5.0fMiB  %6.0fMiB",
		s.at.Seconds(), s.submitted, s.finished, s.archived, s.runs, s.tasks, s.events,
		mibf(s.managerRSS), mibf(s.managerHeap), s.goroutines, mibf(s.etcdRSS), mibf(s.apiserverRSS))
}

func mibf(b int64) float64 { return float64(b) / (1 << 20) }

// printSoak prints the samples (about 25 rows of them) and the verdict. The steady part is the
// samples taken while runs were still being submitted, after the first tenth of them (warm-up: the
// caches and the pools filling); its first and last tenths are compared.
func printSoak(out io.Writer, runs int, samples []soakSample, start time.Time, submittedAt time.Duration, t *tracker) {
	fmt.Fprintln(out, soakHeader)
	step := max(1, len(samples)/25)
	for i, s := range samples {
		if i%step == 0 || i == len(samples)-1 {
			fmt.Fprintln(out, s.row())
		}
	}
	var steady []soakSample
	for _, s := range samples {
		if s.submitted >= runs/10 && (submittedAt == 0 || s.at <= submittedAt) {
			steady = append(steady, s)
		}
	}
	if len(steady) < 10 {
		fmt.Fprintf(out, "soak: only %d samples while submitting after warm-up: too few to judge flatness (more runs, or a shorter -soak-sample)\n", len(steady))
	} else {
		n := len(steady) / 10
		first, last := steady[:n], steady[len(steady)-n:]
		fmt.Fprintf(out, "flat? (steady part %.0fs-%.0fs, %d samples: mean of its last tenth / its first tenth; growth = least-squares slope over the part / first-tenth mean; flat = both <= 1.2x / 20%%)\n",
			steady[0].at.Seconds(), steady[len(steady)-1].at.Seconds(), len(steady))
		for _, m := range []struct {
			name  string
			value func(soakSample) float64
			judge bool
		}{
			{"manager RSS (MiB)", func(s soakSample) float64 { return mibf(s.managerRSS) }, true},
			{"manager heap in use (MiB)", func(s soakSample) float64 { return mibf(s.managerHeap) }, true},
			{"runs in etcd", func(s soakSample) float64 { return float64(s.runs) }, true},
			{"executortasks in etcd", func(s soakSample) float64 { return float64(s.tasks) }, true},
			{"events in etcd (1h TTL)", func(s soakSample) float64 { return float64(s.events) }, false},
			{"etcd RSS (MiB)", func(s soakSample) float64 { return mibf(s.etcdRSS) }, false},
			{"apiserver RSS (MiB)", func(s soakSample) float64 { return mibf(s.apiserverRSS) }, false},
		} {
			a, b := sampleMean(first, m.value), sampleMean(last, m.value)
			growth := slope(steady, m.value) * (steady[len(steady)-1].at - steady[0].at).Seconds() / math.Max(a, 1)
			verdict := "not judged"
			if m.judge {
				verdict = "MISSED"
				if b/math.Max(a, 1) <= 1.2 && growth <= 0.2 {
					verdict = "flat"
				}
			}
			fmt.Fprintf(out, "  %-26s %8.1f -> %8.1f (%.2fx), growth %+.0f%%: %s\n", m.name, a, b, b/math.Max(a, 1), 100*growth, verdict)
		}
		secs := (steady[len(steady)-1].at - steady[0].at).Seconds()
		fin := float64(steady[len(steady)-1].finished-steady[0].finished) / secs
		arch := float64(steady[len(steady)-1].archived-steady[0].archived) / secs
		fmt.Fprintf(out, "archive throughput over the steady part: %.1f runs/s archived, %.1f runs/s finished (%.2fx)\n", arch, fin, arch/fin)
	}

	t.mu.Lock()
	type lag struct {
		fin time.Time
		d   time.Duration
	}
	var lags []lag
	var all []time.Duration
	for run, gone := range t.deletedR {
		if fin, ok := t.finishedR[run]; ok {
			lags = append(lags, lag{fin, gone.Sub(fin)})
			all = append(all, gone.Sub(fin))
		}
	}
	t.mu.Unlock()
	all = sortedCopy(all)
	p99 := percentile(all, 0.99)
	verdict := "met"
	if p99 >= 5*time.Second {
		verdict = "MISSED"
	}
	fmt.Fprintf(out, "archive lag (seen Finished -> seen gone from etcd), %d runs: p50 %.2fs p99 %.2fs max %.2fs (target p99 < 5s at the full finish rate): %s\n",
		len(all), percentile(all, 0.5).Seconds(), p99.Seconds(), percentile(all, 1).Seconds(), verdict)
	// By finish time, among the runs that finished while runs were submitted (the drain after the
	// last submission has no new work coming): a lag that grows is a backlog building.
	var steadyLags []lag
	for _, l := range lags {
		if submittedAt == 0 || l.fin.Sub(start) <= submittedAt {
			steadyLags = append(steadyLags, l)
		}
	}
	if len(steadyLags) >= 20 {
		slices.SortFunc(steadyLags, func(a, b lag) int { return a.fin.Compare(b.fin) })
		n := len(steadyLags) / 10
		tenth := func(l []lag) []time.Duration {
			var d []time.Duration
			for _, x := range l {
				d = append(d, x.d)
			}
			return sortedCopy(d)
		}
		a, b := tenth(steadyLags[:n]), tenth(steadyLags[len(steadyLags)-n:])
		fmt.Fprintf(out, "  of the runs finished while submitting, the first tenth: p50 %.2fs p99 %.2fs; the last tenth: p50 %.2fs p99 %.2fs\n",
			percentile(a, 0.5).Seconds(), percentile(a, 0.99).Seconds(), percentile(b, 0.5).Seconds(), percentile(b, 0.99).Seconds())
	}
	end := samples[len(samples)-1]
	fmt.Fprintf(out, "all %d runs archived %.1fs after the first submission = %.1f runs/s; the last submitted at %.1fs\n",
		end.archived, end.at.Seconds(), float64(end.archived)/end.at.Seconds(), submittedAt.Seconds())
}

func sampleMean(s []soakSample, v func(soakSample) float64) float64 {
	sum := 0.0
	for _, x := range s {
		sum += v(x)
	}
	return sum / float64(len(s))
}

// slope is the least-squares slope of v over time, per second.
func slope(s []soakSample, v func(soakSample) float64) float64 {
	var sx, sy, sxx, sxy float64
	n := float64(len(s))
	for _, x := range s {
		t, y := x.at.Seconds(), v(x)
		sx, sy, sxx, sxy = sx+t, sy+y, sxx+t*t, sxy+t*y
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

// saveProfile writes the profile served at url (a process's /debug/pprof/...) into path.
func saveProfile(ctx context.Context, url, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("reading the profile %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("reading the profile %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

// logServer plays the fake executors' HTTP endpoint: each step's log, to a request with the
// namespace's executor token, as the fetcher asks an executor for them.
type logServer struct {
	url string
	srv *http.Server
}

func startLogServer(ctx context.Context, kube kubernetes.Interface, ns string) (*logServer, error) {
	token := "soak-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: rsv1.ExecutorTokenSecret, Namespace: ns},
		StringData: map[string]string{rsv1.ExecutorTokenKey: token, rsv1.ExecutorTaskKeyKey: token + "-tasks"},
	}
	if _, err := kube.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("creating the executors' token: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tasks/{name}/steps/{i}/log", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, "step %s of task %s: done\n", r.PathValue("i"), r.PathValue("name"))
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &logServer{url: "http://" + l.Addr().String(), srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() {
		if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "bench: soak log server:", err)
		}
	}()
	return s, nil
}

func (s *logServer) close() { _ = s.srv.Close() }

// soakConfig is the soak's flags.
type soakConfig struct {
	on   bool
	runs int
	// rate submits runs open-loop at this many per second; 0 keeps inflight runs submitted and not
	// yet Finished.
	rate     float64
	inflight int
	// submitFor, when set, stops submitting after that long, fewer runs than runs if need be.
	submitFor time.Duration
	every     time.Duration
	executors int
	workers   int
	// profiles, when set, is where the manager's heap profiles are written: at the end of warm-up
	// and when the last run is submitted (compare with go tool pprof -base).
	profiles string
}

func (c *soakConfig) flags() {
	flag.BoolVar(&c.on, "soak", false, "issue 9's archive soak: the manager as a process with --archive-after=0s, many runs through fake executors, sampling memory, etcd's objects and the archive lag")
	flag.IntVar(&c.runs, "soak-runs", 20000, "soak: runs to submit")
	flag.Float64Var(&c.rate, "soak-rate", 0, "soak: runs submitted per second (open loop); 0 keeps -soak-inflight runs submitted and not yet Finished")
	flag.IntVar(&c.inflight, "soak-inflight", 40, "soak, without -soak-rate: runs kept submitted and not yet Finished")
	flag.DurationVar(&c.submitFor, "soak-for", 0, "soak: stop submitting after this long even if fewer than -soak-runs were submitted (0: no bound), then wait for the submitted ones to be archived and judge them")
	flag.DurationVar(&c.every, "soak-sample", 5*time.Second, "soak: how often to sample")
	flag.IntVar(&c.executors, "soak-executors", 2, "soak: fake executors")
	flag.IntVar(&c.workers, "soak-workers", 4, "soak: status writers per fake executor")
	flag.StringVar(&c.profiles, "soak-profile", "", "soak: write the manager's heap profiles into this directory, at the end of warm-up (heap-warm.pprof) and once every run is submitted (heap-submitted.pprof)")
}

func (c *soakConfig) bench(env *testenv.Env, kube kubernetes.Interface, suffix string) *soakBench {
	b := &soakBench{env: env, kube: kube, suffix: suffix, soakConfig: *c}
	b.inflight, b.executors, b.workers = max(1, c.inflight), max(1, c.executors), max(1, c.workers)
	return b
}
