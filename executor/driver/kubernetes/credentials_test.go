package kubernetes_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/e2e"
	"runservice.dev/runservice/internal/objectstore"
)

// TestATaskPodsCredentialFetchesOnlyItsOwnWorkspace: the credential a task's pod gets (in its
// Secret, for its init container's workspace fetch) is not the namespace's executor token, and it
// lets the pod read only its own workspace: another task's workspace, logs and archives answer 403.
func TestATaskPodsCredentialFetchesOnlyItsOwnWorkspace(t *testing.T) {
	ns := e2e.NewNamespace(t, k8s, "k")
	secrets := watchSecrets(t, ns)
	ex := startExecutor(t, ns, "cred", "--object-store", objectstore.FileURL(filepath.Join(t.TempDir(), "store")))

	restore := func(name string) rsv1.Task {
		tk := task(name)
		// Simulated pods run no step, so a fails: its children run on that.
		tk.Depends = []rsv1.TaskDependency{{Task: "a", Conditions: []rsv1.DependCondition{rsv1.DependOnFailure, rsv1.DependOnSuccess}}}
		tk.Steps = append([]rsv1.Step{{RestoreWorkspace: &rsv1.RestoreWorkspaceStep{DestDir: "."}}}, tk.Steps...)
		return tk
	}
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "cred", Namespace: ns}}
	run.Spec.Tasks = []rsv1.Task{task("a"), restore("b"), restore("c")}
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	e2e.Eventually(t, time.Minute, "run cred finished", func() bool {
		return getRun(t, ns, "cred").Status.Phase == rsv1.RunPhaseFinished
	})
	final := getRun(t, ns, "cred")
	etOf := map[string]string{}
	for _, ts := range final.Status.Tasks {
		etOf[ts.Name] = ts.ExecutorTask
	}

	nsToken := &corev1.Secret{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: rsv1.ExecutorTokenSecret}, nsToken); err != nil {
		t.Fatal(err)
	}
	token := nsToken.Data[rsv1.ExecutorTokenKey]
	creds := map[string]string{} // task -> the credential its init container was given
	for _, s := range secrets.seen() {
		for k, v := range s.Data {
			if string(v) == string(token) {
				t.Errorf("task Secret %s carries the namespace's executor token under %q", s.Name, k)
			}
		}
		if v, ok := s.Data["token"]; ok {
			creds[s.Labels[rsv1.LabelTask]] = string(v)
			if len(s.Data["ca.crt"]) == 0 {
				t.Errorf("task Secret %s has no ca.crt: its init container could not trust the executor's https endpoint", s.Name)
			}
		}
	}
	if creds["b"] == "" || creds["c"] == "" {
		t.Fatalf("the restoring tasks' Secrets carry no credential for their init container: %v", creds)
	}

	exo := &rsv1.Executor{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: ex.Name}, exo); err != nil {
		t.Fatal(err)
	}
	get := func(cred, path string) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, exo.Spec.Endpoint+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+cred)
		resp, err := executorClient(t, ns).Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		path string
		want int
	}{
		{fmt.Sprintf("/v1/tasks/%s/workspace", etOf["b"]), http.StatusOK},
		{fmt.Sprintf("/v1/tasks/%s/workspace", etOf["c"]), http.StatusForbidden},
		{fmt.Sprintf("/v1/tasks/%s/steps/0/log", etOf["c"]), http.StatusForbidden},
		{fmt.Sprintf("/v1/tasks/%s/steps/0/log", etOf["a"]), http.StatusForbidden},
		{fmt.Sprintf("/v1/tasks/%s/archives/0", etOf["a"]), http.StatusForbidden},
		{fmt.Sprintf("/v1/tasks/%s/steps/0/log", etOf["b"]), http.StatusForbidden},
	} {
		if got := get(creds["b"], c.path); got != c.want {
			t.Errorf("task b's credential: GET %s answered %d, want %d", c.path, got, c.want)
		}
	}
	if got := get("not-a-credential", fmt.Sprintf("/v1/tasks/%s/workspace", etOf["b"])); got != http.StatusUnauthorized {
		t.Errorf("a made-up credential: GET b's workspace answered %d, want 401", got)
	}
}

// secretWatch records every Secret created in a namespace, as created.
type secretWatch struct {
	mu      sync.Mutex
	secrets []corev1.Secret
}

func watchSecrets(t *testing.T, ns string) *secretWatch {
	t.Helper()
	w, err := kube.CoreV1().Secrets(ns).Watch(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sw := &secretWatch{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			if s, ok := ev.Object.(*corev1.Secret); ok && ev.Type == watch.Added {
				sw.mu.Lock()
				sw.secrets = append(sw.secrets, *s)
				sw.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { w.Stop(); <-done })
	return sw
}

// seen returns the task Secrets seen so far (those labelled with an ExecutorTask uid).
func (sw *secretWatch) seen() []corev1.Secret {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(sw.secrets), func(s corev1.Secret) bool { return s.Labels[rsv1.LabelExecutorTaskUID] == "" })
}

// executorClient is a client of the namespace's executors, trusting their CA as a task pod's init
// container does.
func executorClient(t *testing.T, ns string) *http.Client {
	t.Helper()
	ca := &corev1.Secret{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: rsv1.ExecutorCASecret}, ca); err != nil {
		t.Fatalf("reading the executors' CA: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca.Data["ca.crt"]) {
		t.Fatal("the executors' CA secret holds no certificate")
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
}
