// Package uitest drives the web view in Debian's chromium (headless, through chromedp) for the
// tests of internal/ui and the end-to-end suites: it starts the view's server and a browser, and
// waits for, reads and acts on the page as a person would.
package uitest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"runservice.dev/runservice/internal/ui"
)

// Browser starts a headless chromium for one test, closed by the test's cleanup. Without chromium
// the test skips, and fails when CI is set (a skip CI passed silently would hide the missing browser).
func Browser(t *testing.T) context.Context {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("chromium is required in CI (apt-get install -y chromium): %v", err)
		}
		t.Skip("no chromium here (apt-get install -y chromium); CI fails instead")
	}
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath(chromium), chromedp.WindowSize(1366, 768), chromedp.NoSandbox, chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int]("1")); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// Serve runs the web view's server (runctl ui) for one test and returns its URL, secret included;
// the test's cleanup stops it, and fails the test if it ended with an error.
func Serve(t *testing.T, o ui.Options) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	o.Ready = func(u string) { ready <- u }
	go func() { done <- ui.Run(ctx, o) }()
	select {
	case u := <-ready:
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("runctl ui: %v", err)
			}
		})
		return u
	case err := <-done:
		cancel()
		t.Fatalf("runctl ui did not start: %v", err)
		return ""
	}
}

// WaitJS evaluates a JavaScript expression until it is true, for up to a minute.
func WaitJS(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	var last string
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		if err != nil {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	page, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("main").innerText`))
	t.Fatalf("timed out waiting in the browser for %s (%s)\npage:\n%s", what, last, page)
}

// Click clicks the element css selects, as a person would (a mouse event at its place); the page
// redraws on every change of the run, so a node replaced under the click is looked up again.
func Click(t *testing.T, ctx context.Context, css string) {
	t.Helper()
	var err error
	for range 20 {
		if err = chromedp.Do(ctx, chromedp.Click(chromedp.CSS(css))); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("clicking %s: %v", css, err)
}

// JS evaluates a JavaScript expression of a string.
func JS(t *testing.T, ctx context.Context, expr string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		t.Fatalf("evaluating %s: %v", expr, err)
	}
	return s
}

// SelectTask opens a task of the run page from the keyboard alone: Tab from the top of the page
// until the task's graph node has the focus, then Enter.
func SelectTask(t *testing.T, ctx context.Context, task string) {
	t.Helper()
	focused := fmt.Sprintf(`document.activeElement?.getAttribute?.("data-task") === %q`, task)
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(document.activeElement?.blur?.(), true)`)); err != nil {
		t.Fatal(err)
	}
	err := errors.New("never reached")
	for range 100 {
		if err = chromedp.Do(ctx, chromedp.KeyEvent(kb.Tab)); err != nil {
			break
		}
		if ok, _ := chromedp.Run(ctx, chromedp.Evaluate[bool](focused)); ok {
			if err = chromedp.Do(ctx, chromedp.KeyEvent(kb.Enter)); err != nil {
				break
			}
			return
		}
	}
	t.Fatalf("selecting task %s with Tab and Enter: %v (focus on %s)", task, err, JS(t, ctx, `String(document.activeElement?.outerHTML).slice(0, 200)`))
}
