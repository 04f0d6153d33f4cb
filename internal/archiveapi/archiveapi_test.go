package archiveapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/yaml"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

var (
	env   *testenv.Env
	k8s   client.Client
	store *objectstore.Store
	admin kubectl
	// seeded are the archived runs of nsRuns, by name.
	seeded = map[string]*arv1.ArchivedRun{}
)

// Namespaces of the archived runs the tests read.
const (
	nsRuns   = "archive-runs"  // 50 runs in change groups a and b, a fifth of them Failed
	nsNames  = "archive-names" // a run archived twice under one name (deleted and created again)
	nsProbe  = "archive-probe" // an index entry whose document is not in the store
	runCount = 50
)

func TestMain(m *testing.M) {
	level := zapcore.ErrorLevel
	if os.Getenv("TEST_LOG") != "" {
		level = zapcore.DebugLevel
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(level)))
	klog.SetLogger(logf.Log) // the generic server's logs, at the same level
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "runservice-archiveapi-")
	if err != nil {
		return 1, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	storeURL := objectstore.FileURL(filepath.Join(dir, "store"))
	if store, err = objectstore.Open(ctx, storeURL); err != nil {
		return 1, err
	}
	if err := seed(ctx); err != nil {
		return 1, err
	}

	if env, err = testenv.Start(); err != nil {
		return 1, err
	}
	defer func() { _ = env.Stop() }()
	if k8s, err = client.New(env.Config, client.Options{Scheme: manager.Scheme()}); err != nil {
		return 1, err
	}
	if admin, err = newKubectl(dir, "admin", env.Kubeconfig); err != nil {
		return 1, err
	}
	opts := env.ManagerOptions()
	opts.ObjectStore = storeURL
	if opts.ArchiveAPI, err = env.ArchiveAPI(ctx); err != nil {
		return 1, err
	}
	opts.ArchiveIndexDir = filepath.Join(dir, "index") // rebuilt from the seeded segment
	mgr, err := manager.New(ctx, env.Config, opts)
	if err != nil {
		return 1, err
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	defer func() { cancel(); <-done }()
	if err := waitForAPI(ctx); err != nil {
		return 1, err
	}
	return m.Run(), nil
}

// waitForAPI waits until the apiserver serves the archive API through its APIService, and its
// index has been rebuilt from the store.
func waitForAPI(ctx context.Context) error {
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := admin.run(ctx, "get", "--raw", "/apis/"+arv1.GroupVersion.String()+"/archivedruns")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the archive API does not list archived runs through its APIService after a minute: %s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// seed archives the runs the tests read, as the archiver does: documents, then a segment of their
// index entries.
func seed(ctx context.Context) error {
	base := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	var docs []*arv1.ArchivedRun
	for i := range runCount {
		groups := []string{"a"}
		if i%2 == 1 {
			groups = []string{"b"}
		}
		if i%10 == 0 {
			groups = []string{"a", "b"}
		}
		result := rsv1.RunResultSuccess
		if i%5 == 0 {
			result = rsv1.RunResultFailed
		}
		doc := document(nsRuns, fmt.Sprintf("run-%02d", i), fmt.Sprintf("uid-run-%02d", i), groups, result, base.Add(time.Duration(i)*time.Minute), time.Duration(60+i)*time.Second)
		seeded[doc.Name] = doc
		docs = append(docs, doc)
	}
	docs = append(docs,
		document(nsNames, "recreated", "uid-recreated-old", nil, rsv1.RunResultFailed, base, time.Minute),
		document(nsNames, "recreated", "uid-recreated-new", nil, rsv1.RunResultSuccess, base.Add(time.Hour), time.Minute),
	)
	var entries []archive.Entry
	for _, d := range docs {
		if err := archive.PutDocument(ctx, store, d); err != nil {
			return err
		}
		entries = append(entries, archive.EntryOf(d))
	}
	// Indexed, but its document is not in the store: only a list that reads no document shows it.
	entries = append(entries, archive.EntryOf(document(nsProbe, "indexed-only", "uid-indexed-only", nil, rsv1.RunResultSuccess, base, time.Minute)))
	_, err := archive.WriteSegment(ctx, store, time.Now(), entries)
	return err
}

// document is the archived run of a run of two tasks that finished with result.
func document(ns, name, uid string, groups []string, result rsv1.RunResult, created time.Time, took time.Duration) *arv1.ArchivedRun {
	start := metav1.NewTime(created.Add(10 * time.Second))
	end := metav1.NewTime(start.Add(took))
	run := &rsv1.Run{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns, UID: types.UID(uid), CreationTimestamp: metav1.NewTime(created),
			Labels: map[string]string{"team": "infra"},
		},
		Spec: rsv1.RunSpec{
			ChangeGroups: groups,
			Tasks: []rsv1.Task{
				{Name: "build", Containers: []rsv1.Container{{Image: "busybox:1.36"}}, Steps: []rsv1.Step{{Run: &rsv1.RunStep{Command: "make"}}}},
				{Name: "test", Containers: []rsv1.Container{{Image: "busybox:1.36"}}, Steps: []rsv1.Step{{Run: &rsv1.RunStep{Command: "make test"}}},
					Depends: []rsv1.TaskDependency{{Task: "build"}}},
			},
		},
		Status: rsv1.RunStatus{
			Phase: rsv1.RunPhaseFinished, Result: result, Progress: "2/2", StartTime: &start, EndTime: &end,
			Tasks: []rsv1.TaskStatus{{Name: "build", Phase: rsv1.TaskPhaseSuccess}, {Name: "test", Phase: rsv1.TaskPhaseSuccess}},
		},
	}
	var tasks []rsv1.ExecutorTask
	for _, t := range run.Spec.Tasks {
		tasks = append(tasks, rsv1.ExecutorTask{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-" + t.Name, UID: types.UID(uid + "-" + t.Name)},
			Spec:       rsv1.ExecutorTaskSpec{Executor: "docker-1", TaskName: t.Name, Task: t},
			Status:     rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseSuccess},
		})
	}
	return archive.Document(run, tasks, end.Add(time.Minute))
}

// kubectl runs the control plane's kubectl as one user.
type kubectl struct{ kubeconfig, cacheDir string }

func newKubectl(dir, user string, kubeconfig []byte) (kubectl, error) {
	k := kubectl{kubeconfig: filepath.Join(dir, user+".kubeconfig"), cacheDir: filepath.Join(dir, user+"-cache")}
	return k, os.WriteFile(k.kubeconfig, kubeconfig, 0o600)
}

func (k kubectl) run(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.Kubectl(), append([]string{"--kubeconfig", k.kubeconfig, "--cache-dir", k.cacheDir}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ok runs kubectl and fails the test when it fails.
func (k kubectl) ok(t *testing.T, args ...string) string {
	t.Helper()
	out, err := k.run(context.Background(), args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// refused runs kubectl, expects it to fail, and returns what it said.
func (k kubectl) refused(t *testing.T, args ...string) string {
	t.Helper()
	out, err := k.run(context.Background(), args...)
	if err == nil {
		t.Fatalf("kubectl %s succeeded, want an error:\n%s", strings.Join(args, " "), out)
	}
	return out
}

// names are the names kubectl -o name printed, without their kind.
func names(out string) []string {
	var ns []string
	for _, l := range strings.Fields(out) {
		ns = append(ns, strings.TrimPrefix(l, "archivedrun.archive.runservice.dev/"))
	}
	return ns
}

// expected are the names of the seeded runs whose index i satisfies keep, newest first.
func expected(keep func(i int) bool) []string {
	var out []string
	for i := runCount - 1; i >= 0; i-- {
		if keep(i) {
			out = append(out, fmt.Sprintf("run-%02d", i))
		}
	}
	return out
}

// TestKubectlGetPrintsTheTable: kubectl get prints the columns of archived runs, newest first,
// with each run's change groups, phase, result, tasks, start and duration; ar is the short name and
// runservice the category.
func TestKubectlGetPrintsTheTable(t *testing.T) {
	out := admin.ok(t, "get", "archivedruns", "-n", nsRuns)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if got, want := strings.Fields(lines[0]), []string{"NAME", "CHANGEGROUPS", "PHASE", "RESULT", "TASKS", "STARTED", "DURATION", "AGE"}; !slices.Equal(got, want) {
		t.Fatalf("columns %v, want %v", got, want)
	}
	if len(lines) != runCount+1 {
		t.Fatalf("%d rows, want %d:\n%s", len(lines)-1, runCount, out)
	}
	for i, l := range lines[1:] {
		cells := strings.Fields(l)
		name := fmt.Sprintf("run-%02d", runCount-1-i) // newest first
		doc := seeded[name]
		want := []string{name, strings.Join(doc.Spec.ChangeGroups, ","), "Finished", string(doc.Status.Result), "2/2",
			doc.Status.StartTime.UTC().Format(time.RFC3339), fmt.Sprintf("%ds", 60+runCount-1-i)}
		if len(cells) != 8 || !slices.Equal(cells[:7], want) {
			t.Fatalf("row %d: %q, want %q and an age", i, cells, want)
		}
	}
	// Every namespace: the 50 runs, the run archived twice, the indexed-only run.
	if all := strings.Split(strings.TrimSpace(admin.ok(t, "get", "ar", "-A", "--no-headers")), "\n"); len(all) != runCount+3 {
		t.Fatalf("kubectl get ar -A: %d rows, want %d", len(all), runCount+3)
	}
	if short := admin.ok(t, "get", "ar", "-n", nsRuns); short != out {
		t.Fatalf("kubectl get ar differs from kubectl get archivedruns:\n%s", short)
	}
	// The OpenAPI models the server publishes reach kubectl through the apiserver (which fetches
	// them within seconds of the APIService's start).
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Second) {
		explain, _ := admin.run(context.Background(), "explain", "archivedruns.status.executorTasks")
		if strings.Contains(explain, "executorTasks are the run's ExecutorTasks") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubectl explain does not describe archived runs:\n%s", explain)
		}
	}
	category := admin.ok(t, "get", "runservice", "-n", nsRuns, "-o", "name")
	if !strings.Contains(category, "archivedrun.archive.runservice.dev/run-49\n") {
		t.Fatalf("kubectl get runservice does not list archived runs:\n%s", category)
	}
}

// TestTableRowsCarryTheRunsLabels: a Table row's object has the run's own labels beside the ones
// the archive derives, so kubectl's -L and --show-labels show them for archived runs as for live ones.
func TestTableRowsCarryTheRunsLabels(t *testing.T) {
	out := admin.ok(t, "get", "ar", "-n", nsRuns, "-L", "team", "--no-headers")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != runCount {
		t.Fatalf("%d rows, want %d:\n%s", len(lines), runCount, out)
	}
	for _, l := range lines {
		if cells := strings.Fields(l); cells[len(cells)-1] != "infra" {
			t.Fatalf("row %q: the last column (-L team) is not the run's label infra", l)
		}
	}
	shown := admin.ok(t, "get", "ar", "run-10", "-n", nsRuns, "--show-labels", "--no-headers")
	for _, want := range []string{"team=infra", "changegroup.runservice.dev/a=", "runservice.dev/result=Failed"} {
		if !strings.Contains(shown, want) {
			t.Fatalf("--show-labels does not show %s:\n%s", want, shown)
		}
	}
}

// TestTableListsReadNoDocument: the Table of kubectl get comes from the index alone (an entry
// whose document is gone is still a row), while lists of objects read the documents.
func TestTableListsReadNoDocument(t *testing.T) {
	if out := admin.ok(t, "get", "ar", "-n", nsProbe, "--no-headers"); !strings.HasPrefix(out, "indexed-only ") {
		t.Fatalf("the Table does not show the indexed run:\n%s", out)
	}
	if out := admin.ok(t, "get", "ar", "-n", nsProbe, "-o", "name"); out != "" {
		t.Fatalf("a list of objects shows a run without its document:\n%s", out)
	}
}

// TestChunkedListsReturnEachRunOnce: --chunk-size=7 pages through the 50 runs with continue
// tokens, as objects (documents) and as a Table, each run exactly once, newest first.
func TestChunkedListsReturnEachRunOnce(t *testing.T) {
	all := expected(func(int) bool { return true })
	if got := names(admin.ok(t, "get", "ar", "-n", nsRuns, "--chunk-size=7", "-o", "name")); !slices.Equal(got, all) {
		t.Fatalf("objects, 7 a page: %v\nwant %v", got, all)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(admin.ok(t, "get", "ar", "-n", nsRuns, "--chunk-size=7", "--no-headers")), "\n") {
		got = append(got, strings.Fields(l)[0])
	}
	if !slices.Equal(got, all) {
		t.Fatalf("Table, 7 a page: %v\nwant %v", got, all)
	}
	// kubectl asked for 8 pages: the first and 7 continued.
	out := admin.ok(t, "get", "ar", "-n", nsRuns, "--chunk-size=7", "-o", "name", "-v=6")
	if n := strings.Count(out, "continue="); n != 7 {
		t.Fatalf("kubectl continued %d lists, want 7 (50 runs, 7 a page):\n%s", n, out)
	}
}

// TestLabelSelectors: the change group, phase and result labels select archived runs.
func TestLabelSelectors(t *testing.T) {
	for _, tc := range []struct {
		selector string
		keep     func(i int) bool
	}{
		{"changegroup.runservice.dev/a", func(i int) bool { return i%2 == 0 }},
		{"changegroup.runservice.dev/b", func(i int) bool { return i%2 == 1 || i%10 == 0 }},
		{"changegroup.runservice.dev/a,changegroup.runservice.dev/b", func(i int) bool { return i%10 == 0 }},
		{"runservice.dev/result=Failed", func(i int) bool { return i%5 == 0 }},
		{"runservice.dev/result==Success,changegroup.runservice.dev/a", func(i int) bool { return i%2 == 0 && i%5 != 0 }},
		{"runservice.dev/phase=Cancelled", func(int) bool { return false }},
	} {
		want := expected(tc.keep)
		if got := names(admin.ok(t, "get", "ar", "-n", nsRuns, "-l", tc.selector, "-o", "name", "--chunk-size=4")); !slices.Equal(got, want) {
			t.Errorf("-l %s: %v\nwant %v", tc.selector, got, want)
		}
	}
}

// TestGetIsTheDocument: kubectl get archivedrun NAME -o yaml is the archived document; the run's
// uid names it too, and a name archived twice gets the newest run.
func TestGetIsTheDocument(t *testing.T) {
	ctx := context.Background()
	doc, err := archive.GetDocument(ctx, store, nsRuns, "run-07", "uid-run-07")
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"run-07", "uid-run-07"} {
		got, err := yaml.YAMLToJSON([]byte(admin.ok(t, "get", "archivedrun", name, "-n", nsRuns, "-o", "yaml")))
		if err != nil {
			t.Fatal(err)
		}
		if !jsonEqual(t, got, want) {
			t.Errorf("kubectl get archivedrun %s -o yaml:\n%s\nwant the document:\n%s", name, got, want)
		}
	}
	if uid := admin.ok(t, "get", "ar", "recreated", "-n", nsNames, "-o", "jsonpath={.metadata.uid}"); uid != "uid-recreated-new" {
		t.Errorf("the run archived twice under one name: got uid %s, want the newest", uid)
	}
	if uid := admin.ok(t, "get", "ar", "uid-recreated-old", "-n", nsNames, "-o", "jsonpath={.metadata.uid}"); uid != "uid-recreated-old" {
		t.Errorf("by uid: got %s", uid)
	}
	if got := names(admin.ok(t, "get", "ar", "-n", nsNames, "--field-selector", "metadata.name=recreated", "-o", "name")); !slices.Equal(got, []string{"recreated", "recreated"}) {
		t.Errorf("--field-selector metadata.name=recreated: %v, want both runs", got)
	}
	if out := admin.refused(t, "get", "ar", "run-07", "-n", nsNames); !strings.Contains(out, "(NotFound)") {
		t.Errorf("another namespace's run: %s", out)
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(x, y)
}

// TestArchivedRunsAreAuthorizedAsRuns: a user who may not list runs in a namespace is refused its
// archived runs (403, saying why), and may list them once granted runs there, not elsewhere.
func TestArchivedRunsAreAuthorizedAsRuns(t *testing.T) {
	ctx := context.Background()
	user, err := env.AddUser(envtest.User{Name: "alice"}, env.Config)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	alice, err := newKubectl(t.TempDir(), "alice", kc)
	if err != nil {
		t.Fatal(err)
	}
	out := alice.refused(t, "get", "ar", "-n", nsRuns)
	if !strings.Contains(out, "(Forbidden)") || !strings.Contains(out, "archived runs are authorized as runs") {
		t.Fatalf("alice, who may not list runs, lists archived runs: %s", out)
	}
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "run-reader", Namespace: nsRuns},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{rsv1.GroupVersion.Group}, Resources: []string{"runs"}, Verbs: []string{"get", "list"}}},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "alice-reads-runs", Namespace: nsRuns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: "alice"}},
	}
	for _, o := range []client.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsRuns}}, role, binding} {
		if err := k8s.Create(ctx, o); client.IgnoreAlreadyExists(err) != nil {
			t.Fatal(err)
		}
	}
	// The archive API caches a denial for 10 s (the delegating authorizer's default).
	deadline := time.Now().Add(40 * time.Second)
	for {
		out, err := alice.run(ctx, "get", "ar", "-n", nsRuns, "-o", "name")
		if err == nil {
			if got := names(out); len(got) != runCount {
				t.Fatalf("alice lists %d archived runs, want %d", len(got), runCount)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice, granted runs, is still refused archived runs: %s", out)
		}
		time.Sleep(time.Second)
	}
	if out := alice.refused(t, "get", "ar", "-n", nsNames); !strings.Contains(out, "(Forbidden)") {
		t.Fatalf("alice lists archived runs of a namespace where she may not list runs: %s", out)
	}
}

// TestBadInputIsRefused: a selector the index cannot answer, a forged continue token, a token of
// another list, and a watch are refused with an error that says what works.
func TestBadInputIsRefused(t *testing.T) {
	ctx := context.Background()
	path := "/apis/archive.runservice.dev/v1alpha1/namespaces/" + nsRuns + "/archivedruns"
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"get", "ar", "-n", nsRuns, "-l", "team=infra"}, []string{"(BadRequest)", "team is not a selectable label", "changegroup.runservice.dev/<group>"}},
		{[]string{"get", "ar", "-n", nsRuns, "-l", "runservice.dev/phase=Running"}, []string{"(BadRequest)", "one of Finished, Cancelled, SetupError"}},
		{[]string{"get", "ar", "-n", nsRuns, "-l", "runservice.dev/result!=Failed"}, []string{"(BadRequest)", "by equality only"}},
		{[]string{"get", "ar", "-n", nsRuns, "--field-selector", "status.phase=Finished"}, []string{"(BadRequest)", "metadata.name and metadata.namespace only"}},
		{[]string{"get", "--raw", path + "?limit=5&continue=forged"}, []string{"(BadRequest)", "continue", "list again without it"}},
		{[]string{"get", "--raw", path + "?watch=true"}, []string{"(MethodNotAllowed)", "watch is not supported"}},
	} {
		out := admin.refused(t, tc.args...)
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("kubectl %s: %s\nwant it to say %q", strings.Join(tc.args, " "), out, w)
			}
		}
	}
	// A token of a list with a selector does not continue a list without it.
	var page metav1.List
	if err := json.Unmarshal([]byte(admin.ok(t, "get", "--raw", path+"?limit=5&labelSelector=changegroup.runservice.dev%2Fa")), &page); err != nil {
		t.Fatal(err)
	}
	if page.Continue == "" || page.RemainingItemCount == nil || *page.RemainingItemCount != 20 {
		t.Fatalf("first page of 5 of 25: continue %q, remainingItemCount %v", page.Continue, page.RemainingItemCount)
	}
	out, _ := admin.run(ctx, "get", "--raw", path+"?limit=5&continue="+page.Continue)
	if !strings.Contains(out, "(BadRequest)") {
		t.Errorf("a token of another list: %s", out)
	}
}

// TestTypedClient: the generated clientset pages through archived runs and gets one.
func TestTypedClient(t *testing.T) {
	ctx := context.Background()
	runs := versioned.NewForConfigOrDie(env.Config).ArchiveV1alpha1().ArchivedRuns(nsRuns)
	var got []string
	opts := metav1.ListOptions{LabelSelector: "runservice.dev/result=Failed", Limit: 3}
	for {
		page, err := runs.List(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Items {
			got = append(got, r.Name)
			if r.Status.Result != rsv1.RunResultFailed || len(r.Status.ExecutorTasks) != 2 {
				t.Fatalf("%s: result %s, %d executor tasks: not the document", r.Name, r.Status.Result, len(r.Status.ExecutorTasks))
			}
		}
		if opts.Continue = page.Continue; opts.Continue == "" {
			break
		}
	}
	if want := expected(func(i int) bool { return i%5 == 0 }); !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	run, err := runs.Get(ctx, "run-13", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	run.TypeMeta = seeded["run-13"].TypeMeta // client-go's decoder drops it
	got1, _ := json.Marshal(run)
	want1, _ := json.Marshal(seeded["run-13"])
	if !jsonEqual(t, got1, want1) {
		t.Fatalf("got %s\nwant the document %s", got1, want1)
	}
}
