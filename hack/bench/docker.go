package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
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
// through the Docker API, both in this run; and runs/s of runs that fan out to 10 tasks.
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
	raw, err := b.raw(ctx, drv)
	if err != nil {
		return err
	}

	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	exDone := make(chan error, 1)
	go func() {
		exDone <- rsexecutor.Run(ectx, b.env.Config, drv, rsexecutor.Options{
			Name: "bench-docker", Namespace: b.ns, Driver: rsv1.DriverDocker, Permanent: true,
			Listen: "127.0.0.1:0", DataDir: filepath.Join(tmp, "data"), Toolbox: filepath.Join(tmp, "toolbox"),
			ObjectStore: objectstore.FileURL(filepath.Join(tmp, "store")), RenewInterval: time.Second, LeaseDuration: 5 * time.Second,
		})
	}()
	defer func() { cancel(); <-exDone }()
	c, err := client.NewWithWatch(rest.CopyConfig(b.env.Config), client.Options{Scheme: manager.Scheme()})
	if err != nil {
		return err
	}
	if err := waitReady(ctx, c, b.ns, "bench-docker"); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  ... docker: %d one-step tasks through the service, one at a time\n", b.tasks)
	svc, err := b.service(ctx, c)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "  ... docker: %d runs of 10 parallel tasks\n", b.fanRuns)
	fanSecs, err := b.fanOut(ctx, c)
	if err != nil {
		return err
	}

	rawSorted, svcSorted := sortedCopy(raw), sortedCopy(svc)
	rawMean, svcMean := mean(raw), mean(svc)
	fmt.Fprintf(out, "docker raw: create+start+wait+remove of busybox `true`: mean %s p50 %s (%d containers)\n",
		ms(rawMean), ms(percentile(rawSorted, 0.5)), len(raw))
	fmt.Fprintf(out, "docker service: one-step task, ExecutorTask created -> final status: mean %s p50 %s (%d tasks, one at a time)\n",
		ms(svcMean), ms(percentile(svcSorted, 0.5)), len(svc))
	fmt.Fprintf(out, "docker ratio: service/raw = %.2f (overhead per task %s: toolbox, status writes, start handshake)\n",
		float64(svcMean)/float64(rawMean), ms(svcMean-rawMean))
	fmt.Fprintf(out, "docker fan-out: %d runs x 10 parallel tasks in %.2fs = %.2f runs/s (%.1f tasks/s)\n",
		b.fanRuns, fanSecs, float64(b.fanRuns)/fanSecs, float64(b.fanRuns*10)/fanSecs)
	return nil
}

// raw times the bare container life through the Docker API.
func (b *dockerBench) raw(ctx context.Context, drv *docker.Driver) ([]time.Duration, error) {
	cli := drv.Client()
	var out []time.Duration
	for i := range b.tasks + 1 {
		start := time.Now()
		c, err := cli.ContainerCreate(ctx, &container.Config{Image: "busybox:1.36", Cmd: []string{"/bin/sh", "-c", "true"}}, nil, nil, nil, "")
		if err != nil {
			return nil, fmt.Errorf("raw create: %w", err)
		}
		if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
			return nil, fmt.Errorf("raw start: %w", err)
		}
		waitC, errC := cli.ContainerWait(ctx, c.ID, container.WaitConditionNotRunning)
		select {
		case <-waitC:
		case err := <-errC:
			return nil, fmt.Errorf("raw wait: %w", err)
		}
		if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
			return nil, fmt.Errorf("raw remove: %w", err)
		}
		if i > 0 { // the first one warms the daemon up
			out = append(out, time.Since(start))
		}
	}
	return out, nil
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
			if r.Status.Phase == rsv1.RunPhaseFinished && len(r.Spec.Tasks) == 10 {
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
