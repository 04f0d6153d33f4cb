package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	rsexecutor "runservice.dev/runservice/executor"
	"runservice.dev/runservice/executor/driver/docker"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

// dockerBench measures the Docker executor: the per-task overhead of the service (ExecutorTask created
// to final status, one task at a time) against a raw create+start+wait+remove of the same container
// through the Docker API; a run that fans out to 10 tasks (created to Finished, one at a time)
// against 10 raw containers in parallel, all in this run; and runs/s of such runs submitted at once.
type dockerBench struct {
	env     *testenv.Env
	ns      string
	tasks   int
	fanRuns int
}

func (b *dockerBench) run(ctx context.Context, out io.Writer) error {
	setup := exec.CommandContext(ctx, filepath.Join(b.env.Root, "hack", "docker.sh"))
	setup.Stderr = os.Stderr
	if err := setup.Run(); err != nil {
		fmt.Fprintf(out, "docker: no Docker daemon here (%v): the Docker figures are not measured\n", err)
		return nil
	}
	tmp, err := os.MkdirTemp("", "runservice-bench-docker-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	build := exec.CommandContext(ctx, "go", "build", "-o", tmp+"/", "./cmd/toolbox")
	build.Dir, build.Env, build.Stderr = b.env.Root, append(os.Environ(), "CGO_ENABLED=0"), os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building the toolbox: %w", err)
	}
	drv, err := docker.New("bench-docker")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  ... docker: raw container baseline\n")
	raw, err := rawLives(ctx, drv, b.tasks, 1)
	if err != nil {
		return err
	}

	port, err := freePort()
	if err != nil {
		return err
	}
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	exDone := make(chan error, 1)
	go func() {
		exDone <- rsexecutor.Run(ectx, b.env.Config, drv, rsexecutor.Options{
			Name: "bench-docker", Namespace: b.ns, Driver: rsv1.DriverDocker, Permanent: true,
			// As deployed: https, with a certificate of the namespace's CA; the manager fetches the logs.
			Listen: fmt.Sprintf("127.0.0.1:%d", port), Endpoint: fmt.Sprintf("https://127.0.0.1:%d", port), DataDir: filepath.Join(tmp, "data"), Toolbox: filepath.Join(tmp, "toolbox"),
			ObjectStore: objectstore.FileURL(filepath.Join(tmp, "store")), RenewInterval: time.Second, LeaseDuration: 5 * time.Second,
		})
	}()
	defer func() { cancel(); <-exDone }()
	c, err := client.NewWithWatch(rest.CopyConfig(b.env.Config), client.Options{Scheme: manager.Scheme()})
	if err != nil {
		return err
	}
	if err := waitReady(ctx, c, b.ns, "bench-docker"); err != nil {
		select {
		case exErr := <-exDone:
			exDone <- exErr // for the deferred stop
			return fmt.Errorf("%w: the executor stopped: %v", err, exErr)
		default:
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "  ... docker: %d one-step tasks through the service, one at a time\n", b.tasks)
	svc, err := b.service(ctx, c)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  ... docker: %d runs of 10 parallel tasks, one at a time, and as many batches of 10 raw containers\n", 2*b.fanRuns)
	fan, err := b.fanEach(ctx, c, 2*b.fanRuns)
	if err != nil {
		return err
	}
	rawFan, err := rawLives(ctx, drv, 2*b.fanRuns, 10)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  ... docker: %d runs of 10 parallel tasks at once\n", b.fanRuns)
	fanSecs, err := b.fanOut(ctx, c)
	if err != nil {
		return err
	}

	rawMean, svcMean := mean(raw), mean(svc)
	fmt.Fprintf(out, "docker raw: create+start+wait+remove of busybox `true`: %s (%d containers)\n", meanP50(raw), len(raw))
	fmt.Fprintf(out, "docker service: one-step task, ExecutorTask created -> final status: %s (%d tasks, one at a time)\n", meanP50(svc), len(svc))
	fmt.Fprintf(out, "docker ratio: service/raw = %.2f (overhead per task %s: toolbox, status writes, start handshake); issue 10's target <= 1.25: %s\n",
		float64(svcMean)/float64(rawMean), ms(svcMean-rawMean), metOrMissed(float64(svcMean)/float64(rawMean) <= 1.25))
	fanRatio := float64(mean(fan)) / float64(mean(rawFan))
	fmt.Fprintf(out, "docker raw fan-out: 10 containers created+started+waited+removed in parallel: %s (%d batches)\n", meanP50(rawFan), len(rawFan))
	fmt.Fprintf(out, "docker service fan-out: a run of 10 parallel tasks, created -> Finished: %s (%d runs, one at a time)\n", meanP50(fan), len(fan))
	fmt.Fprintf(out, "docker fan-out ratio: run/raw = %.2f; issue 10's target <= 1.5: %s\n", fanRatio, metOrMissed(fanRatio <= 1.5))
	fmt.Fprintf(out, "docker fan-out at once: %d runs x 10 parallel tasks in %.2fs = %.2f runs/s (%.1f tasks/s)\n",
		b.fanRuns, fanSecs, float64(b.fanRuns)/fanSecs, float64(b.fanRuns*10)/fanSecs)
	return nil
}

// fanEach times runs of 10 parallel tasks, one at a time, from their create to Finished as a watch
// sees it, after one that warms the executor up.
func (b *dockerBench) fanEach(ctx context.Context, c client.WithWatch, runs int) ([]time.Duration, error) {
	var out []time.Duration
	for i := range runs + 1 {
		name := fmt.Sprintf("each-%d", i)
		w, err := c.Watch(ctx, &rsv1.RunList{}, client.InNamespace(b.ns), client.MatchingFields{"metadata.name": name})
		if err != nil {
			return nil, err
		}
		start := time.Now()
		if err := c.Create(ctx, benchRun(b.ns, name, 10)); err != nil {
			w.Stop()
			return nil, err
		}
		took, err := func() (time.Duration, error) {
			defer w.Stop()
			for ev := range w.ResultChan() {
				run, ok := ev.Object.(*rsv1.Run)
				if !ok || run.Status.Phase != rsv1.RunPhaseFinished {
					continue
				}
				if run.Status.Result != rsv1.RunResultSuccess {
					return 0, fmt.Errorf("run %s: %s", run.Name, run.Status.Result)
				}
				return time.Since(start), nil
			}
			return 0, fmt.Errorf("run %s: the watch ended before it finished", name)
		}()
		if err != nil {
			return nil, err
		}
		if i > 0 {
			out = append(out, took)
		}
	}
	return out, nil
}

// metOrMissed is the verdict on a target.
func metOrMissed(met bool) string {
	if met {
		return "met"
	}
	return "MISSED"
}

// rawLives times batches of width bare container lives in parallel through the Docker API, after one
// batch that warms the daemon up: width 1 is a task's baseline, 10 a 10-task fan-out's.
func rawLives(ctx context.Context, drv *docker.Driver, batches, width int) ([]time.Duration, error) {
	var out []time.Duration
	for i := range batches + 1 {
		start := time.Now()
		errs := make(chan error, width)
		for range width {
			go func() { errs <- rawContainer(ctx, drv) }()
		}
		for range width {
			if err := <-errs; err != nil {
				return nil, err
			}
		}
		if i > 0 {
			out = append(out, time.Since(start))
		}
	}
	return out, nil
}

// rawContainer creates, starts, waits for and removes a busybox container running `true`.
func rawContainer(ctx context.Context, drv *docker.Driver) error {
	cli := drv.Client()
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: "busybox:1.36", Cmd: []string{"/bin/sh", "-c", "true"}}, nil, nil, nil, "")
	if err != nil {
		return fmt.Errorf("raw create: %w", err)
	}
	if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("raw start: %w", err)
	}
	waitC, errC := cli.ContainerWait(ctx, c.ID, container.WaitConditionNotRunning)
	select {
	case <-waitC:
	case err := <-errC:
		return fmt.Errorf("raw wait: %w", err)
	}
	if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
		return fmt.Errorf("raw remove: %w", err)
	}
	return nil
}

// service times one-step tasks from their ExecutorTask's creation to its final status, as seen by a watch.
func (b *dockerBench) service(ctx context.Context, c client.WithWatch) ([]time.Duration, error) {
	var out []time.Duration
	for i := range b.tasks + 1 {
		name := fmt.Sprintf("one-%d", i)
		w, err := c.Watch(ctx, &rsv1.ExecutorTaskList{}, client.InNamespace(b.ns), client.MatchingLabels{rsv1.LabelRun: name})
		if err != nil {
			return nil, err
		}
		if err := c.Create(ctx, benchRun(b.ns, name, 1)); err != nil {
			w.Stop()
			return nil, err
		}
		var created time.Time
		for ev := range w.ResultChan() {
			et, ok := ev.Object.(*rsv1.ExecutorTask)
			if !ok {
				continue
			}
			if ev.Type == watch.Added && created.IsZero() {
				created = time.Now()
			}
			if et.Status.Phase.IsFinal() {
				if et.Status.Phase != rsv1.TaskPhaseSuccess {
					w.Stop()
					return nil, fmt.Errorf("task %s: %s %s", et.Name, et.Status.Phase, et.Status.Message)
				}
				if i > 0 {
					out = append(out, time.Since(created))
				}
				break
			}
		}
		w.Stop()
	}
	return out, nil
}

// fanOut submits runs of 10 parallel tasks at once and times them to Finished.
func (b *dockerBench) fanOut(ctx context.Context, c client.WithWatch) (float64, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, b.fanRuns)
	for i := range b.fanRuns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Create(ctx, benchRun(b.ns, fmt.Sprintf("fan-%d", i), 10)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, err
	}
	for {
		var list rsv1.RunList
		if err := c.List(ctx, &list, client.InNamespace(b.ns)); err != nil {
			return 0, err
		}
		done := 0
		for _, r := range list.Items {
			if r.Status.Phase == rsv1.RunPhaseFinished && strings.HasPrefix(r.Name, "fan-") { // not fanEach's
				if r.Status.Result != rsv1.RunResultSuccess {
					return 0, fmt.Errorf("run %s: %s", r.Name, r.Status.Result)
				}
				done++
			}
		}
		if done == b.fanRuns {
			return time.Since(start).Seconds(), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func benchRun(ns, name string, tasks int) *rsv1.Run {
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	for i := range tasks {
		run.Spec.Tasks = append(run.Spec.Tasks, rsv1.Task{
			Name:       fmt.Sprintf("t%d", i),
			Containers: []rsv1.Container{{Image: "busybox:1.36"}},
			Steps:      []rsv1.Step{{Run: &rsv1.RunStep{Name: ptr.To("true"), Command: "true"}}},
		})
	}
	return run
}

func waitReady(ctx context.Context, c client.Client, ns, name string) error {
	for i := 0; i < 300; i++ {
		ex := &rsv1.Executor{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, ex); err == nil {
			for _, cond := range ex.Status.Conditions {
				if cond.Type == rsv1.ConditionReady && cond.Status == metav1.ConditionTrue {
					return nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("executor %s did not become Ready", name)
}

// meanP50 is "mean X p50 Y" of ds.
func meanP50(ds []time.Duration) string {
	return fmt.Sprintf("mean %s p50 %s", ms(mean(ds)), ms(percentile(sortedCopy(ds), 0.5)))
}

func mean(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}
