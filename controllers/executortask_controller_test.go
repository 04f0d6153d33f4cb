package controllers_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// executorServer is an executor's HTTP endpoint as the fetcher sees it: archive answers what the
// test wants for every archive request (logs are always there).
type executorServer struct {
	*httptest.Server
	archiveStatus atomic.Int32
	archiveAsks   atomic.Int32
}

func serveExecutor(t *testing.T, ns string, archiveStatus int) *executorServer {
	t.Helper()
	s := &executorServer{}
	s.archiveStatus.Store(int32(archiveStatus))
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Header.Get("Authorization") != "Bearer t0ken":
			http.Error(w, "unauthorized", http.StatusUnauthorized)
		case strings.Contains(r.URL.Path, "/archives/"):
			s.archiveAsks.Add(1)
			if code := int(s.archiveStatus.Load()); code != http.StatusOK {
				http.Error(w, http.StatusText(code), code)
				return
			}
			_, _ = w.Write([]byte("an archive"))
		default:
			_, _ = w.Write([]byte("a log line\n"))
		}
	}))
	t.Cleanup(s.Close)
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: rsv1.ExecutorTokenSecret, Namespace: ns},
		StringData: map[string]string{rsv1.ExecutorTokenKey: "t0ken"},
	}
	if err := k8s.Create(context.Background(), secret); err != nil {
		t.Fatal(err)
	}
	return s
}

// buildAndTest is a run whose "test" restores the workspace "build" saved in its step 1.
func buildAndTest(ns string) *rsv1.Run {
	build := task("build", func(t *rsv1.Task) {
		t.Steps = append(t.Steps, rsv1.Step{SaveToWorkspace: &rsv1.SaveToWorkspaceStep{
			Contents: []rsv1.SaveContent{{SourceDir: ".", DestDir: ".", Paths: []string{"bin"}}},
		}})
	})
	test := task("test", dependsOn("build"), func(t *rsv1.Task) {
		t.Steps = append([]rsv1.Step{{RestoreWorkspace: &rsv1.RestoreWorkspaceStep{DestDir: "."}}}, t.Steps...)
	})
	return newRun(ns, "ws", build, test)
}

// reportSaved ends build's ExecutorTask with both its steps, the save included, Success.
func reportSaved(t *testing.T, ns, etName string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		et := &rsv1.ExecutorTask{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: etName}, et); err != nil {
			return err
		}
		now, exit := metav1.Now(), int32(0)
		et.Status = rsv1.ExecutorTaskStatus{
			Phase: rsv1.TaskPhaseSuccess, StartTime: &now, EndTime: &now,
			Steps: []rsv1.StepStatus{
				{Name: "echo build", Phase: rsv1.StepPhaseSuccess, ExitCode: &exit, StartTime: &now, EndTime: &now},
				{Name: "save-to-workspace", Phase: rsv1.StepPhaseSuccess, ExitCode: &exit, StartTime: &now, EndTime: &now},
			},
		}
		return k8s.Status().Update(context.Background(), et)
	})
	if err != nil {
		t.Fatalf("reporting %s: %v", etName, err)
	}
}

// waitChildFailsForWorkspace waits until "test" is final and checks it failed with the message
// naming build's step, and never got an ExecutorTask (it never ran on an empty workspace).
func waitChildFailsForWorkspace(t *testing.T, ns, why string) {
	t.Helper()
	eventually(t, 30*time.Second, "the child failed or scheduled", func() (bool, error) {
		run := getRun(t, ns, "ws")
		et, err := runTask(ns, "ws", "test")
		return et != nil || taskStatus(run, "test").Phase.IsFinal(), err
	})
	noTask(t, ns, "ws", "test")
	run := waitRunPhase(t, ns, "ws", rsv1.RunPhaseFinished)
	got := taskStatus(run, "test")
	want := `workspace of task "build" step 1 (save-to-workspace) is missing: ` + why
	if got.Phase != rsv1.TaskPhaseFailed || got.Reason != rsv1.ReasonWorkspaceMissing || got.Message != want {
		t.Fatalf("test: %s/%s %q, want Failed/%s %q", got.Phase, got.Reason, got.Message, rsv1.ReasonWorkspaceMissing, want)
	}
	if run.Status.Result != rsv1.RunResultFailed {
		t.Errorf("run result %s, want Failed", run.Status.Result)
	}
}

// TestChildFailsWhenItsParentsExecutorLeftUnfetched: the executor of a task that saved a workspace
// is removed before the fetcher got the archive (its endpoint refused meanwhile). The child that
// restores it fails naming the parent and the step; it is not run on another executor with an
// empty workspace.
func TestChildFailsWhenItsParentsExecutorLeftUnfetched(t *testing.T) {
	ns := newNamespace(t)
	srv := serveExecutor(t, ns, http.StatusServiceUnavailable)
	startExecutor(t, ns, "gone", withEndpoint(srv.URL))
	createRun(t, buildAndTest(ns))
	et := waitTask(t, ns, "ws", "build")
	startExecutor(t, ns, "other") // where the child would run
	reportSaved(t, ns, et.Name)
	eventually(t, 30*time.Second, "the fetcher asking for the archive", func() (bool, error) {
		return srv.archiveAsks.Load() > 0, nil
	})
	noTask(t, ns, "ws", "test") // waiting for the workspace
	if err := k8s.Delete(context.Background(), &rsv1.Executor{ObjectMeta: metav1.ObjectMeta{Name: "gone", Namespace: ns}}); err != nil {
		t.Fatal(err)
	}
	waitChildFailsForWorkspace(t, ns, "its executor was removed before the archive was fetched")
}

// TestChildFailsWhenItsParentsArchiveIsNotFound: the executor answers 404 for the archive of a
// successful saveToWorkspace step. That is not "saved nothing": the child fails naming the parent
// and the step.
func TestChildFailsWhenItsParentsArchiveIsNotFound(t *testing.T) {
	ns := newNamespace(t)
	srv := serveExecutor(t, ns, http.StatusNotFound)
	startExecutor(t, ns, "ex", withEndpoint(srv.URL))
	createRun(t, buildAndTest(ns))
	reportSaved(t, ns, waitTask(t, ns, "ws", "build").Name)
	waitChildFailsForWorkspace(t, ns, "its executor did not have the archive when the manager fetched it")
}
