package manager_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/shard"
	"runservice.dev/runservice/internal/testenv"
)

// TestRolloutBetweenUnshardedAndShardedManagers: manager processes of both modes on one control
// plane, as during a rollout of --shards. Off to auto: an unsharded leader has runs in flight
// (labelled for a sharded replica, as its webhook behind the Service would label them); two sharded
// replicas start and write nothing to the runs or their ExecutorTasks while the unsharded leader
// lives; once it stops, a sharded replica leads and the runs finish. Auto to off: an unsharded
// manager starts beside them (serving the webhook) and writes nothing, and does not lead, while a
// sharded replica lives, even after the sharded leader left; once the last one stops, it leads and
// the runs finish. No object is written by the two modes interleaved; each ExecutorTask is created
// once (the apiserver's audit log, by user agent).
func TestRolloutBetweenUnshardedAndShardedManagers(t *testing.T) {
	auditFrom := auditSize(t)
	ring, ns := newNamespace(t, "ring"), newNamespace(t, "rollout")
	ps := newProcs(t)
	common := []string{"--leader-elect", "--leader-election-namespace", ring, "--namespace", ring}
	unsharded := func(name string) *managerProc {
		return ps.start(t, name, true, append([]string{"--shards", "off"}, common...)...)
	}
	sharded := func(name string) *managerProc {
		return ps.start(t, name, false, append([]string{"--shards", "auto", "--shard-identity", name, "--shard-lease-duration", "6s"}, common...)...)
	}
	ctx := context.Background()
	testenv.StartFakeExecutor(t, k8s, ns, "fake")

	// Off to auto. (The runs are dropped while a process serves the webhook.)
	old := unsharded("unsharded-old")
	dropRunsAtEnd(t, ns)
	eventually(t, 60*time.Second, "the webhook serving", func() (bool, error) {
		return k8s.Create(ctx, twoTaskRun(ns, "probe"), client.DryRunAll) == nil, nil
	})
	both := shard.NewRing("sharded-a", "sharded-b")
	createLabelledRuns(t, ns, "first", 6, both)
	waitTasks(t, ns, 6)
	a, b := sharded("sharded-a"), sharded("sharded-b")
	time.Sleep(3 * time.Second) // for both to join the ring and start
	// The first tasks end: the runs' next tasks are to be scheduled, their statuses written, by
	// the unsharded leader alone.
	play := playTasks(t, ns)
	play.Store("build")
	time.Sleep(6 * time.Second)
	mark := settledAudit(t)
	if w := shardWrites(t, ns, auditFrom, mark); len(w) > 0 {
		t.Errorf("sharded replicas wrote while the unsharded leader lived: %v", w)
	}
	old.stop(20 * time.Second)
	play.Store("")
	eventually(t, 90*time.Second, "the first runs finished by the sharded replicas", func() (bool, error) { return allFinished(ns), nil })

	// Auto to off.
	unsharded("unsharded-new")
	dropRunsAtEnd(t, ns)
	eventually(t, 60*time.Second, "the new webhook serving", func() (bool, error) {
		return k8s.Create(ctx, twoTaskRun(ns, "probe"), client.DryRunAll) == nil, nil
	})
	play.Store("none")
	start := settledAudit(t)
	createRuns(t, ns, "second", 6)
	waitTasks(t, ns, 12+6)
	leader := leaderOf(t, ps.dir, ring, "sharded-a", "sharded-b")
	follower := a
	if leader == a.name {
		follower = b
	}
	for _, p := range []*managerProc{a, b} {
		if p.name == leader {
			p.stop(20 * time.Second)
		}
	}
	// The leader Lease is free: the unsharded manager would take it and act with the follower.
	play.Store("build")
	time.Sleep(8 * time.Second)
	mark = settledAudit(t)
	if w := unshardedWrites(t, ns, start, mark); len(w) > 0 {
		t.Errorf("the unsharded manager wrote while sharded replica %s lived: %v", follower.name, w)
	}
	play.Store("")
	follower.stop(20 * time.Second)
	eventually(t, 90*time.Second, "every run finished by the unsharded manager", func() (bool, error) { return allFinished(ns), nil })
	checkModesDoNotInterleave(t, ns, auditFrom, 12)
}

// playTasks ends, as their executor would, the ExecutorTasks of ns that have not reported yet and
// whose task is named as the returned value says ("": any, "none": none), until the test ends.
func playTasks(t *testing.T, ns string) *atomic.Value {
	var which atomic.Value
	which.Store("none")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			var list rsv1.ExecutorTaskList
			if err := k8s.List(ctx, &list, client.InNamespace(ns)); err == nil {
				for i := range list.Items {
					et := &list.Items[i]
					if w := which.Load().(string); et.Status.Phase == "" && (w == "" || w == et.Spec.TaskName) {
						_ = succeed(ctx, et)
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return &which
}

// createLabelledRuns creates n two-task runs named prefix-<i>, each labelled with ring's owner.
func createLabelledRuns(t *testing.T, ns, prefix string, n int, ring *shard.Ring) {
	t.Helper()
	for i := range n {
		run := twoTaskRun(ns, fmt.Sprintf("%s-%d", prefix, i))
		run.Labels = map[string]string{rsv1.LabelShard: ring.Owner(shard.Key(ns, run.Name))}
		if err := k8s.Create(context.Background(), run); err != nil {
			t.Fatal(err)
		}
	}
}

// waitTasks waits until ns has n ExecutorTasks.
func waitTasks(t *testing.T, ns string, n int) {
	t.Helper()
	eventually(t, 60*time.Second, fmt.Sprintf("%d executor tasks", n), func() (bool, error) {
		var ets rsv1.ExecutorTaskList
		err := k8s.List(context.Background(), &ets, client.InNamespace(ns))
		return len(ets.Items) >= n, err
	})
}

// settledAudit returns the audit log's size once what was written until now is in it.
func settledAudit(t *testing.T) int64 {
	t.Helper()
	time.Sleep(1500 * time.Millisecond) // the apiserver writes its audit log in batches of a second
	return auditSize(t)
}

// managerMode is the mode of the manager process that sent a request, by its user agent: "sharded"
// (" shard/<member>", its sharder's too), "unsharded" (cmd/manager's without it), "" (not a
// manager: the test).
func managerMode(ua string) string {
	switch {
	case strings.Contains(ua, " shard/"):
		return "sharded"
	case strings.HasPrefix(ua, "manager/"):
		return "unsharded"
	}
	return ""
}

// modeWrites lists the writes to the runs and ExecutorTasks of ns between the audit offsets from
// and to by managers of mode, refused ones too (a conflict, AlreadyExists): a manager that tries
// acts on the run, and the other mode may have lost the race instead.
func modeWrites(t *testing.T, ns, mode string, from, to int64) []string {
	t.Helper()
	var out []string
	err := testenv.ScanAuditLog(auditLog, from, to, func(e testenv.AuditEvent) error {
		if ok, obj := writeTo(e, ns); ok && managerMode(e.UserAgent) == mode {
			out = append(out, fmt.Sprintf("%s %s (%d) by %s", e.Verb, obj, e.ResponseStatus.Code, e.UserAgent))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func shardWrites(t *testing.T, ns string, from, to int64) []string {
	return modeWrites(t, ns, "sharded", from, to)
}

func unshardedWrites(t *testing.T, ns string, from, to int64) []string {
	return modeWrites(t, ns, "unsharded", from, to)
}

// writeTo says whether e is a write (answered, admitted or not) to a run or an ExecutorTask of
// ns, and which.
func writeTo(e testenv.AuditEvent, ns string) (bool, string) {
	ref := e.ObjectRef
	if ref.Namespace != ns || (ref.Resource != "runs" && ref.Resource != "executortasks") ||
		e.ResponseStatus == nil || e.Verb == "get" || e.Verb == "list" || e.Verb == "watch" {
		return false, ""
	}
	return true, ref.Resource + "/" + ref.Name
}

// managerWrite says whether e is a successful write to a run or an ExecutorTask of ns, and which.
func managerWrite(e testenv.AuditEvent, ns string) (bool, string) {
	if ok, obj := writeTo(e, ns); ok && e.ResponseStatus.Code < 300 {
		return true, obj
	}
	return false, ""
}

// checkModesDoNotInterleave checks, from the audit log since from, that no run or ExecutorTask of
// ns was written by managers of both modes interleaved, and that each ExecutorTask (2 for each of
// runs) was created once.
func checkModesDoNotInterleave(t *testing.T, ns string, from int64, runs int) {
	t.Helper()
	time.Sleep(1500 * time.Millisecond)
	modes := map[string][]string{}
	creates := map[string]int{}
	err := testenv.ScanAuditLog(auditLog, from, -1, func(e testenv.AuditEvent) error {
		ok, obj := managerWrite(e, ns)
		mode := managerMode(e.UserAgent)
		if !ok || mode == "" {
			return nil
		}
		if e.ObjectRef.Resource == "executortasks" && e.Verb == "create" {
			creates[e.ObjectRef.Name]++
		}
		if m := modes[obj]; len(m) == 0 || m[len(m)-1] != mode {
			modes[obj] = append(m, mode)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for obj, m := range modes {
		if len(m) > 2 {
			t.Errorf("%s was written by the two modes interleaved: %v", obj, m)
		}
	}
	var ets rsv1.ExecutorTaskList
	if err := k8s.List(context.Background(), &ets, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(ets.Items) != 2*runs {
		t.Errorf("%d ExecutorTasks, want 2 for each of %d runs", len(ets.Items), runs)
	}
	for _, et := range ets.Items {
		if n := creates[et.Name]; n != 1 {
			t.Errorf("ExecutorTask %s created %d times", et.Name, n)
		}
	}
}
