package kubernetes_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/testenv"
)

// The executor's status writes per task (issue 10), with pods: a task that ends within
// --running-status-delay costs one, a longer one shows Running after the delay, and the pod's
// deterministic name is what keeps a restarted executor from starting a task twice.

// executorTaskName is the ExecutorTask of a run's task.
func executorTaskName(t *testing.T, ns, run, task string) string {
	t.Helper()
	r := getRun(t, ns, run)
	return rsv1.ExecutorTaskName(r.Name, r.UID, task)
}

// waitPod waits until the executor has exactly one pod, and returns when it saw it.
func waitPod(t *testing.T, ns, executor string) time.Time {
	t.Helper()
	var seen time.Time
	e2e.Eventually(t, time.Minute, "the pod of "+executor+"'s task", func() bool {
		seen = time.Now()
		pods, err := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: rsv1.LabelExecutor + "=" + executor})
		return err == nil && len(pods.Items) == 1
	})
	return seen
}

// TestAShortTaskCostsOneStatusWrite: a task whose pod ends before --running-status-delay gets one
// status write from its executor, its final one, carrying its start time; it is never recorded Running.
func TestAShortTaskCostsOneStatusWrite(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	sw := e2e.WatchStatusWrites(t, env.Config, ns)
	// A delay well above the pod's life (400ms on the simulated node) on a loaded machine: what is
	// counted is the mechanism, not the default's margin (see TestALongTaskShowsRunningWithinTheDelay).
	startExecutor(t, ns, "wa", "--running-status-delay", "10s")
	finishOne(t, ns, "quick")
	if r := getRun(t, ns, "quick"); r.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s: %+v", r.Status.Result, r.Status.Tasks)
	}
	et := executorTaskName(t, ns, "quick", "t")
	writes := sw.UntilFinal(t, et)
	if len(writes) != 1 {
		t.Fatalf("the executor wrote the status of a task shorter than the delay %d times (phases %v), want once: its final status", len(writes), sw.Phases(et))
	}
	if st := writes[0].Status; st.Phase != rsv1.TaskPhaseSuccess || st.StartTime == nil || st.EndTime == nil || st.EndTime.Before(st.StartTime) {
		t.Fatalf("the one status write: phase %s, start %v, end %v; want Success with a start time no later than the end", st.Phase, st.StartTime, st.EndTime)
	}
}

// TestALongTaskShowsRunningWithinTheDelay: with the default delay (1s), a task whose pod runs longer
// (20s) is recorded Running about a second after its pod was created.
func TestALongTaskShowsRunningWithinTheDelay(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	sw := e2e.WatchStatusWrites(t, env.Config, ns)
	startExecutor(t, ns, "wb")
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: testenv.SlowRun, Namespace: ns}}
	run.Spec.Tasks = []rsv1.Task{task("t")}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	created := waitPod(t, ns, "wb")
	et := executorTaskName(t, ns, testenv.SlowRun, "t")
	e2e.Eventually(t, 5*time.Second, "the task recorded Running", func() bool { return len(sw.Of(et)) > 0 })
	first := sw.Of(et)[0]
	if first.Status.Phase != rsv1.TaskPhaseRunning || first.Status.StartTime == nil {
		t.Fatalf("first status write %+v, want Running with its start time", first.Status)
	}
	// The pod was seen within 100ms of its creation (the poll); the delay is 1s, the rest is slack
	// for a loaded machine. The pod runs 20s.
	if after := first.Seen.Sub(created); after > 3*time.Second {
		t.Fatalf("Running recorded %v after the pod was created, want about the delay (1s)", after.Round(time.Millisecond))
	}
}

// TestKilledBeforeAnyStatusWriteAdoptsItsPod: an executor killed after creating a task's pod and
// before writing anything of it comes back under the same name with an empty data directory (a new
// container of the same pod would keep it; this is the harder case: nothing local tells it the task
// was started). Its create of the pod's deterministic name finds the pod of the same task, so it
// adopts it: the task ends Success with the one pod it ever had, and its status is written once.
func TestKilledBeforeAnyStatusWriteAdoptsItsPod(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	ctx := context.Background()
	pw := watchPods(t, ns)
	sw := e2e.WatchStatusWrites(t, env.Config, ns)
	// A delay longer than the pod's life: nothing is written before the kill.
	p := startExecutor(t, ns, "kb", "--running-status-delay", "1m")
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: testenv.SlowRun, Namespace: ns}}
	run.Spec.Tasks = []rsv1.Task{task("t")}
	if err := k8s.Create(ctx, run); err != nil {
		t.Fatal(err)
	}
	waitPod(t, ns, "kb")
	p.Kill()
	et := executorTaskName(t, ns, testenv.SlowRun, "t")
	got := &rsv1.ExecutorTask{}
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: et}, got); err != nil {
		t.Fatal(err)
	}
	if got.Status.Phase != "" || len(sw.Of(et)) != 0 {
		t.Fatalf("killed with its pod created, the task's status was written (%v): the scenario is not what it claims", sw.Phases(et))
	}
	back := startExecutor(t, ns, "kb", "--running-status-delay", "1m") // a new --data-dir
	e2e.Eventually(t, time.Minute, "the run finished", func() bool {
		return getRun(t, ns, testenv.SlowRun).Status.Phase == rsv1.RunPhaseFinished
	})
	if r := getRun(t, ns, testenv.SlowRun); r.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("result %s, want Success (the restarted executor adopts the pod): %+v", r.Status.Result, r.Status.Tasks)
	}
	if n := pw.checkOnePodPerTask(t); n != 1 {
		t.Fatalf("%d tasks had a pod, want 1", n)
	}
	if w := sw.Of(et); len(w) != 1 || w[0].Status.Phase != rsv1.TaskPhaseSuccess {
		t.Fatalf("status writes %v, want one: the final Success", sw.Phases(et))
	}
	back.Kill()
	if out := back.Output(); !strings.Contains(out, "the task's containers exist already: adopting them") {
		t.Fatalf("the restarted executor did not adopt the pod through its name (log:\n%s)", out)
	}
}

// TestAPendingPodIsNotRecordedRunning: Running means the task's main container runs. A pod that waits
// for a node (here one bound to a node nobody runs: it stays Pending) keeps its task NotStarted past
// the delay, so that a task whose pod waited in a busy cluster and then ran shortly still costs one
// status write.
func TestAPendingPodIsNotRecordedRunning(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	sw := e2e.WatchStatusWrites(t, env.Config, ns)
	startExecutor(t, ns, "wp", "--running-status-delay", "500ms", "--node-name", "no-such-node")
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "waits", Namespace: ns}}
	run.Spec.Tasks = []rsv1.Task{task("t")}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	waitPod(t, ns, "wp")
	et := executorTaskName(t, ns, "waits", "t")
	time.Sleep(3 * time.Second) // six times the delay; nothing happens to a pod no node runs
	if w := sw.Of(et); len(w) != 0 {
		t.Fatalf("a task whose pod never left Pending was written %d times (phases %v), want none: Running means its container runs", len(w), sw.Phases(et))
	}
}

// executorDeletes counts, from the audit log, the requests by which executors deleted pods and
// Secrets of namespace ns.
func executorDeletes(t *testing.T, ns string) (pods, secrets int) {
	t.Helper()
	err := testenv.ScanAuditLog(auditLog, 0, -1, func(e testenv.AuditEvent) error {
		if e.ObjectRef.Namespace != ns || !strings.HasPrefix(e.UserAgent, "executor/") || (e.Verb != "delete" && e.Verb != "deletecollection") {
			return nil
		}
		switch e.ObjectRef.Resource {
		case "pods":
			pods++
		case "secrets":
			secrets++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pods, secrets
}

// TestEndedTasksPodsAreRemovedTogether: the pods of tasks that end together are removed by their
// executor in one request per batch, not one per task, and so are their Secrets; none is left.
// Each run's ExecutorTasks are deleted as soon as it finished, as the archiver does with
// --archive-after 0s: a task deleted while its pod waits for its batch costs no request more.
func TestEndedTasksPodsAreRemovedTogether(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	ctx := context.Background()
	startExecutor(t, ns, "rt", "--running-status-delay", "1m")
	const perRun = 6
	for _, name := range []string{"plain", "secret"} {
		run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		for j := range perRun {
			run.Spec.Tasks = append(run.Spec.Tasks, task(fmt.Sprintf("t%d", j)))
		}
		if name == "secret" {
			run.Spec.Environment = []rsv1.EnvVar{{Name: "A", Value: "1"}} // a Secret per task
		}
		if err := k8s.Create(ctx, run); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"plain", "secret"} {
		e2e.Eventually(t, 2*time.Minute, "run "+name+" Finished", func() bool {
			return getRun(t, ns, name).Status.Phase == rsv1.RunPhaseFinished
		})
		r := getRun(t, ns, name)
		if r.Status.Result != rsv1.RunResultSuccess {
			t.Fatalf("run %s: %s %+v", name, r.Status.Result, r.Status.Tasks)
		}
		if err := k8s.DeleteAllOf(ctx, &rsv1.ExecutorTask{}, client.InNamespace(ns), client.MatchingLabels{rsv1.LabelRunUID: string(r.UID)}); err != nil {
			t.Fatal(err)
		}
	}
	e2e.Eventually(t, time.Minute, "every pod and secret removed", func() bool {
		pods, _ := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		secrets, _ := kube.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: rsv1.LabelExecutorTaskUID})
		return pods != nil && secrets != nil && len(pods.Items) == 0 && len(secrets.Items) == 0
	})
	time.Sleep(2 * time.Second) // the apiserver writes its audit log in batches of at most a second
	pods, secrets := executorDeletes(t, ns)
	t.Logf("the pods of %d ended tasks deleted in %d requests, their Secrets (%d) in %d", 2*perRun, pods, perRun, secrets)
	// Two runs of six tasks end within a few seconds of each other on a loaded machine: a request
	// per task would be twelve, and six for the Secrets.
	if pods > 2*perRun/3 || secrets > perRun/2 {
		t.Errorf("the executor deleted the pods of %d ended tasks in %d requests and their Secrets in %d, want at most %d and %d",
			2*perRun, pods, secrets, 2*perRun/3, perRun/2)
	}
}
