package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"k8s.io/client-go/rest"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/ui"
	"runservice.dev/runservice/internal/ui/uitest"
)

// WebViewLog: runctl ui's server, with the suite's credentials and object store, opened in
// chromium. A step prints a line unique to this test (computed by the shell, so the run's spec
// never holds it) and sleeps; the run's page, with the task selected from the keyboard, shows the
// line live from the executor while the step runs (its ExecutorTask not fetched yet). The Stop
// button ends the run; once the manager fetched the log into the object store, the page opened
// again shows the line from there (the executor drops its copy once fetched).
func WebViewLog(t *testing.T, h *Harness, cfg *rest.Config, ns string) {
	ctx := uitest.Browser(t) // first: without chromium the test skips (fails in CI) before the run
	base := uitest.Serve(t, ui.Options{Config: cfg, ObjectStore: h.ObjectStore})
	nonce := fmt.Sprintf("%x", time.Now().UnixNano())
	line := "hello-42-" + nonce // what the step prints; its command says $((6*7))
	h.Create(t, ns, "speaks", ShellTask("speak", `echo "hello-$((6*7))-`+nonce+`"; sleep 120`))
	page := base + "#/runs/" + ns + "/speaks"
	if err := chromedp.Do(ctx, chromedp.Navigate(page)); err != nil {
		t.Fatal(err)
	}
	hasLine := fmt.Sprintf(`(document.querySelector("#log")||{}).textContent?.includes(%q)`, line)

	h.WaitStepRunning(t, ns, "speaks", "speak")
	uitest.WaitJS(t, ctx, "the task's node", `!!document.querySelector('g.node[data-task="speak"]')`)
	uitest.SelectTask(t, ctx, "speak")
	uitest.WaitJS(t, ctx, "the step's line live in the log panel", hasLine)
	if ts := TaskStatus(h.Run(t, ns, "speaks"), "speak"); ts.Phase != rsv1.TaskPhaseRunning || ts.Fetched != "" {
		t.Fatalf("the panel showed the line with the task %s and its log fetched %q: want it read live, from the executor", ts.Phase, ts.Fetched)
	}

	uitest.Click(t, ctx, "#stop")
	run := h.WaitRun(t, ns, "speaks", rsv1.RunPhaseFinished)
	if ts := TaskStatus(run, "speak"); run.Status.Result != rsv1.RunResultStopped || ts.Phase != rsv1.TaskPhaseStopped {
		t.Fatalf("stopped run: %s, task %s", run.Status.Result, ts.Phase)
	}
	h.waitLogsFetched(t, ns, "speaks")
	if ts := TaskStatus(h.Run(t, ns, "speaks"), "speak"); ts.Fetched == "" || ts.Fetched == rsv1.FetchedLost {
		t.Fatalf("the run's status points at the log in the store but records the fetch of %s as %q", ts.ExecutorTask, ts.Fetched)
	}
	if err := chromedp.Do(ctx, chromedp.Reload()); err != nil {
		t.Fatal(err)
	}
	uitest.WaitJS(t, ctx, "the page opened again, the task Stopped", `document.querySelector('g.node[data-task="speak"]')?.dataset.phase === "Stopped"`)
	uitest.SelectTask(t, ctx, "speak")
	uitest.WaitJS(t, ctx, "the step's line in the log panel, from the object store", hasLine)
	if got := uitest.JS(t, ctx, `document.querySelector("#log").textContent`); strings.Count(got, line) != 1 || strings.Contains(got, "runctl ui:") {
		t.Errorf("the log panel shows %q, want the step's line once and no error", got)
	}
}
