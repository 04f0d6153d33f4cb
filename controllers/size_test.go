package controllers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/controllers"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/pkg/dag"
)

// bigRun is a run of tasks×steps with names as long as the schema allows.
func bigRun(ns, name string, tasks, steps int) *rsv1.Run {
	run := newRun(ns, name)
	for i := range tasks {
		tk := rsv1.Task{
			Name:       fmt.Sprintf("t%03d-%s", i, strings.Repeat("x", 58)),
			Containers: []rsv1.Container{{Image: "busybox:1.36"}},
		}
		for j := range steps {
			tk.Steps = append(tk.Steps, rsv1.Step{Run: &rsv1.RunStep{
				Name:    ptr.To(fmt.Sprintf("s%02d-%s", j, strings.Repeat("y", 124))),
				Command: "true",
			}})
		}
		run.Spec.Tasks = append(run.Spec.Tasks, tk)
	}
	return run
}

// TestOversizedRunIsRefused: a run whose status could outgrow what etcd stores (256 tasks of 12
// steps with long names: the spec fits, the status of 3072 steps does not) would never be able to
// record its end and would hold its change group for ever; it is refused at admission, with the field
// and the sizes named, and nothing is created. So is an environment too large to copy into every task.
func TestOversizedRunIsRefused(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	run := bigRun(ns, "huge", 256, 12)
	err := k8s.Create(ctx, run)
	if err == nil || !apierrors.IsInvalid(err) {
		t.Fatalf("creating a run of 256 tasks × 12 steps: %v, want it refused as Invalid", err)
	}
	for _, want := range []string{"spec.tasks", "the run is too large", "3072 steps"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	env := newRun(ns, "big-env", task("a"))
	for i := range 20 {
		env.Spec.Environment = append(env.Spec.Environment, rsv1.EnvVar{Name: fmt.Sprintf("V%d", i), Value: strings.Repeat("v", 4000)})
	}
	if err := k8s.Create(ctx, env); err == nil || !strings.Contains(err.Error(), "spec.environment") {
		t.Fatalf("creating a run with 80 KB of environment: %v, want it refused naming spec.environment", err)
	}
	var list rsv1.RunList
	if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil || len(list.Items) != 0 {
		t.Fatalf("runs created: %d (%v), want none", len(list.Items), err)
	}
}

// TestLargestRunFinishes: the largest run that admission accepts (256 tasks with the longest names,
// as many steps as fit) runs to its end with every step reported and messages far longer than a
// status keeps.
func TestLargestRunFinishes(t *testing.T) {
	ns := newNamespace(t)
	name := strings.Repeat("r", 180)
	steps := 1
	for len(dag.ValidateSize(bigRun(ns, name, 256, steps+1))) == 0 {
		steps++
	}
	run := bigRun(ns, name, 256, steps)
	// Fill what is left of the budget with commands.
	room := rsv1.MaxRunBytes - 16<<10 - dag.StatusBound(run) - len(mustJSON(t, run))
	for i := 0; room > 0; i++ {
		n := min(room, 60000)
		run.Spec.Tasks[i].Steps[0].Run.Command = "true #" + strings.Repeat("c", n-6)
		room -= n
	}
	if errs := dag.ValidateSize(run); len(errs) > 0 {
		t.Fatalf("the test's run does not fit: %v", errs)
	}
	t.Logf("256 tasks × %d steps, spec %d bytes, status bound %d bytes", steps, len(mustJSON(t, run)), dag.StatusBound(run))
	startExecutor(t, ns, "big")
	createRun(t, run)

	ctx := context.Background()
	long := strings.Repeat("é", 40000) // 80 KB, cut on a rune boundary
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var list rsv1.ExecutorTaskList
		if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for i := range list.Items {
			et := &list.Items[i]
			if et.Status.Phase.IsFinal() {
				continue
			}
			now := metav1.Now()
			et.Status.Phase, et.Status.StartTime, et.Status.EndTime = rsv1.TaskPhaseSuccess, &now, &now
			et.Status.Message = long
			et.Status.Steps = nil
			for _, s := range et.Spec.Task.Steps {
				et.Status.Steps = append(et.Status.Steps, rsv1.StepStatus{
					Name: *s.Run.Name, Phase: rsv1.StepPhaseSuccess, ExitCode: ptr.To[int32](0), StartTime: &now, EndTime: &now,
				})
			}
			if err := k8s.Status().Update(ctx, et); err != nil && !apierrors.IsConflict(err) {
				t.Fatalf("reporting %s: %v", et.Name, err)
			}
		}
		got := getRun(t, ns, name)
		if got.Status.Phase == rsv1.RunPhaseFinished {
			if got.Status.Result != rsv1.RunResultSuccess {
				t.Fatalf("result %s", got.Status.Result)
			}
			for _, ts := range got.Status.Tasks {
				if len(ts.Message) > rsv1.MaxMessageLength || len(ts.Steps) != steps {
					t.Fatalf("task %s: message of %d bytes, %d steps", ts.Name, len(ts.Message), len(ts.Steps))
				}
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the largest run did not finish: phase %s, progress %s", got.Status.Phase, got.Status.Progress)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func mustJSON(t *testing.T, run *rsv1.Run) []byte {
	t.Helper()
	data, err := json.Marshal(run)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestMetricsScrapeCopiesNoRuns: the runservice_runs gauge counts runs by phase from the cache; a
// scrape must not deep-copy every run (a big installation has many, each up to a megabyte).
func TestMetricsScrapeCopiesNoRuns(t *testing.T) {
	ns := newNamespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := cache.New(env.Config, cache.Options{Scheme: manager.Scheme(), DefaultNamespaces: map[string]cache.Config{ns: {}}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.Start(ctx) }()
	const runs = 20
	for i := range runs {
		// What a copy costs is its structs, slices and pointers (strings are shared): many tasks.
		run := bigRun(ns, fmt.Sprintf("m%d", i), 64, 8)
		run.Spec.Suspend = ptr.To(true)
		createRun(t, run)
	}
	eventually(t, 30*time.Second, "the cache holding the runs", func() (bool, error) {
		var list rsv1.RunList
		err := c.List(ctx, &list)
		return len(list.Items) == runs, err
	})
	collector := controllers.NewRunPhaseCollector(c)
	scrape := func() int {
		ch := make(chan prometheus.Metric, 16)
		go func() { collector.Collect(ch); close(ch) }()
		n := 0
		for range ch {
			n++
		}
		return n
	}
	if n := scrape(); n == 0 {
		t.Fatal("the collector reported nothing")
	}
	// The least a scrape allocated of ten: the rest of the process (the manager still folding the
	// runs of earlier tests) allocates too meanwhile, and only ever adds to what is measured.
	perScrape := uint64(math.MaxUint64)
	for range 10 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		scrape()
		runtime.ReadMemStats(&after)
		perScrape = min(perScrape, after.TotalAlloc-before.TotalAlloc)
	}
	// A deep copy of 20 runs of 64 tasks of 8 steps is megabytes a scrape; the list itself (a shallow
	// copy of each Run's struct) a few KB.
	if perScrape > 400<<10 {
		t.Fatalf("a scrape allocated %d bytes for %d runs of 64 tasks: it copies the runs", perScrape, runs)
	}
	t.Logf("a scrape allocated %d bytes", perScrape)
}

// TestManagerCachesOnlyExecutorLeases: the manager watches Leases to tell live executors; it must
// not cache every Lease of the cluster (leader elections, node heartbeats: thousands in a big one).
func TestManagerCachesOnlyExecutorLeases(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	foreign := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "someone-elses", Namespace: ns}}
	if err := k8s.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	startExecutor(t, ns, "labelled")
	mgrC := managerCache()
	eventually(t, 30*time.Second, "the executor's Lease in the manager's cache", func() (bool, error) {
		err := mgrC.Get(ctx, client.ObjectKey{Namespace: ns, Name: "labelled"}, &coordinationv1.Lease{})
		return err == nil, client.IgnoreNotFound(err)
	})
	if err := mgrC.Get(ctx, client.ObjectKeyFromObject(foreign), &coordinationv1.Lease{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the manager's cache holds a Lease that is no executor's (err %v)", err)
	}
}
