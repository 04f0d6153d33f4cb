package kubernetes

import (
	"context"
	"errors"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"runservice.dev/runservice/executor"
	"runservice.dev/runservice/executor/toolbox"
)

// Follow implements executor.Follower: the runner's goroutine looks at the pod when the pod index
// says it changed; the main container's log (the toolbox's frames become the step logs, results
// and archives) is read by a goroutine of its own only while a request for it is under way.
//
// It costs one request per task when all goes well: the log is followed once the main container
// started, and read once more only when the pod ended and the copy may miss its end (never
// followed, a follow that failed, one that ended while the pod ran and was not followed again,
// or the kubelet's follow ending at the container's exit before its last lines were read); that
// read, when the node fails to answer it or its stream breaks, on a node that served logs, is
// tried again after a backoff (an answer that will not change, a 4xx, is final). A follow that
// fails, or ends while the pod still runs, is tried again after a backoff (followBackoff) that a
// follow which read something resets; a node that does not answer closes the node's log gate, so
// that its other pods wait for one probe instead of asking each (logGate). The pod ending ends
// the waits at once. A follow cut off is followed again from what the kubelet still has, which
// after a rotation of the container's log is only its tail: the step logs are appended to by
// offset (toolbox.Demux), so what was copied stays and nothing is written twice. Once the
// container ended, the step results of its termination message fill in what the log did not
// bring.
func (d *Driver) Follow(ctx context.Context, uid, dir string, steps int, lim toolbox.Limits) executor.Following {
	f := &podFollow{d: d, uid: uid, dir: dir, steps: steps, lim: lim, backoff: followBackoff, copied: make(chan copyResult, 1)}
	f.changed, f.unsubscribe = d.pods.subscribe(uid)
	f.ctx, f.cancel = context.WithCancel(ctx)
	return f
}

// podFollow is one task's pod followed by its runner.
type podFollow struct {
	d     *Driver
	uid   string
	dir   string
	steps int
	lim   toolbox.Limits

	changed     chan struct{}
	unsubscribe func()
	ctx         context.Context // the copies'
	cancel      context.CancelFunc

	copying  bool // a read of the log is under way; it sends on copied, then wakes changed
	copied   chan copyResult
	lastRead bool        // the read of the ended pod's log was begun
	lastErr  error       // how the last read of the ended pod's log failed (nil: it did not)
	readOn   bool        // that failure may pass: the node did not answer, or its stream broke
	streamed bool        // a read of the pod's log streamed: its node serves logs
	ended    *corev1.Pod // the pod as last seen ended, for Cut
	refused  error       // what a read dropped (toolbox.ErrRefused)

	followed  bool         // a follow was tried
	followErr error        // how the last one ended
	behind    bool         // the last follow ended while the pod ran, and none began since
	lastEnd   time.Time    // when the last follow that the node answered ended
	backoff   wait.Backoff // the task's own, for follows that end or fail while the node answers
	retryAt   time.Time    // when to follow again (zero: as soon as the container started and the node's gate is open)
}

type copyResult struct {
	follow bool
	read   int64
	began  bool      // the node answered
	end    time.Time // when the read ended
	broke  bool      // the stream it answered broke (a read of it failed)
	err    error
}

var _ executor.Following = (*podFollow)(nil)

func (f *podFollow) Changed() <-chan struct{} { return f.changed }

func (f *podFollow) Close() {
	f.cancel()
	f.unsubscribe()
}

// Look implements executor.Following.
func (f *podFollow) Look(ctx context.Context) (executor.Seen, error) {
	select {
	case c := <-f.copied:
		f.copying = false
		f.took(c)
	default:
	}
	pod, seen, err := f.d.find(ctx, f.uid)
	if err != nil {
		return executor.Seen{}, err
	}
	st := f.d.state(pod)
	if !st.Running {
		f.ended = pod
		if f.copying {
			return executor.Seen{State: st}, nil // its end wakes the runner
		}
		switch {
		case !f.lastRead && mainStarted(pod) && (!f.followed || f.followErr != nil || f.behind || f.endedEarly(pod) || f.d.cutShort(pod, f.dir, f.steps)):
			// Demux skips what the copy already has.
			f.lastRead = true
			f.read(pod, false)
			return executor.Seen{State: st}, nil
		case f.readOn && (f.streamed || f.d.logs.served(pod.Spec.NodeName)):
			// That read failed on a node that serves logs (this pod's log streamed, or another's
			// since the gate last forgot the node): tried again after the task's backoff, when the
			// node's gate lets it, until the runner stops waiting (copyWait, Cut). A node that never
			// served a log is not asked again (kwok serves none: every simulated task would end
			// copyWait late); what is given up is a task whose only read of its log, on a node the
			// gate knows nothing of, fails for a moment: its log stays as the copy has it.
			at := f.retryAt
			if !time.Now().Before(at) {
				ok, open := f.d.logs.mayFollow(pod.Spec.NodeName)
				if ok {
					f.read(pod, false)
					return executor.Seen{State: st}, nil
				}
				at = open
			}
			return executor.Seen{State: st, At: at}, nil
		}
		return f.done(pod, st), nil
	}
	at := f.d.changesAt(pod, seen)
	switch {
	case !mainStarted(pod) || f.copying:
	case time.Now().Before(f.retryAt):
		at = earliest(at, f.retryAt)
	default:
		// The pod still runs a backoff after the last follow ended: the copy is behind until a
		// follow begins again, and read once more if the pod ends first (a closed gate). Not
		// counted when the follow ends: the kubelet ends it at the container's exit, before the
		// informer shows the pod ended, and every log would be read twice.
		f.behind = f.followed
		if ok, open := f.d.logs.mayFollow(pod.Spec.NodeName); !ok {
			at = earliest(at, open)
		} else {
			f.read(pod, true)
		}
	}
	return executor.Seen{State: st, At: at, Quiet: !f.copying}, nil
}

// Cut implements executor.Following: the read under way is cancelled and waited for (its error,
// the cancel's, is dropped), then the termination message fills in what the copy did not bring.
func (f *podFollow) Cut() error {
	f.cancel()
	if f.copying {
		f.copying = false
		f.took(<-f.copied)
		f.lastErr = nil
	}
	return f.finish(f.ended, true)
}

// endedEarly says whether the last follow, one that ended cleanly, ended before the main
// container did: the pod ended inside the task's backoff (the follow ended while the pod ran, and
// the next was not due yet), and what the container wrote meanwhile is read once more. The kubelet
// ends a follow when the container exits, so a follow that ended after FinishedAt less a second is
// taken for that end: FinishedAt counts in whole seconds, on the node's clock. Given up: a follow
// cut off within that second or two before the exit (or more, when the node's clock runs behind
// the executor's) is not read again unless the termination message shows a step's end missing
// (cutShort).
func (f *podFollow) endedEarly(pod *corev1.Pod) bool {
	if f.lastEnd.IsZero() || f.followErr != nil {
		return false
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == mainName && cs.State.Terminated != nil {
			return f.lastEnd.Before(cs.State.Terminated.FinishedAt.Add(-time.Second))
		}
	}
	return false
}

// done fills in what the ended pod's termination message reports and the copy did not bring. A
// last read that failed for a moment, on a node that serves no log, is not reported.
func (f *podFollow) done(pod *corev1.Pod, st *executor.State) executor.Seen {
	return executor.Seen{State: st, Done: true, Copied: f.finish(pod, !f.readOn)}
}

// finish fills in, from pod (nil: gone), what its termination message reports and the copy did
// not bring, and returns what the copy could not do: the fill-in's failure, a read's refusal, or,
// with failed, how the last read of the ended pod's log failed.
func (f *podFollow) finish(pod *corev1.Pod, failed bool) error {
	if pod != nil {
		if err := f.d.terminationResults(pod, f.dir, f.steps); err != nil {
			return err
		}
	}
	if f.refused != nil || !failed {
		return f.refused
	}
	return f.lastErr
}

// read reads the pod's log into the task's directory in a goroutine of its own, following it when
// follow is set; its end wakes the runner.
func (f *podFollow) read(pod *corev1.Pod, follow bool) {
	f.copying = true
	go func() {
		c := f.d.readLog(f.ctx, pod, f.dir, f.steps, f.lim, follow)
		c.end = time.Now()
		f.copied <- c
		wake(f.changed)
	}()
}

// took records how a read of the log ended.
func (f *podFollow) took(c copyResult) {
	if errors.Is(c.err, toolbox.ErrRefused) {
		// The log was read to its end all the same; a later read reads it again.
		f.refused, c.err = c.err, nil
	}
	// The gate may have forgotten the node meanwhile (forgetIdle), while a follow streamed for hours.
	f.streamed = f.streamed || c.began
	if !c.follow {
		// A read of the ended pod's log: one that failed for a moment (the node did not answer,
		// or its stream broke) is tried again after a backoff of its own (the pod's follows are
		// over). An answer that will not change (4xx: the container or its log removed, a
		// permission) or the copy's own failure (writing the step logs: a disk full) is final:
		// reading the whole log again would end the same.
		if c.err != nil && !f.readOn {
			f.backoff = followBackoff
		}
		f.lastErr = c.err
		f.readOn = c.err != nil && (c.broke || !c.began && nodeTrouble(c.err))
		if f.readOn {
			f.retryAt = time.Now().Add(f.backoff.Step())
		}
		return
	}
	f.followed, f.followErr = true, c.err
	if c.began {
		f.behind, f.lastEnd = false, c.end
	}
	switch {
	case !c.began && nodeTrouble(c.err):
		// The node did not answer: its gate, closed now, says when to try again.
		f.retryAt = time.Time{}
	default:
		if c.read > 0 {
			f.backoff = followBackoff
		}
		f.retryAt = time.Now().Add(f.backoff.Step())
	}
}
