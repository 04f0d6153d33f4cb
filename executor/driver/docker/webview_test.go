package docker_test

import (
	"testing"

	"runservice.dev/runservice/internal/e2e"
)

// TestWebViewShowsARealStepsLog: see e2e.WebViewLog, on a real container: the web view's log
// panel, in chromium, shows what the step printed, live and then from the object store (S3 here).
func TestWebViewShowsARealStepsLog(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "docker-1")
	e2e.WebViewLog(t, h, env.Config, ns)
	waitNoContainers(t, "docker-1")
}
