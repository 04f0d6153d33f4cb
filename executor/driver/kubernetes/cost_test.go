package kubernetes_test

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/executor"
	kubedriver "runservice.dev/runservice/executor/driver/kubernetes"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/testenv"
)

// requestCounter counts the requests of one client by kind ("GET pods/log", "LIST pods"); it sits
// under the client's transport, so it sees every request sent, failed and retried ones included.
type requestCounter struct {
	mu    sync.Mutex
	kinds map[string]int
}

func (c *requestCounter) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		c.mu.Lock()
		if c.kinds == nil {
			c.kinds = map[string]int{}
		}
		c.kinds[requestKind(req)]++
		c.mu.Unlock()
		return rt.RoundTrip(req)
	})
}

func (c *requestCounter) get(kind string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.kinds[kind]
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// requestKind names a core API request by verb and resource: /api/v1/namespaces/NS/pods/NAME/log
// is "GET pods/log", a GET of /api/v1/namespaces/NS/pods is "LIST pods" (or "WATCH pods").
func requestKind(req *http.Request) string {
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	// api v1 namespaces NS RESOURCE [NAME [SUBRESOURCE]]
	if len(parts) < 5 || parts[0] != "api" || parts[2] != "namespaces" {
		return req.Method + " " + req.URL.Path
	}
	resource, verb := parts[4], req.Method
	switch {
	case len(parts) >= 7:
		resource += "/" + parts[6]
	case len(parts) == 5 && verb == http.MethodGet && req.URL.Query().Get("watch") == "true":
		verb = "WATCH"
	case len(parts) == 5 && verb == http.MethodGet:
		verb = "LIST"
	}
	return verb + " " + resource
}

// startCountedExecutor runs a Kubernetes-driver executor in this process, its driver's requests
// counted; opts adjust the driver's options.
func startCountedExecutor(t *testing.T, ns, name string, opts ...func(*kubedriver.Options)) (*kubedriver.Driver, *requestCounter) {
	t.Helper()
	reqs := &requestCounter{}
	cfg := rest.CopyConfig(env.Config)
	cfg.WrapTransport = reqs.wrap
	o := kubedriver.Options{
		Namespace: ns, Executor: name, ToolboxImage: "runservice-toolbox:dev", NodeName: kwok.Node,
		Archs: []string{runtime.GOARCH},
	}
	for _, f := range opts {
		f(&o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	drv, err := kubedriver.New(ctx, cfg, o)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() {
		exited <- executor.Run(ctx, env.Config, drv, executor.Options{
			Name: name, Namespace: ns, Driver: rsv1.DriverKubernetes, Group: name,
			Listen: "127.0.0.1:0", InsecureHTTP: true, DataDir: filepath.Join(t.TempDir(), "data"),
			LeaseDuration: 4 * time.Second, RenewInterval: time.Second,
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("the executor: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the executor did not stop within 30s")
		}
	})
	return drv, reqs
}

// TestFollowingATaskCostsTheSameHoweverManyRun: a Kubernetes-driver executor follows each task
// with at most two pods/log requests (kwok serves no log, so every one fails, as on a node that
// cannot serve it: the follow is not retried in a loop while the pod runs), and looks each pod up a
// bounded number of times, the same with 30 tasks in flight as with 5: a pod's change wakes only
// the waits on that pod, not every task's.
func TestFollowingATaskCostsTheSameHoweverManyRun(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	drv, reqs := startCountedExecutor(t, ns, "cost")

	type cost struct{ logGets, lookups, lists float64 }
	// measure runs one run of n parallel tasks to its end, and its pods out, and returns what each
	// task cost the executor.
	measure := func(run string, n int) cost {
		t.Helper()
		logsBefore, listsBefore, lookupsBefore := reqs.get("GET pods/log"), reqs.get("LIST pods"), drv.Lookups()
		r := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: run, Namespace: ns}}
		for i := range n {
			r.Spec.Tasks = append(r.Spec.Tasks, task(fmt.Sprintf("t%02d", i)))
		}
		if err := k8s.Create(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		e2e.Eventually(t, 2*time.Minute, "run "+run+" finished", func() bool {
			return getRun(t, ns, run).Status.Phase == rsv1.RunPhaseFinished
		})
		if r := getRun(t, ns, run); r.Status.Result != rsv1.RunResultSuccess {
			t.Fatalf("run %s: %s %+v", run, r.Status.Result, r.Status.Tasks)
		}
		e2e.Eventually(t, time.Minute, "the pods of run "+run+" removed", func() bool {
			pods, err := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: rsv1.LabelRun + "=" + run})
			return err == nil && len(pods.Items) == 0
		})
		c := cost{
			logGets: float64(reqs.get("GET pods/log")-logsBefore) / float64(n),
			lookups: float64(drv.Lookups()-lookupsBefore) / float64(n),
			lists:   float64(reqs.get("LIST pods")-listsBefore) / float64(n),
		}
		t.Logf("%d tasks: %.1f pods/log requests, %.1f pod lookups and %.2f live pod lists per task", n, c.logGets, c.lookups, c.lists)
		return c
	}
	few := measure("few", 5)
	many := measure("many", 30)
	// One follow and one read of the ended pod; on a loaded machine the apiserver ends an
	// occasional follow early, which is followed again after a backoff (CI, load average above 10:
	// 63 requests for 30 tasks): a tenth more, not one per second per task as polling would be.
	if many.logGets > 2.2 {
		t.Errorf("%.1f pods/log requests per task with 30 tasks, want at most 2.2 (one follow, one read of the ended pod, an occasional follow again)", many.logGets)
	}
	// A task's pod changes a handful of times (created, running, ended, deleted), each waking its
	// runner once (Follow), plus a look per read of its log.
	if many.lookups > 16 {
		t.Errorf("%.1f pod lookups per task with 30 tasks in flight, want at most 16", many.lookups)
	}
	// The waits that begin right after the create find the pod as created, not by a live list
	// while the informer has not shown it yet.
	if many.lists > 0.1 {
		t.Errorf("%.2f live pod lists per task, want none", many.lists)
	}
	if many.lookups > 1.5*few.lookups+2 {
		t.Errorf("%.1f pod lookups per task with 30 tasks in flight against %.1f with 5: the cost of a task grows with the tasks beside it", many.lookups, few.lookups)
	}
}

// TestAFollowThatFailsBacksOff: a log that cannot be followed (kwok serves none, as a node that is
// gone or a kubelet that cannot) is asked for again after 1s, 2s, 4s, ..., not once a second for as
// long as the pod runs (20s here); and the pod's end ends the backoff at once: the task ends with
// its pod, not at the next follow (about 31s after the first).
func TestAFollowThatFailsBacksOff(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	_, reqs := startCountedExecutor(t, ns, "backoff")
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: testenv.SlowRun, Namespace: ns}}
	run.Spec.Tasks = []rsv1.Task{task("t")}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	e2e.Eventually(t, time.Minute, "the run finished", func() bool {
		return getRun(t, ns, testenv.SlowRun).Status.Phase == rsv1.RunPhaseFinished
	})
	ts := getRun(t, ns, testenv.SlowRun).Status.Tasks[0]
	if ts.Phase != rsv1.TaskPhaseSuccess {
		t.Fatalf("task %s: %s", ts.Phase, ts.Message)
	}
	took := ts.EndTime.Sub(ts.StartTime.Time)
	gets := reqs.get("GET pods/log")
	t.Logf("a 20s pod whose log cannot be read: %d pods/log requests, the task took %v", gets, took)
	// Follows at about 0, 1, 3, 7 and 15s, and one read of the ended pod.
	if gets > 7 {
		t.Errorf("%d pods/log requests for one task whose pod ran 20s, want at most 7 (a follow backing off from 1s, doubling)", gets)
	}
	if took > 26*time.Second {
		t.Errorf("the task took %v with a pod that ran 20s: its end waited for the next follow", took)
	}
}

// TestAnUnschedulablePodFailsItsTaskAtItsDeadline: a pod the scheduler cannot place changes no more,
// and its task fails once UnschedulableAfter passed: the waits wake by time where the state changes
// by time.
func TestAnUnschedulablePodFailsItsTaskAtItsDeadline(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	ctx := context.Background()
	startCountedExecutor(t, ns, "unsched", func(o *kubedriver.Options) {
		o.NodeName, o.UnschedulableAfter = "", 5*time.Second // no scheduler here: the test says it
	})
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "unsched", Namespace: ns}}
	run.Spec.Tasks = []rsv1.Task{task("t")}
	if err := k8s.Create(ctx, run); err != nil {
		t.Fatal(err)
	}
	var pod *corev1.Pod
	e2e.Eventually(t, 30*time.Second, "the task's pod", func() bool {
		pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: rsv1.LabelRun + "=unsched"})
		if err != nil || len(pods.Items) != 1 {
			return false
		}
		pod = &pods.Items[0]
		return true
	})
	// What kube-scheduler writes when no node fits.
	pod.Status.Conditions = []corev1.PodCondition{{
		Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: corev1.PodReasonUnschedulable,
		Message: "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.", LastTransitionTime: metav1.Now(),
	}}
	if _, err := kube.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e2e.Eventually(t, 30*time.Second, "the run finished", func() bool {
		return getRun(t, ns, "unsched").Status.Phase == rsv1.RunPhaseFinished
	})
	ts := getRun(t, ns, "unsched").Status.Tasks[0]
	if ts.Phase != rsv1.TaskPhaseFailed || !strings.Contains(ts.Message, "cannot be scheduled: 0/1 nodes are available") {
		t.Fatalf("task %s %q, want Failed saying the pod cannot be scheduled", ts.Phase, ts.Message)
	}
}

// TestATaskInFlightCostsOneGoroutineAndOneLogRequest: with 30 tasks whose pods run 20s on one
// node that serves no log, the executor (in this process) follows each task with one goroutine,
// its runner, woken by its pod's changes, not a runner with a pod wait and a log follow blocked
// beside it; and the node's logs are asked for about once per task, the final read of the ended
// pod, plus a probe of the node now and then (its log gate), not each task's own follow retried
// with a backoff while its pod runs (about six per task).
func TestATaskInFlightCostsOneGoroutineAndOneLogRequest(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	_, reqs := startCountedExecutor(t, ns, "inflight")
	ctx := context.Background()
	const n = 30
	time.Sleep(2 * time.Second) // the executor registered and idle
	idle := runtime.NumGoroutine()
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: testenv.SlowRun, Namespace: ns}}
	for i := range n {
		run.Spec.Tasks = append(run.Spec.Tasks, task(fmt.Sprintf("t%02d", i)))
	}
	if err := k8s.Create(ctx, run); err != nil {
		t.Fatal(err)
	}
	e2e.Eventually(t, time.Minute, "every task recorded Running", func() bool {
		r := getRun(t, ns, testenv.SlowRun)
		running := 0
		for _, ts := range r.Status.Tasks {
			if ts.Phase == rsv1.TaskPhaseRunning {
				running++
			}
		}
		return running == n
	})
	time.Sleep(3 * time.Second) // past the first follows and their failures
	inFlight := runtime.NumGoroutine() - idle
	t.Logf("%d tasks in flight: %d goroutines more than idle", n, inFlight)
	// One per task, a few of the apiserver clients' and the manager's (in this process too).
	if inFlight > n+n/2 {
		t.Errorf("%d goroutines more with %d tasks in flight than idle, want at most %d: more than one per task", inFlight, n, n+n/2)
	}
	e2e.Eventually(t, time.Minute, "the run finished", func() bool {
		return getRun(t, ns, testenv.SlowRun).Status.Phase == rsv1.RunPhaseFinished
	})
	if r := getRun(t, ns, testenv.SlowRun); r.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("run: %s %+v", r.Status.Result, r.Status.Tasks)
	}
	gets := reqs.get("GET pods/log")
	t.Logf("%d tasks whose pods ran 20s on a node serving no log: %d pods/log requests", n, gets)
	// The read of each ended pod, and probes of the node at about 0, 1, 3, 7 and 15s.
	if gets > n+10 {
		t.Errorf("%d pods/log requests for %d tasks, want at most %d: one per task and a few probes of the node", gets, n, n+10)
	}
}
