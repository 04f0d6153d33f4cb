package kubernetes

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// The reaper removes the pods of ended tasks (issue 10: the pod delete was one request per task).
// A task's pod is removed once its final status is written, as before, only a moment later: the
// tasks that end within reapWait of each other share one deletecollection selecting their uids
// (their pods ended, so the apiserver removes each at once, with no confirmation from the node to
// wait for). So what the executor's adoption rules read stays true: a task whose status is not
// final still has its pod, and no pod and no task directory means never started. The apiserver
// still deletes each pod from etcd: what a batch saves is requests (their admission, audit,
// selector scans of the namespace's pods, and round trips), not storage writes.

const (
	// reapWait is how long the first ended task of a batch waits for others: the pod of a finished
	// task stays that much longer, which nothing reads.
	reapWait = time.Second
	// reapMax bounds a batch: the selector of 100 uids is about 4 KiB of the request's URL.
	reapMax = 100
)

// reaper batches the removal of ended tasks' pods and Secrets.
type reaper struct {
	d    *Driver
	wait time.Duration
	max  int
	kick chan struct{} // a batch has its first task, or is full

	mu      sync.Mutex
	pending []reap
}

type reap struct {
	uid    string
	secret bool // the pod mounts the task's Secret
	done   chan error
}

func newReaper(d *Driver) *reaper {
	return &reaper{d: d, wait: reapWait, max: reapMax, kick: make(chan struct{}, 1)}
}

// remove returns once task uid's pod (and Secret, when it has one) is removed with a batch, or ctx
// ends; a task it was not removed for is removed by the executor's sweep when it starts again.
func (r *reaper) remove(ctx context.Context, uid string, secret bool) error {
	done := make(chan error, 1)
	r.mu.Lock()
	r.pending = append(r.pending, reap{uid: uid, secret: secret, done: done})
	n := len(r.pending)
	r.mu.Unlock()
	if n == 1 || n >= r.max {
		r.poke()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *reaper) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run removes batches until ctx ends.
func (r *reaper) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		}
		t := time.NewTimer(r.wait)
		for full := false; !full; {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
				full = true
			case <-r.kick:
				r.mu.Lock()
				full = len(r.pending) >= r.max
				r.mu.Unlock()
			}
		}
		t.Stop()
		if more := r.flush(ctx); more {
			r.poke()
		}
	}
}

// flush removes up to max pending tasks' pods in one request, and their Secrets in another when
// one of them has one; it says whether tasks are left pending.
func (r *reaper) flush(ctx context.Context) bool {
	r.mu.Lock()
	batch := r.pending[:min(len(r.pending), r.max)]
	r.pending = r.pending[len(batch):]
	more := len(r.pending) > 0
	r.mu.Unlock()
	if len(batch) == 0 {
		return more
	}
	uids := make([]string, len(batch))
	secrets := false
	for i, b := range batch {
		uids[i] = b.uid
		secrets = secrets || b.secret
	}
	err := r.removeTasks(ctx, uids, secrets)
	for _, b := range batch {
		b.done <- err
	}
	return more
}

func (r *reaper) removeTasks(ctx context.Context, uids []string, secrets bool) error {
	req, err := labels.NewRequirement(rsv1.LabelExecutorTaskUID, selection.In, uids)
	if err != nil {
		return fmt.Errorf("selecting ended tasks' pods: %w", err)
	}
	sel := labels.NewSelector().Add(*req)
	if err := r.d.deletePods(ctx, sel); err != nil {
		return err
	}
	if secrets {
		return r.d.deleteSecrets(ctx, sel)
	}
	return nil
}
