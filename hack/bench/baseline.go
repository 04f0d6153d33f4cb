package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

// baselineResult is the raw rate of the apiserver for what an executor does per task.
type baselineResult struct {
	objects int
	elapsed time.Duration
	writes  requestCounts
}

func (r *baselineResult) rate() float64 { return float64(r.objects) / r.elapsed.Seconds() }

func (r *baselineResult) writeRate() float64 {
	return float64(r.writes.totalWrites()) / r.elapsed.Seconds()
}

// plus pools two baselines.
func (r *baselineResult) plus(o *baselineResult) *baselineResult {
	w := requestCounts{writes: map[string]int{}, conflicts: map[string]int{}, reads: r.writes.reads + o.writes.reads}
	for _, c := range []requestCounts{r.writes, o.writes} {
		for k, v := range c.writes {
			w.writes[k] += v
		}
		for k, v := range c.conflicts {
			w.conflicts[k] += v
		}
	}
	return &baselineResult{objects: r.objects + o.objects, elapsed: r.elapsed + o.elapsed, writes: w}
}

// baselineBench creates ExecutorTasks and writes each one's status once (Success), with the
// executors' concurrency: `clients` clients (one connection each, like the executors) of `workers`
// goroutines each. The ExecutorTasks name an executor that does not exist, so the manager, which
// watches them too, has nothing to do for them.
type baselineBench struct {
	base    *rest.Config
	ns      string
	prefix  string // of the ExecutorTasks' names, one per pass
	objects int
	clients int
	workers int
}

func (b *baselineBench) run(ctx context.Context) (*baselineResult, error) {
	reqs := newRequests()
	var next atomic.Int64
	errs := make(chan error, b.clients*b.workers)
	var wg sync.WaitGroup
	var cs []versioned.Interface
	for range b.clients {
		c, err := versioned.NewForConfig(clientConfig(b.base, reqs))
		if err != nil {
			return nil, fmt.Errorf("baseline client: %w", err)
		}
		cs = append(cs, c)
	}
	// All writers at once, until n objects are written from index first on.
	pass := func(first, n int) error {
		next.Store(int64(first))
		for _, c := range cs {
			for range b.workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := int(next.Add(1)) - 1
						if i >= first+n || ctx.Err() != nil {
							return
						}
						if err := b.one(ctx, c, i); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
		}
		wg.Wait()
		select {
		case err := <-errs:
			return err
		default:
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		return nil
	}
	// A warm-up pass, untimed: the first requests of a fresh apiserver and connection are slower.
	warmup := max(20, b.objects/10)
	if err := pass(0, warmup); err != nil {
		return nil, err
	}
	before := reqs.snapshot()
	start := time.Now()
	if err := pass(warmup, b.objects); err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	return &baselineResult{objects: b.objects, elapsed: elapsed, writes: reqs.snapshot().since(before)}, nil
}

func (b *baselineBench) one(ctx context.Context, c versioned.Interface, i int) error {
	tasks := c.RunserviceV1alpha1().ExecutorTasks(b.ns)
	name := fmt.Sprintf("%s-%05d", b.prefix, i)
	et := &rsv1.ExecutorTask{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: b.ns,
			Labels:    map[string]string{rsv1.LabelRun: "baseline", rsv1.LabelTask: "a", rsv1.LabelExecutor: "baseline-nobody"},
		},
		Spec: rsv1.ExecutorTaskSpec{
			RunName:     "baseline",
			TaskName:    "a",
			Executor:    "baseline-nobody",
			ExecutorUID: "00000000-0000-0000-0000-000000000000",
			Task:        benchTasks()[0],
		},
	}
	created, err := tasks.Create(ctx, et, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("baseline: creating executor task %s: %w", name, err)
	}
	report(created, rsv1.TaskPhaseSuccess)
	if _, err := tasks.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("baseline: writing status of executor task %s: %w", name, err)
	}
	return nil
}
