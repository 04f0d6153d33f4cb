package ui_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.uber.org/zap/zapcore"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/executorhttp"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/runlogs"
	"runservice.dev/runservice/internal/testenv"
	"runservice.dev/runservice/internal/ui"
	"runservice.dev/runservice/internal/ui/uitest"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

// These tests drive the web view in Debian's chromium (headless, through chromedp) against a real
// apiserver + etcd and a real manager; the executor is played through the API (its Lease, its
// ExecutorTasks' status) and serves its steps' logs over the executors' HTTP protocol, from which
// the manager's fetcher copies them into the object store the log panel reads.

var (
	env   *testenv.Env
	k8s   client.Client
	uiURL string // with its secret
	store string // the manager's object store
	root  string
)

// screenshotEnv, when set, makes TestWebView save docs/runctl-ui.png.
const screenshotEnv = "RUNSERVICE_UI_SCREENSHOT"

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	var err error
	if root, err = testenv.RepoRoot(); err != nil {
		return fail(err)
	}
	tmp, err := os.MkdirTemp("", "runservice-ui-")
	if err != nil {
		return fail(err)
	}
	defer os.RemoveAll(tmp)
	if env, err = testenv.Start(); err != nil {
		return fail(err)
	}
	defer func() { _ = env.Stop() }()
	if k8s, err = client.New(env.Config, client.Options{Scheme: manager.Scheme()}); err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store = objectstore.FileURL(filepath.Join(tmp, "store"))
	archiveAPI, err := env.ArchiveAPI(ctx)
	if err != nil {
		return fail(err)
	}
	stopManager, err := env.StartManager(func(opts *manager.Options) {
		opts.ObjectStore = store
		opts.Controllers.ExecutorInsecureHTTP = true // the played executor serves plain http on loopback
		opts.Controllers.EndpointAllow = executorhttp.Allow{netip.MustParsePrefix("127.0.0.1/32")}
		opts.Controllers.Archive, opts.Controllers.ArchiveAfter = true, time.Hour
		opts.ArchiveAPI = archiveAPI
		opts.ArchiveIndexDir = filepath.Join(tmp, "archive-index")
	})
	if err != nil {
		return fail(err)
	}
	ready := make(chan string, 1)
	uiDone := make(chan error, 1)
	go func() {
		uiDone <- ui.Run(ctx, ui.Options{Config: env.Config, Out: os.Stderr, ObjectStore: store, InsecureHTTP: true, Ready: func(u string) { ready <- u }})
	}()
	select {
	case uiURL = <-ready:
	case err := <-uiDone:
		return fail(fmt.Errorf("ui: %w", err))
	}
	code := m.Run()
	cancel()
	stopManager()
	if err := <-uiDone; err != nil {
		return fail(fmt.Errorf("ui: %w", err))
	}
	return code
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, "ui:", err)
	return 1
}

// ---- an executor played through the API ----

const token = "ui-test-token"

// playedExecutor registers an Executor serving logs at a loopback endpoint and renews its Lease.
type playedExecutor struct {
	t    *testing.T
	ns   string
	name string
	logs map[string]string // step log by task name
}

func startExecutor(t *testing.T, ns, name string, logs map[string]string) *playedExecutor {
	t.Helper()
	ctx := context.Background()
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: rsv1.ExecutorTokenSecret, Namespace: ns},
		StringData: map[string]string{rsv1.ExecutorTokenKey: token, rsv1.ExecutorTaskKeyKey: token + "-tasks"},
	}
	if err := k8s.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	p := &playedExecutor{t: t, ns: ns, name: name, logs: logs}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/tasks/{name}/steps/{i}/log", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		et := &rsv1.ExecutorTask{}
		if err := k8s.Get(r.Context(), client.ObjectKey{Namespace: ns, Name: r.PathValue("name")}, et); err != nil {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, p.logs[et.Spec.TaskName])
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	ex := &rsv1.Executor{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       rsv1.ExecutorSpec{Driver: rsv1.DriverDocker, Permanent: true, Archs: []string{"amd64"}, Endpoint: "http://" + ln.Addr().String()},
	}
	if err := k8s.Create(ctx, ex); err != nil {
		t.Fatal(err)
	}
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			p.renew(lctx)
			select {
			case <-lctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

func (p *playedExecutor) renew(ctx context.Context) {
	now := metav1.NowMicro()
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.ns}}
	err := k8s.Get(ctx, client.ObjectKeyFromObject(lease), lease)
	lease.Labels = map[string]string{rsv1.LabelExecutor: p.name}
	lease.Spec.HolderIdentity = ptr.To(p.name)
	lease.Spec.LeaseDurationSeconds = ptr.To[int32](5)
	lease.Spec.RenewTime = &now
	if apierrors.IsNotFound(err) {
		_ = k8s.Create(ctx, lease)
	} else if err == nil {
		_ = k8s.Update(ctx, lease)
	}
}

// executorTask waits for the ExecutorTask of a run's task.
func executorTask(t *testing.T, ns, run, task string) *rsv1.ExecutorTask {
	t.Helper()
	var et *rsv1.ExecutorTask
	e2e.Eventually(t, time.Minute, "the executor task of "+run+"/"+task, func() bool {
		var list rsv1.ExecutorTaskList
		if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			return false
		}
		for i := range list.Items {
			if list.Items[i].Spec.RunName == run && list.Items[i].Spec.TaskName == task {
				et = &list.Items[i]
				return true
			}
		}
		return false
	})
	return et
}

// report writes a task's status as its executor would: its one step in phase, exit code 0 or 1.
func (p *playedExecutor) report(run, task string, phase rsv1.TaskPhase, step string) {
	p.t.Helper()
	name := executorTask(p.t, p.ns, run, task).Name
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		et := &rsv1.ExecutorTask{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: p.ns, Name: name}, et); err != nil {
			return err
		}
		now := metav1.Now()
		if et.Status.StartTime == nil {
			et.Status.StartTime = &now
		}
		et.Status.Phase = phase
		st := rsv1.StepStatus{Name: step, Phase: rsv1.StepPhaseRunning, StartTime: et.Status.StartTime}
		if phase.IsFinal() {
			exit := int32(0)
			if phase == rsv1.TaskPhaseFailed {
				exit = 1
			}
			et.Status.EndTime = &now
			st.Phase, st.ExitCode, st.EndTime = rsv1.StepPhase(phase), &exit, &now
		}
		et.Status.Steps = []rsv1.StepStatus{st}
		return k8s.Status().Update(context.Background(), et)
	})
	if err != nil {
		p.t.Fatalf("reporting %s of %s/%s: %v", phase, run, task, err)
	}
}

func runTask(name, step string, opts ...func(*rsv1.Task)) rsv1.Task {
	return e2e.ShellTask(name, "echo "+step, append([]func(*rsv1.Task){func(t *rsv1.Task) { t.Steps[0].Run.Name = ptr.To(step) }}, opts...)...)
}

// ---- the browser (internal/ui/uitest) ----

// fill is the expression of a graph node's computed fill colour.
func fill(task string) string {
	return fmt.Sprintf(`getComputedStyle(document.querySelector('g.node[data-task=%q] rect')).fill`, task)
}

// TestWebView walks the web view through a run: the list shows it, its graph has a node per task
// in its phase's colour and an edge per dependency, the log panel shows a step's log, approve
// moves the waiting task on, and the run's end shows without a reload.
func TestWebView(t *testing.T) {
	ctx := uitest.Browser(t)
	ns := e2e.NewNamespace(t, k8s, "ui")
	ex := startExecutor(t, ns, "ex", map[string]string{"build": "compiling main.c\nlinking app\nbuild ok\n", "test": "PASS: 12 tests\n", "deploy": "deployed\n"})
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "release", Namespace: ns}, Spec: rsv1.RunSpec{
		ChangeGroups: []string{"project-a"},
		Tasks: []rsv1.Task{
			runTask("build", "compile"),
			runTask("test", "unit", e2e.After("build")),
			runTask("notify", "mail", func(t *rsv1.Task) {
				t.Depends = []rsv1.TaskDependency{{Task: "build", Conditions: []rsv1.DependCondition{rsv1.DependOnFailure}}}
			}),
			runTask("deploy", "ship", e2e.After("test"), func(t *rsv1.Task) { t.NeedsApproval = ptr.To(true) }),
		},
	}}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}

	// The list shows the run, live: it was opened before the run changed.
	if err := chromedp.Do(ctx, chromedp.Navigate(uiURL+"#/?namespace="+url.QueryEscape(ns))); err != nil {
		t.Fatal(err)
	}
	uitest.WaitJS(t, ctx, "the run in the list", `!!document.querySelector('#runs tr[data-run="release"]')`)
	ex.report("release", "build", rsv1.TaskPhaseRunning, "compile")
	uitest.WaitJS(t, ctx, "the run Running in the list", `document.querySelector('#runs tr[data-run="release"]').dataset.phase === "Running"`)
	// The filters: a phase or a change group the run is not in hide it, its own show it again.
	for _, f := range []struct{ field, value string }{{"phase", "Finished"}, {"phase", "Running"}, {"changeGroup", "project-b"}, {"changeGroup", "project-a"}} {
		uitest.JS(t, ctx, fmt.Sprintf(`(() => { const e = document.querySelector("[name=%s]"); e.value = %q; e.dispatchEvent(new Event("input", {bubbles: true})); return "" })()`, f.field, f.value))
		shown := f.value == "Running" || f.value == "project-a"
		uitest.WaitJS(t, ctx, fmt.Sprintf("the run shown %v with %s=%s", shown, f.field, f.value), fmt.Sprintf(`!!document.querySelector('#runs tr[data-run="release"]') === %v && location.hash.includes(%q)`, shown, f.field+"="+f.value))
	}

	// The run page: one node per task, an edge per dependency, labelled when not OnSuccess.
	uitest.Click(t, ctx, `#runs tr[data-run="release"] a`)
	uitest.WaitJS(t, ctx, "the graph", `document.querySelectorAll("g.node").length === 4`)
	if got := uitest.JS(t, ctx, `[...document.querySelectorAll("g.node")].map(n => n.dataset.task).sort().join(",")`); got != "build,deploy,notify,test" {
		t.Errorf("nodes %s, want one per task", got)
	}
	if got := uitest.JS(t, ctx, `[...document.querySelectorAll("path.edge")].map(e => e.dataset.from + ">" + e.dataset.to).sort().join(",")`); got != "build>notify,build>test,test>deploy" {
		t.Errorf("edges %s, want one per dependency", got)
	}
	if got := uitest.JS(t, ctx, `[...document.querySelectorAll("text.edge-label")].map(e => e.textContent).join(",")`); got != "OnFailure" {
		t.Errorf("edge labels %q, want OnFailure on build>notify only", got)
	}
	uitest.WaitJS(t, ctx, "build Running in blue", fill("build")+` === "rgb(182, 215, 255)"`)
	if got := uitest.JS(t, ctx, fill("test")); got != "rgb(234, 238, 242)" {
		t.Errorf("test (not started) is %s, want the NotStarted grey", got)
	}

	// The page follows the run without a reload: a marker set now must survive.
	if err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](`window.notReloaded = true`)(ctx, t)
		return err
	})); err != nil {
		t.Fatal(err)
	}
	ex.report("release", "build", rsv1.TaskPhaseSuccess, "compile")
	uitest.WaitJS(t, ctx, "build Success in green", fill("build")+` === "rgb(172, 238, 187)"`)
	uitest.WaitJS(t, ctx, "notify Skipped", fill("notify")+` === "rgb(246, 248, 250)"`)

	// The log panel, opened from the keyboard: the step's log as the executor wrote it, once the
	// manager fetched it into the object store.
	uitest.SelectTask(t, ctx, "build")
	uitest.WaitJS(t, ctx, "the build's log in the panel", `(document.querySelector("#log")||{}).textContent?.includes("compiling main.c\nlinking app\nbuild ok")`)
	if got := uitest.JS(t, ctx, `document.querySelector("#panel .steps tbody").innerText`); !strings.Contains(got, "compile") || !strings.Contains(got, "Success") || !strings.Contains(got, "0") {
		t.Errorf("steps table %q, want the step compile, Success, exit code 0", got)
	}

	// deploy waits for approval; the button approves it and it moves on.
	ex.report("release", "test", rsv1.TaskPhaseSuccess, "unit")
	uitest.WaitJS(t, ctx, "deploy waiting for approval", `document.querySelector('g.node[data-task="deploy"]').classList.contains("waiting")`)
	if got := uitest.JS(t, ctx, fill("deploy")); got != "rgb(255, 241, 168)" {
		t.Errorf("deploy waiting is %s, want the waiting yellow", got)
	}
	if os.Getenv(screenshotEnv) != "" { // mid-run: a task waiting, the build's log open
		screenshot(t, ctx, filepath.Join(root, "docs", "runctl-ui.png"))
	}
	uitest.Click(t, ctx, `g.node[data-task="deploy"]`)
	uitest.WaitJS(t, ctx, "the approve button", `!!document.querySelector("#approve")`)
	uitest.Click(t, ctx, "#approve")
	executorTask(t, ns, "release", "deploy") // scheduled: approval moved it on
	if r := (&e2e.Harness{Client: k8s}).Run(t, ns, "release"); !slices.Contains(r.Spec.ApprovedTasks, "deploy") {
		t.Errorf("approvedTasks %v, want deploy", r.Spec.ApprovedTasks)
	}
	uitest.WaitJS(t, ctx, "deploy no longer waiting", `!document.querySelector('g.node[data-task="deploy"]').classList.contains("waiting")`)
	ex.report("release", "deploy", rsv1.TaskPhaseRunning, "ship")
	uitest.WaitJS(t, ctx, "deploy Running", `document.querySelector('g.node[data-task="deploy"]').dataset.phase === "Running"`)
	// A running step's log comes live from the executor (nothing is fetched before the task ends).
	uitest.WaitJS(t, ctx, "deploy's live log in the panel", `(document.querySelector("#log")||{}).textContent?.includes("deployed")`)
	if ts := e2e.TaskStatus((&e2e.Harness{Client: k8s}).Run(t, ns, "release"), "deploy"); ts.Fetched != "" {
		t.Errorf("deploy's log was fetched already (%s): the panel did not read it from the executor", ts.Fetched)
	}
	uitest.WaitJS(t, ctx, "the stop button while the run runs", `!!document.querySelector("#stop")`)

	// The run's end shows without a reload.
	ex.report("release", "deploy", rsv1.TaskPhaseSuccess, "ship")
	uitest.WaitJS(t, ctx, "the run Finished on the page", `[...document.querySelectorAll(".runhead .badge")].some(b => b.textContent === "Finished")`)
	uitest.WaitJS(t, ctx, "the restart buttons once it ended", `!!document.querySelector("#restart-failed") && !document.querySelector("#stop")`)
	if got := uitest.JS(t, ctx, `String(window.notReloaded)`); got != "true" {
		t.Errorf("the page was reloaded")
	}

	// runctl logs reads through the same package, and prints what the panel showed.
	var out strings.Builder
	if err := (&runlogs.Reader{Runs: versioned.NewForConfigOrDie(env.Config), Kube: kubernetes.NewForConfigOrDie(env.Config), Namespace: ns, StoreURL: store}).
		Print(context.Background(), &out, "release", "build", "", false); err != nil || out.String() != "compiling main.c\nlinking app\nbuild ok\n" {
		t.Errorf("runlogs.Print (runctl logs) of release build: %q, %v", out.String(), err)
	}
}

func screenshot(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", path)
}

// TestTheSecretAndTheOriginAreRequired: without the secret prefix, with a foreign Host (DNS
// rebinding) or a POST from another origin, the server answers 403 and does nothing.
func TestTheSecretAndTheOriginAreRequired(t *testing.T) {
	u, err := url.Parse(uiURL)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + u.Host
	cases := []struct {
		name         string
		method, path string
		host, origin string
		want         int
	}{
		{"the page with the secret", "GET", u.Path, "", "", http.StatusOK},
		{"the page without the secret", "GET", "/", "", "", http.StatusForbidden},
		{"the API without the secret", "GET", "/api/runs", "", "", http.StatusForbidden},
		{"a wrong secret", "GET", "/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/api/runs", "", "", http.StatusForbidden},
		{"a foreign Host (DNS rebinding)", "GET", u.Path + "api/runs", "evil.example:" + u.Port(), "", http.StatusForbidden},
		{"a POST from another origin", "POST", u.Path + "api/runs/default/x/approve", "", "http://evil.example", http.StatusForbidden},
		{"a POST without an origin", "POST", u.Path + "api/runs/default/x/approve", "", "", http.StatusForbidden},
		{"a POST from the page reaches runops", "POST", u.Path + "api/runs/default/x/approve", "", base, http.StatusNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, err := http.NewRequest(c.method, base+c.path, strings.NewReader(`{"tasks":["x"]}`))
			if err != nil {
				t.Fatal(err)
			}
			if c.host != "" {
				req.Host = c.host
			}
			if c.origin != "" {
				req.Header.Set("Origin", c.origin)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("%s %s: %d, want %d", c.method, c.path, resp.StatusCode, c.want)
			}
		})
	}
}

func TestOnlyLoopbackAddresses(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:8080", "[::]:0"} {
		err := ui.Run(context.Background(), ui.Options{Config: env.Config, Addr: addr})
		if err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("address %s: %v, want a refusal naming loopback", addr, err)
		}
	}
	if err := ui.Run(context.Background(), ui.Options{Addr: "127.0.0.1:0"}); err == nil || errors.Is(err, context.Canceled) {
		t.Errorf("no config: %v, want an error", err)
	}
}

// TestArchivedRunPage: a run archived out of etcd is listed as archived, and its page draws its
// graph and its log from the archive, read-only (no stop, no approve).
func TestArchivedRunPage(t *testing.T) {
	ctx := uitest.Browser(t)
	ns := e2e.NewNamespace(t, k8s, "uiar")
	ex := startExecutor(t, ns, "ex", map[string]string{"a": "archived step output\n", "b": "bye\n"})
	run := &rsv1.Run{
		ObjectMeta: metav1.ObjectMeta{Name: "old", Namespace: ns, Annotations: map[string]string{rsv1.AnnotationArchiveAfter: "0s"}},
		Spec:       rsv1.RunSpec{Tasks: []rsv1.Task{runTask("a", "first"), runTask("b", "second", e2e.After("a"))}},
	}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	// The page is open before the archive lists the run: the list catches up by itself.
	if err := chromedp.Do(ctx, chromedp.Navigate(uiURL+"#/?namespace="+url.QueryEscape(ns))); err != nil {
		t.Fatal(err)
	}
	uitest.WaitJS(t, ctx, "the live run in the list", `!!document.querySelector('#runs tr[data-run="old"]')`)
	ex.report("old", "a", rsv1.TaskPhaseSuccess, "first")
	ex.report("old", "b", rsv1.TaskPhaseFailed, "second")
	e2e.Eventually(t, 2*time.Minute, "run old archived out of etcd", func() bool {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "old"}, &rsv1.Run{})
		return apierrors.IsNotFound(err)
	})
	uitest.WaitJS(t, ctx, "the archived run in the list", `(document.querySelector('#runs tr[data-run="old"]')||{}).innerText?.includes("archived")`)
	uitest.Click(t, ctx, `#runs tr[data-run="old"] a`)
	uitest.WaitJS(t, ctx, "the archived run's graph", `document.querySelectorAll("g.node").length === 2 && document.querySelectorAll("path.edge").length === 1`)
	uitest.WaitJS(t, ctx, "b Failed in red", fill("b")+` === "rgb(255, 206, 203)"`)
	if got := uitest.JS(t, ctx, `document.querySelector(".runhead").innerText`); !strings.Contains(got, "archived") || !strings.Contains(got, "Failed") {
		t.Errorf("header %q, want archived and Failed", got)
	}
	uitest.Click(t, ctx, `g.node[data-task="a"]`)
	uitest.WaitJS(t, ctx, "a's log from the archive", `(document.querySelector("#log")||{}).textContent?.includes("archived step output")`)
	if got := uitest.JS(t, ctx, `String(!!document.querySelector("#stop, #approve"))`); got != "false" {
		t.Errorf("an archived run's page offers stop or approve")
	}

	// Restart from the archived run: the page opens the new run, which points back to it.
	uitest.Click(t, ctx, "#restart-failed")
	uitest.WaitJS(t, ctx, "the restarted run's page", `/^#\/runs\/[^/]+\/old-[a-z0-9]{5}$/.test(location.hash) && document.querySelector(".runhead").innerText.includes("restart of old")`)
	name := strings.TrimPrefix(uitest.JS(t, ctx, `location.hash`), "#/runs/"+ns+"/")
	restarted := (&e2e.Harness{Client: k8s}).Run(t, ns, name)
	if rf := restarted.Spec.RestartFrom; rf == nil || rf.Run != "old" || !rf.FailedTasksOnly {
		t.Errorf("the restarted run's spec.restartFrom is %+v, want old, failed tasks only", rf)
	}
}

// TestStopButton: the Stop button stops a running run, through runops.Stop.
func TestStopButton(t *testing.T) {
	ctx := uitest.Browser(t)
	ns := e2e.NewNamespace(t, k8s, "uistop")
	ex := startExecutor(t, ns, "ex", map[string]string{"long": "working\n"})
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "long", Namespace: ns}, Spec: rsv1.RunSpec{Tasks: []rsv1.Task{runTask("long", "work")}}}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	ex.report("long", "long", rsv1.TaskPhaseRunning, "work")
	if err := chromedp.Do(ctx, chromedp.Navigate(uiURL+"#/runs/"+ns+"/long")); err != nil {
		t.Fatal(err)
	}
	uitest.WaitJS(t, ctx, "the stop button", `!!document.querySelector("#stop")`)
	uitest.Click(t, ctx, "#stop")
	uitest.WaitJS(t, ctx, "the run stopping", `document.querySelector(".runhead").innerText.includes("stopping")`)
	if r := (&e2e.Harness{Client: k8s}).Run(t, ns, "long"); !r.IsStopped() {
		t.Errorf("spec.stop is %v, want true", r.Spec.Stop)
	}
}
