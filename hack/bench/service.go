package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
	"runservice.dev/runservice/pkg/client/informers/externalversions"
)

// runShape is the graph of every bench run: a fan-out, a then b and c, so that one executor report
// makes two tasks ready at once.
const runShape = "a, then b and c after a"

func benchTasks() []rsv1.Task {
	task := func(name string, parents ...string) rsv1.Task {
		t := rsv1.Task{
			Name:       name,
			Containers: []rsv1.Container{{Image: "busybox:1.36"}},
			Steps:      []rsv1.Step{{Run: &rsv1.RunStep{Command: "echo " + name}}},
		}
		for _, p := range parents {
			t.Depends = append(t.Depends, rsv1.TaskDependency{Task: p})
		}
		return t
	}
	return []rsv1.Task{task("a"), task("b", "a"), task("c", "a")}
}

type taskKey struct{ run, task string }

// tracker records, from the bench's side, when each run was created and finished and when each
// task was scheduled (its ExecutorTask reached its executor's watch) and finished (the executor's
// Success write returned).
type tracker struct {
	want int
	// prefix, when set, limits the tracker to the runs named so: the runs of earlier phases in the
	// same namespace are not its.
	prefix string

	mu         sync.Mutex
	created    map[string]time.Time // run -> its create call returned
	finishedR  map[string]time.Time // run -> seen Finished
	scheduledT map[taskKey]time.Time
	finishedT  map[taskKey]time.Time
	failed     error
	done       chan struct{} // closed once every run is Finished
	// deletedR holds when each run was seen deleted (archived, when the manager archives);
	// archived is closed once every run is.
	deletedR map[string]time.Time
	archived chan struct{}
	// seen, when set, is shown every version of the tracker's runs the watch sees (under mu).
	seen func(*rsv1.Run)
}

func newTracker(runs int) *tracker {
	return &tracker{
		want:       runs,
		created:    map[string]time.Time{},
		finishedR:  map[string]time.Time{},
		scheduledT: map[taskKey]time.Time{},
		finishedT:  map[taskKey]time.Time{},
		done:       make(chan struct{}),
		deletedR:   map[string]time.Time{},
		archived:   make(chan struct{}),
	}
}

func (t *tracker) runCreated(run string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.created[run] = at
}

func (t *tracker) scheduled(run, task string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.scheduledT[taskKey{run, task}]; !ok {
		t.scheduledT[taskKey{run, task}] = at
	}
}

func (t *tracker) finished(run, task string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.finishedT[taskKey{run, task}] = at
}

// observe takes a run seen by the bench's watch on runs.
func (t *tracker) observe(run *rsv1.Run, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !strings.HasPrefix(run.Name, t.prefix) {
		return
	}
	if t.seen != nil {
		t.seen(run)
	}
	if _, ok := t.finishedR[run.Name]; ok {
		return
	}
	st := run.Status
	switch {
	case st.Result == rsv1.RunResultFailed || st.Result == rsv1.RunResultStopped ||
		st.Phase.IsFinal() && st.Phase != rsv1.RunPhaseFinished:
		if t.failed == nil {
			t.failed = fmt.Errorf("run %s ended %s with result %s: %s", run.Name, st.Phase, st.Result, conditionsOf(run))
		}
	case st.Phase == rsv1.RunPhaseFinished:
		t.finishedR[run.Name] = at
		if len(t.finishedR) == t.want {
			close(t.done)
		}
	}
}

// gone records a run deleted: by the archiver, once it is archived.
func (t *tracker) gone(obj any, at time.Time) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	run, ok := obj.(*rsv1.Run)
	if !ok || !strings.HasPrefix(run.Name, t.prefix) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, seen := t.deletedR[run.Name]; seen {
		return
	}
	t.deletedR[run.Name] = at
	if len(t.deletedR) == t.want {
		close(t.archived)
	}
}

func conditionsOf(run *rsv1.Run) string {
	s := ""
	for _, c := range run.Status.Conditions {
		s += fmt.Sprintf("[%s=%s %s: %s] ", c.Type, c.Status, c.Reason, c.Message)
	}
	return s
}

func (t *tracker) progress() (finished int, failed error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.finishedR), t.failed
}

// latencies returns, per task, the time from ready to its ExecutorTask reaching its executor:
// ready is the bench's run create (create call returned) for a root task, and the latest return of
// the bench's Success write of its parents for the others.
func (t *tracker) latencies(tasks []rsv1.Task) (roots, children []time.Duration, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for run, created := range t.created {
		for _, task := range tasks {
			at, ok := t.scheduledT[taskKey{run, task.Name}]
			if !ok {
				return nil, nil, fmt.Errorf("task %s of run %s was never seen scheduled", task.Name, run)
			}
			if len(task.Depends) == 0 {
				roots = append(roots, at.Sub(created))
				continue
			}
			var ready time.Time
			for _, d := range task.Depends {
				end, ok := t.finishedT[taskKey{run, d.Task}]
				if !ok {
					return nil, nil, fmt.Errorf("parent %s of task %s of run %s never finished", d.Task, task.Name, run)
				}
				if end.After(ready) {
					ready = end
				}
			}
			children = append(children, at.Sub(ready))
		}
	}
	return roots, children, nil
}

// last returns when the last run was seen Finished and when the last create returned.
func (t *tracker) last() (finished, created time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, at := range t.finishedR {
		if at.After(finished) {
			finished = at
		}
	}
	for _, at := range t.created {
		if at.After(created) {
			created = at
		}
	}
	return finished, created
}

// serviceResult is what the service benchmark measured.
type serviceResult struct {
	runs, tasks     int
	elapsed         time.Duration
	roots, children []time.Duration
	manager         requestCounts
	executors       requestCounts
	submitter       requestCounts
	reconciles      reconcileCounts
	managerLatency  histogramSummary
	submittedIn     time.Duration
}

// serviceBench is the service benchmark: N runs submitted to the manager and driven to the end by
// fake executors.
type serviceBench struct {
	base       *rest.Config
	ns         string
	runs       int
	prefix     string // of the runs' names, "run-" when empty
	executors  int
	workers    int
	submitters int
	rate       float64
	managerReq *requests
	// managerExited is closed if the manager stops.
	managerExited <-chan struct{}
}

func (b *serviceBench) run(ctx context.Context) (*serviceResult, error) {
	tasks := benchTasks()
	t := newTracker(b.runs)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()

	// Executors, each as its own process: own client, own connection, own watch.
	exReq := newRequests()
	var exs []*executor
	for i := range b.executors {
		ex, err := newExecutor(clientConfig(b.base, exReq), b.ns, fmt.Sprintf("bench-executor-%d", i), b.workers, t)
		if err != nil {
			return nil, err
		}
		if err := ex.start(ctx, &wg); err != nil {
			return nil, err
		}
		exs = append(exs, ex)
	}

	// The submitter and its watch on runs.
	subReq := newRequests()
	sub, err := versioned.NewForConfig(clientConfig(b.base, subReq))
	if err != nil {
		return nil, fmt.Errorf("submitter client: %w", err)
	}
	if err := waitExecutorsReady(ctx, sub, b.ns, b.executors); err != nil {
		return nil, err
	}
	if err := watchRuns(ctx, sub, b.ns, t, &wg); err != nil {
		return nil, err
	}

	mgrBefore, exBefore, subBefore := b.managerReq.snapshot(), exReq.snapshot(), subReq.snapshot()
	recBefore, err := reconciles()
	if err != nil {
		return nil, err
	}
	latBefore, err := schedulingLatencyMetric()
	if err != nil {
		return nil, err
	}

	start := time.Now()
	submitErr := make(chan error, 1)
	go func() { submitErr <- b.submit(ctx, sub, tasks, t) }()

	if err := b.wait(ctx, t, exs, submitErr); err != nil {
		return nil, err
	}
	end, lastCreated := t.last()
	// Counted at the end of the wait, a moment after the last Finished was seen.
	mgrAfter, exAfter, subAfter := b.managerReq.snapshot(), exReq.snapshot(), subReq.snapshot()
	recAfter, err := reconciles()
	if err != nil {
		return nil, err
	}
	latAfter, err := schedulingLatencyMetric()
	if err != nil {
		return nil, err
	}

	roots, children, err := t.latencies(tasks)
	if err != nil {
		return nil, err
	}
	res := &serviceResult{
		runs:           b.runs,
		tasks:          b.runs * len(tasks),
		elapsed:        end.Sub(start),
		roots:          roots,
		children:       children,
		manager:        mgrAfter.since(mgrBefore),
		executors:      exAfter.since(exBefore),
		submitter:      subAfter.since(subBefore),
		reconciles:     recAfter.since(recBefore),
		managerLatency: latAfter.since(latBefore),
		submittedIn:    lastCreated.Sub(start),
	}
	return res, nil
}

// submit creates the runs: all at once from b.submitters goroutines, or at b.rate runs per second.
func (b *serviceBench) submit(ctx context.Context, c versioned.Interface, tasks []rsv1.Task, t *tracker) error {
	names := make(chan string)
	go func() {
		defer close(names)
		var tick *time.Ticker
		if b.rate > 0 {
			tick = time.NewTicker(time.Duration(float64(time.Second) / b.rate))
			defer tick.Stop()
		}
		for i := range b.runs {
			if tick != nil && i > 0 {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
			select {
			case <-ctx.Done():
				return
			case names <- fmt.Sprintf("%s%05d", cmp.Or(b.prefix, "run-"), i):
			}
		}
	}()
	errs := make(chan error, b.submitters)
	var wg sync.WaitGroup
	for range b.submitters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range names {
				run := &rsv1.Run{
					ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: b.ns},
					Spec:       rsv1.RunSpec{Tasks: tasks},
				}
				if _, err := c.RunserviceV1alpha1().Runs(b.ns).Create(ctx, run, metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("creating run %s: %w", name, err)
					return
				}
				t.runCreated(name, time.Now())
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// wait waits until every run is Finished, and fails on the first failed run, executor or submission.
func (b *serviceBench) wait(ctx context.Context, t *tracker, exs []*executor, submitErr <-chan error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	lastReport := time.Now()
	for {
		select {
		case <-t.done:
			return nil
		case err := <-submitErr:
			if err != nil {
				return err
			}
			submitErr = nil
		case <-b.managerExited:
			return errors.New("the manager stopped during the benchmark")
		case <-ctx.Done():
			n, _ := t.progress()
			return fmt.Errorf("%d of %d runs finished before the timeout: %w", n, b.runs, ctx.Err())
		case <-tick.C:
			n, failed := t.progress()
			if failed != nil {
				return failed
			}
			for _, ex := range exs {
				if err := ex.failure(); err != nil {
					return err
				}
			}
			if time.Since(lastReport) >= 5*time.Second {
				fmt.Fprintf(os.Stderr, "  ... %d/%d runs finished\n", n, b.runs)
				lastReport = time.Now()
			}
		}
	}
}

// waitExecutorsReady waits until the manager reports every executor Ready, so that the first runs do
// not meet "no executor" and its retry delay.
func waitExecutorsReady(ctx context.Context, c versioned.Interface, ns string, want int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		list, err := c.RunserviceV1alpha1().Executors(ns).List(ctx, metav1.ListOptions{})
		ready := 0
		if err == nil {
			for _, ex := range list.Items {
				for _, cond := range ex.Status.Conditions {
					if cond.Type == rsv1.ConditionReady && cond.Status == metav1.ConditionTrue {
						ready++
					}
				}
			}
			if ready == want {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the manager to report %d executors Ready (%d are, last error %v): %w", want, ready, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// percentile returns the p-th percentile (0 < p <= 1) of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func sortedCopy(ds ...[]time.Duration) []time.Duration {
	var out []time.Duration
	for _, d := range ds {
		out = append(out, d...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// watchRuns feeds every change of the namespace's runs to the tracker until ctx ends (wg waits for
// the informer to stop), and returns once the watch has synced.
func watchRuns(ctx context.Context, sub versioned.Interface, ns string, t *tracker, wg *sync.WaitGroup) error {
	factory := externalversions.NewSharedInformerFactoryWithOptions(sub, 0, externalversions.WithNamespace(ns))
	runs := factory.Runservice().V1alpha1().Runs().Informer()
	if _, err := runs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { t.observe(obj.(*rsv1.Run), time.Now()) },
		UpdateFunc: func(_, obj any) { t.observe(obj.(*rsv1.Run), time.Now()) },
		DeleteFunc: func(obj any) { t.gone(obj, time.Now()) },
	}); err != nil {
		return fmt.Errorf("watching runs: %w", err)
	}
	factory.Start(ctx.Done())
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		factory.Shutdown() // waits for the informer, which stops with ctx
	}()
	if !cache.WaitForCacheSync(ctx.Done(), runs.HasSynced) {
		return errors.New("the watch on runs did not sync")
	}
	return nil
}
