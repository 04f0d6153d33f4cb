// Package docker is the executor's Docker driver: a task runs as containers on a local Docker daemon.
// The main container's entrypoint is the toolbox, which runs the steps; service containers share the
// main container's network namespace.
package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor"
	"runservice.dev/runservice/executor/toolbox"
)

// Labels put on containers besides the runservice ones.
const (
	labelRole = "runservice.dev/role"
	roleMain  = "main"
)

// Driver runs tasks on a Docker daemon.
type Driver struct {
	client   *client.Client
	executor string
}

var _ executor.Driver = (*Driver)(nil)

// New connects to the daemon of the environment (DOCKER_HOST, or the default socket), negotiating the
// API version (the daemon may be older than the client).
func New(executorName string) (*Driver, error) {
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("connecting to docker: %w", err)
	}
	return &Driver{client: c, executor: executorName}, nil
}

// Client is the Docker client (for tests and tools).
func (d *Driver) Client() *client.Client { return d.client }

// Archs implements executor.Driver.
func (d *Driver) Archs(ctx context.Context) ([]string, error) {
	info, err := d.client.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("asking docker for its architecture: %w", err)
	}
	switch info.Architecture {
	case "x86_64":
		return []string{"amd64"}, nil
	case "aarch64":
		return []string{"arm64"}, nil
	case "":
		return []string{runtime.GOARCH}, nil
	}
	return []string{info.Architecture}, nil
}

// Start implements executor.Driver.
func (d *Driver) Start(ctx context.Context, t *executor.Task) error {
	spec := &t.ExecutorTask.Spec.Task
	for _, c := range spec.Containers {
		if err := d.ensureImage(ctx, c.Image); err != nil {
			return err
		}
	}
	main := spec.Containers[0]
	labels := map[string]string{labelRole: roleMain}
	for k, v := range t.Labels {
		labels[k] = v
	}
	cfg := &container.Config{
		Image:      main.Image,
		Entrypoint: []string{toolbox.DefaultDir + "/toolbox", "run"},
		Cmd:        []string{},
		Env:        append(slices.Clone(t.Env), t.Builtin...),
		Labels:     labels,
	}
	if main.User != nil {
		cfg.User = *main.User
	}
	host := &container.HostConfig{
		Binds: []string{
			t.Dir + ":" + toolbox.DefaultDir,
			t.Toolbox + ":" + toolbox.DefaultDir + "/toolbox:ro",
		},
		Privileged: main.IsPrivileged(),
		// The task's directory is the executor's too: a device node made there could be opened by the
		// executor (root on the host) in the instant between its type check and its open.
		CapDrop: []string{"MKNOD"},
		// An init as PID 1 reaps what the steps leave behind.
		Init:      ptr.To(true),
		Resources: limits(&main),
	}
	created, err := d.client.ContainerCreate(ctx, cfg, host, nil, nil, containerName(t.ExecutorTask, 0))
	if cerrdefs.IsConflict(err) {
		// The name is taken: by this task's main container (the executor is adopting it), or by
		// another task's whose uid shares its first 8 characters, which is no reason to touch it.
		if _, ierr := d.mainID(ctx, string(t.ExecutorTask.UID)); ierr == nil {
			return fmt.Errorf("%w: main container %s", executor.ErrExists, containerName(t.ExecutorTask, 0))
		}
	}
	if err != nil {
		return fmt.Errorf("creating the main container (image %s): %w", main.Image, err)
	}
	if err := d.client.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("starting the main container (image %s): %w", main.Image, err)
	}
	for i, svc := range spec.Containers[1:] {
		labels := map[string]string{labelRole: fmt.Sprintf("service-%d", i+1)}
		for k, v := range t.Labels {
			labels[k] = v
		}
		cfg := &container.Config{Image: svc.Image, Env: serviceEnv(t.ExecutorTask, &svc), Labels: labels}
		if len(svc.Command) > 0 {
			cfg.Entrypoint = svc.Command
			cfg.Cmd = []string{}
		}
		if svc.User != nil {
			cfg.User = *svc.User
		}
		host := &container.HostConfig{NetworkMode: container.NetworkMode("container:" + created.ID), Privileged: svc.IsPrivileged(), Resources: limits(&svc)}
		sc, err := d.client.ContainerCreate(ctx, cfg, host, nil, nil, containerName(t.ExecutorTask, i+1))
		if err != nil {
			return fmt.Errorf("creating service container %d (image %s): %w", i+1, svc.Image, err)
		}
		if err := d.client.ContainerStart(ctx, sc.ID, container.StartOptions{}); err != nil {
			return fmt.Errorf("starting service container %d (image %s): %w", i+1, svc.Image, err)
		}
	}
	return t.Started()
}

// limits maps a container's cpu and memory limits to Docker's.
func limits(c *rsv1.Container) container.Resources {
	var r container.Resources
	if c.Resources == nil {
		return r
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		r.Memory = q.Value()
	}
	if q, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		r.NanoCPUs = q.MilliValue() * 1_000_000
	}
	return r
}

func containerName(et *rsv1.ExecutorTask, i int) string {
	name := fmt.Sprintf("rs-%s-%s", string(et.UID)[:8], et.Spec.TaskName)
	if i > 0 {
		name += fmt.Sprintf("-svc%d", i)
	}
	return name
}

func serviceEnv(et *rsv1.ExecutorTask, c *rsv1.Container) []string {
	var env []string
	for _, e := range et.Spec.Environment {
		env = append(env, e.Name+"="+e.Value)
	}
	for _, e := range c.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	return env
}

// ensureImage pulls an image that is not present.
func (d *Driver) ensureImage(ctx context.Context, ref string) error {
	if _, err := d.client.ImageInspect(ctx, ref); err == nil {
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("inspecting image %s: %w", ref, err)
	}
	rc, err := d.client.ImagePull(ctx, ref, image.PullOptions{})
	if err != nil {
		return fmt.Errorf("image %s is not present and cannot be pulled: %w", ref, err)
	}
	defer rc.Close()
	out, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("pulling image %s: %w", ref, err)
	}
	if i := strings.Index(string(out), `"error"`); i >= 0 {
		return fmt.Errorf("pulling image %s: %s", ref, strings.TrimSpace(string(out[i:])))
	}
	return nil
}

// containers lists the task's containers, main first.
func (d *Driver) containers(ctx context.Context, uid string) ([]container.Summary, error) {
	list, err := d.client.ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", rsv1.LabelExecutorTaskUID+"="+uid)),
	})
	if err != nil {
		return nil, fmt.Errorf("listing containers of task %s: %w", uid, err)
	}
	for i, c := range list {
		if c.Labels[labelRole] == roleMain {
			list[0], list[i] = list[i], list[0]
		}
	}
	return list, nil
}

func (d *Driver) mainID(ctx context.Context, uid string) (string, error) {
	list, err := d.containers(ctx, uid)
	if err != nil {
		return "", err
	}
	if len(list) == 0 || list[0].Labels[labelRole] != roleMain {
		return "", executor.ErrNotFound
	}
	return list[0].ID, nil
}

// Inspect implements executor.Driver.
func (d *Driver) Inspect(ctx context.Context, uid string) (*executor.State, error) {
	id, err := d.mainID(ctx, uid)
	if err != nil {
		return nil, err
	}
	info, err := d.client.ContainerInspect(ctx, id)
	if cerrdefs.IsNotFound(err) {
		return nil, executor.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("inspecting container %s: %w", id, err)
	}
	st := &executor.State{Running: info.State.Running || info.State.Restarting, Started: info.State.Status != "created", ExitCode: info.State.ExitCode}
	switch {
	case info.State.Status == "created":
		// Created and never started (the executor stopped in between): exit code 0 and no step run
		// must not read as a task that succeeded.
		st.ExitCode, st.Message = -1, "the task's container was created but never started (the executor stopped in between); none of its steps ran"
	case info.State.OOMKilled:
		st.Message = "the container ran out of memory"
	case info.State.Error != "":
		st.Message = info.State.Error
	}
	return st, nil
}

// Wait implements executor.Driver. A lost connection (the daemon restarting) is waited out.
func (d *Driver) Wait(ctx context.Context, uid string) (*executor.State, error) {
	for {
		st, err := d.Inspect(ctx, uid)
		if err != nil && !errors.Is(err, executor.ErrNotFound) && ctx.Err() == nil {
			// The daemon may be restarting: try again.
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		if err != nil || !st.Running {
			return st, err
		}
		id, err := d.mainID(ctx, uid)
		if err != nil {
			continue
		}
		waitC, errC := d.client.ContainerWait(ctx, id, container.WaitConditionNotRunning)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-waitC:
		case <-errC:
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}

// Stop implements executor.Driver.
func (d *Driver) Stop(ctx context.Context, uid string, grace time.Duration) error {
	list, err := d.containers(ctx, uid)
	if err != nil {
		return err
	}
	secs := int(grace.Seconds())
	for _, c := range list {
		if err := d.client.ContainerStop(ctx, c.ID, container.StopOptions{Timeout: &secs}); err != nil && !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("stopping container %s: %w", c.ID, err)
		}
	}
	return nil
}

// Remove implements executor.Driver.
func (d *Driver) Remove(ctx context.Context, uid string) error {
	list, err := d.containers(ctx, uid)
	if err != nil {
		return err
	}
	// Services first: they use the main container's network namespace.
	for i := len(list) - 1; i >= 0; i-- {
		err := d.client.ContainerRemove(ctx, list[i].ID, container.RemoveOptions{Force: true})
		if err != nil && !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("removing container %s: %w", list[i].ID, err)
		}
	}
	return nil
}

// Tasks implements executor.Driver.
func (d *Driver) Tasks(ctx context.Context) ([]string, error) {
	list, err := d.client.ContainerList(ctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", rsv1.LabelExecutor+"="+d.executor), filters.Arg("label", labelRole+"="+roleMain)),
	})
	if err != nil {
		return nil, fmt.Errorf("listing containers: %w", err)
	}
	var uids []string
	for _, c := range list {
		if uid := c.Labels[rsv1.LabelExecutorTaskUID]; uid != "" {
			uids = append(uids, uid)
		}
	}
	return uids, nil
}
