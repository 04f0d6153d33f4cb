package docker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/objectstore"
)

// TestTaskCannotMakeTheExecutorReadHostFiles: the task's directory is bind-mounted read-write into
// its container, and the executor (root on the host) reads the steps' files from it. Tasks that
// replace their log with a symbolic link to a root-only file on the host, a FIFO, a hard link or
// a 10 GiB sparse file, that replace steps/ with a link to /, or plant a link at the stop file
// fail with a message naming the step and the file; the host file's content is nowhere (object
// store, run status, runctl logs), nothing is created outside the task's directory, nothing
// blocks, and the same executor then runs a normal task.
func TestTaskCannotMakeTheExecutorReadHostFiles(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "d")
	startExecutor(t, ns, "sandbox", "--max-log-size", "1Mi")

	host := t.TempDir()
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	canaryText := "canary-" + hex.EncodeToString(secret)
	canary := filepath.Join(host, "canary")
	if err := os.WriteFile(canary, []byte(canaryText+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(host, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	created := filepath.Join(outside, "created-by-the-executor")

	const dir = "/.runservice"
	tasks := []rsv1.Task{
		// A first step whose log is fine, fetched all the same; the second replaces its own log.
		e2e.ShellTask("leak", "echo mine; ln -sf "+canary+" "+dir+"/steps/1.log", func(t *rsv1.Task) {
			t.Steps = append([]rsv1.Step{{Run: &rsv1.RunStep{Name: ptr.To("before"), Command: "echo before-the-leak"}}}, t.Steps...)
		}),
		e2e.ShellTask("fifo", "rm "+dir+"/steps/0.log; mkfifo "+dir+"/steps/0.log"),
		e2e.ShellTask("hardlink", "rm "+dir+"/steps/0.log; ln "+dir+"/task.json "+dir+"/steps/0.log"),
		e2e.ShellTask("sparse", "truncate -s 10G "+dir+"/steps/0.log"),
		// steps/ becomes a link to / once the step's result says Running: the executor reading
		// steps/0.json or steps/0.log would read the host's /.
		e2e.ShellTask("stepsdir", "mv "+dir+"/steps "+dir+"/old; ln -s / "+dir+"/steps"),
		// The toolbox would see the stop file and end the task itself: the step freezes it first,
		// then stopping the run makes the executor create the stop file.
		e2e.ShellTask("stoplink", "kill -STOP $PPID; ln -s "+created+" "+dir+"/stop; echo planted; sleep 60"),
	}
	h.Create(t, ns, "hostile", tasks...)
	h.Eventually(t, "the other tasks final and the stop link planted", func() bool {
		for _, ts := range h.Run(t, ns, "hostile").Status.Tasks {
			if ts.Name == "stoplink" && ts.Phase.IsFinal() {
				t.Fatalf("task stoplink ended before it was stopped: %+v", ts)
			}
			if ts.Name != "stoplink" && !ts.Phase.IsFinal() {
				return false
			}
		}
		log, _ := h.Logs(ns, "hostile", "stoplink")
		return strings.Contains(log, "planted")
	})
	stop := client.RawPatch(types.MergePatchType, []byte(`{"spec":{"stop":true}}`))
	if err := k8s.Patch(context.Background(), &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "hostile"}}, stop); err != nil {
		t.Fatal(err)
	}
	run := h.WaitRun(t, ns, "hostile", rsv1.RunPhaseFinished)

	want := map[string]string{
		"leak":     `step "leak" log steps/1.log: is a symbolic link; refused`,
		"fifo":     `step "fifo" log steps/0.log: is a named pipe (FIFO); refused`,
		"hardlink": `step "hardlink" log steps/0.log: has 2 hard links; refused`,
		"sparse":   `step "sparse" log steps/0.log: is larger than the executor's limit of 1Mi; refused`,
		"stepsdir": `step "stepsdir" result steps/0.json: steps is a symbolic link; refused`,
		"stoplink": `stop: is a symbolic link; refused`,
	}
	for name, msg := range want {
		if ts := e2e.TaskStatus(run, name); ts.Phase != rsv1.TaskPhaseFailed || ts.Message != msg {
			t.Errorf("task %s: %s %q, want Failed %q", name, ts.Phase, ts.Message, msg)
		}
	}
	if _, err := os.Lstat(created); err == nil {
		t.Errorf("the executor created %s, outside the task's directory, through the task's stop link", created)
	}

	// What the tasks did to their files is fetched without them: the good step's log is stored.
	h.Eventually(t, "the leak task's good log fetched", func() bool {
		return e2e.TaskStatus(h.Run(t, ns, "hostile"), "leak").Steps[0].LogKey != ""
	})
	if log, err := h.Logs(ns, "hostile", "leak", "before"); err != nil || !strings.Contains(log, "before-the-leak") {
		t.Errorf("the good step's log: %v\n%s", err, log)
	}
	var seen strings.Builder
	for name := range want {
		log, _ := h.Logs(ns, "hostile", name)
		seen.WriteString(log)
	}
	status, _ := json.Marshal(h.Run(t, ns, "hostile").Status)
	seen.Write(status)
	store, err := objectstore.Open(context.Background(), storeURL)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	keys, err := store.List(context.Background(), "runs/"+ns+"/")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range keys {
		rc, err := store.Get(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(io.LimitReader(rc, 2<<20))
		_ = rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(data) > 1<<20+1024 {
			t.Errorf("%s holds %d bytes or more, over the executor's 1Mi log limit", key, len(data))
		}
		seen.Write(data)
	}
	if strings.Contains(seen.String(), canaryText) {
		t.Errorf("the host's root-only canary leaked into the object store, the run's status or runctl logs")
	}

	h.Create(t, ns, "afterwards", e2e.ShellTask("quick", "echo still working"))
	if run := h.WaitRun(t, ns, "afterwards", rsv1.RunPhaseFinished); run.Status.Result != rsv1.RunResultSuccess {
		t.Fatalf("a normal run on the same executor: %s %+v", run.Status.Result, run.Status.Tasks)
	}
	waitNoContainers(t, "sandbox")
}
