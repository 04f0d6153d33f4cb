package controllers_test

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/archive/index"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

// archivedSoon makes run archived as soon as it ends (the suite's manager waits an hour).
func archivedSoon(run *rsv1.Run, after string) *rsv1.Run {
	if run.Annotations == nil {
		run.Annotations = map[string]string{}
	}
	run.Annotations[rsv1.AnnotationArchiveAfter] = after
	return run
}

// fanOut is a → (b, c), in change group g.
func fanOut(ns, name string) *rsv1.Run {
	run := newRun(ns, name, task("a"), task("b", dependsOn("a")), task("c", dependsOn("a")))
	run.Spec.ChangeGroups = []string{"g1"}
	return run
}

func openStore(t *testing.T) *objectstore.Store {
	t.Helper()
	s, err := objectstore.Open(context.Background(), storeURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// waitArchived waits until run (read before) has left etcd, with its ExecutorTasks, and returns its
// document.
func waitArchived(t *testing.T, run *rsv1.Run) *arv1.ArchivedRun {
	t.Helper()
	ctx := context.Background()
	eventually(t, 60*time.Second, "run "+run.Name+" archived and gone from etcd", func() (bool, error) {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(run), &rsv1.Run{})
		return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
	})
	var list rsv1.ExecutorTaskList
	if err := k8s.List(ctx, &list, client.InNamespace(run.Namespace), client.MatchingLabels{rsv1.LabelRunUID: string(run.UID)}); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Errorf("%d ExecutorTasks of the archived run are still in etcd", len(list.Items))
	}
	doc, err := archive.GetDocument(ctx, openStore(t), run.Namespace, run.Name, string(run.UID))
	if err != nil {
		t.Fatalf("the archived run's document: %v", err)
	}
	return doc
}

// segmentEntries are the index entries of uid in every segment of the store.
func segmentEntries(t *testing.T, uid types.UID) []archive.Entry {
	t.Helper()
	ctx := context.Background()
	store := openStore(t)
	keys, err := store.List(ctx, archive.SegmentPrefix)
	if err != nil {
		t.Fatal(err)
	}
	var out []archive.Entry
	for _, k := range keys {
		entries, err := archive.ReadSegment(ctx, store, k)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.UID == string(uid) {
				out = append(out, e)
			}
		}
	}
	return out
}

// checkDocument compares an archived run's document with the run as it finished (read from the
// apiserver: whole, where the manager's cache keeps runs slim).
func checkDocument(t *testing.T, doc *arv1.ArchivedRun, run *rsv1.Run, tasks ...string) {
	t.Helper()
	if doc.UID != run.UID || doc.Name != run.Name || doc.Namespace != run.Namespace {
		t.Errorf("document of %s/%s %s, want the run's %s/%s %s", doc.Namespace, doc.Name, doc.UID, run.Namespace, run.Name, run.UID)
	}
	if !equality.Semantic.DeepEqual(doc.Spec, run.Spec) || !maps.Equal(doc.Annotations, run.Annotations) {
		t.Errorf("document's spec and annotations\n%+v\n%v\nwant the run's as stored\n%+v\n%v", doc.Spec, doc.Annotations, run.Spec, run.Annotations)
	}
	if doc.Status.Phase != run.Status.Phase || doc.Status.Result != run.Status.Result || len(doc.Status.Tasks) != len(run.Status.Tasks) {
		t.Errorf("document: %s/%s with %d tasks, want %s/%s with %d", doc.Status.Phase, doc.Status.Result, len(doc.Status.Tasks),
			run.Status.Phase, run.Status.Result, len(run.Status.Tasks))
	}
	var got []string
	for _, et := range doc.Status.ExecutorTasks {
		got = append(got, et.Task)
		if !et.Status.Phase.IsFinal() || et.Fetched == "" || et.Executor == "" {
			t.Errorf("archived ExecutorTask %s: phase %s, fetched %q, executor %q", et.Name, et.Status.Phase, et.Fetched, et.Executor)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, tasks) {
		t.Errorf("archived ExecutorTasks of tasks %v, want %v", got, tasks)
	}
	for k, v := range map[string]string{
		arv1.LabelChangeGroupPrefix + "g1": "", arv1.LabelPhase: string(run.Status.Phase), arv1.LabelResult: string(run.Status.Result),
	} {
		if have, ok := doc.Labels[k]; !ok || have != v {
			t.Errorf("document label %s=%q (present %v), want %q", k, have, ok, v)
		}
	}
	if n := len(segmentEntries(t, run.UID)); n == 0 {
		t.Errorf("no index segment names the archived run")
	}
}

// TestAFinishedRunIsArchivedThenLeavesEtcd: a finished run carries the labels archived runs carry,
// stays until its archive-after has passed, and then is in the object store (document and index
// entry) and no longer in etcd, with its ExecutorTasks.
func TestAFinishedRunIsArchivedThenLeavesEtcd(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1") // no endpoint: the fetcher marks its tasks lost
	run := archivedSoon(fanOut(ns, "r"), "3s")
	run.Spec.Environment = []rsv1.EnvVar{{Name: "GOFLAGS", Value: "-mod=mod"}}
	applied(t, run)
	createRun(t, run)
	for _, task := range []string{"a", "b", "c"} {
		complete(t, ns, "r", task, rsv1.TaskPhaseSuccess)
	}
	run = waitRunPhase(t, ns, "r", rsv1.RunPhaseFinished)
	eventually(t, 10*time.Second, "the finished run labelled", func() (bool, error) {
		run = getRun(t, ns, "r")
		_, grouped := run.Labels[arv1.LabelChangeGroupPrefix+"g1"]
		return grouped && run.Labels[arv1.LabelPhase] == "Finished" && run.Labels[arv1.LabelResult] == "Success", nil
	})
	if !slices.Contains(run.Finalizers, rsv1.FinalizerArchive) {
		t.Errorf("finalizers %v, want %s", run.Finalizers, rsv1.FinalizerArchive)
	}
	if time.Now().Before(run.Status.EndTime.Add(2 * time.Second)) {
		ok, err := openStore(t).Exists(context.Background(), archive.DocumentKey(ns, "r", string(run.UID)))
		if err != nil || ok {
			t.Errorf("archived before its archive-after: %v %v", ok, err)
		}
	}
	doc := waitArchived(t, run)
	if doc.Status.ArchiveTime.Time.Before(run.Status.EndTime.Add(2 * time.Second)) {
		t.Errorf("archived at %v, less than 3s after its end %v", doc.Status.ArchiveTime, run.Status.EndTime)
	}
	checkDocument(t, doc, run, "a", "b", "c")
}

// TestADeletedRunIsStoppedThenArchived: deleting a running run leaves its change group at once,
// stops its tasks and keeps it (FinalizerArchive) until it has ended and is archived.
func TestADeletedRunIsStoppedThenArchived(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	startExecutor(t, ns, "ex1")
	createRun(t, fanOut(ns, "doomed"))
	et := waitTask(t, ns, "doomed", "a")
	report(t, ns, et.Name, rsv1.TaskPhaseRunning, "")
	run := getRun(t, ns, "doomed")
	if err := k8s.Delete(ctx, run); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the running task stopped and the run out of its group", func() (bool, error) {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(et), et); err != nil {
			return false, err
		}
		return et.Spec.Stop && len(getGroup(t, ns, "g1").Status.ActiveRuns) == 0, nil
	})
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(run), run); err != nil {
		t.Fatalf("the deleted run is gone before its task ended: %v", err)
	}
	report(t, ns, et.Name, rsv1.TaskPhaseStopped, "")
	run.Status.Phase, run.Status.Result = rsv1.RunPhaseFinished, rsv1.RunResultStopped
	doc := waitArchived(t, run)
	if !doc.Status.Phase.IsFinal() || doc.Status.Result != rsv1.RunResultStopped {
		t.Errorf("archived as %s/%s, want final and Stopped", doc.Status.Phase, doc.Status.Result)
	}
	if len(doc.Status.ExecutorTasks) != 1 || doc.Status.ExecutorTasks[0].Status.Phase != rsv1.TaskPhaseStopped {
		t.Errorf("archived ExecutorTasks %+v, want a's, Stopped", doc.Status.ExecutorTasks)
	}
}

// archiveSteps are where the archiver's StepDone is called, in order ("segment-write" is midway
// through the segment's write).
var archiveSteps = []string{"document", "segment-write", "segment", "executortasks", "finalizer"}

// archiveStore is an object store the archive's fault tests run the manager on, and how to take it
// away for a while and bring it back.
type archiveStore struct {
	url      string
	down, up func(t *testing.T)
}

// onEachStore runs f twice, the manager restarted on each store: the suite's directory (file://)
// and a bucket of a real S3 server (versitygw). Afterwards the suite's manager is back on its
// directory.
func onEachStore(t *testing.T, f func(t *testing.T, s archiveStore)) {
	for _, kind := range []string{"file", "s3"} {
		t.Run(kind, func(t *testing.T) {
			var s archiveStore
			if kind == "file" {
				s = dirStore(t)
			} else {
				s = s3Store(t)
			}
			useStore(t, s.url)
			f(t, s)
		})
	}
}

// dirStore is the suite's directory; down puts a file in its place, so that every write fails.
func dirStore(t *testing.T) archiveStore {
	moved := storeDir + ".away"
	up := func(t *testing.T) {
		if _, err := os.Stat(moved); err == nil {
			_ = os.Remove(storeDir)
			if err := os.Rename(moved, storeDir); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() { up(t) })
	return archiveStore{url: storeURL, up: up, down: func(t *testing.T) {
		if err := os.Rename(storeDir, moved); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(storeDir, []byte("unavailable"), 0o600); err != nil {
			t.Fatal(err)
		}
	}}
}

// s3Store is a bucket of a versitygw started for t; down stops the server (its port refuses), up
// starts it again on the same port and data.
func s3Store(t *testing.T) archiveStore {
	srv, err := testenv.StartS3(env.Root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	for _, kv := range srv.Env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v) // read by the manager when it opens the store
	}
	return archiveStore{url: srv.URL, down: func(*testing.T) { srv.Stop() }, up: func(t *testing.T) {
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
	}}
}

// useStore restarts the manager on the store at url until t ends.
func useStore(t *testing.T, url string) {
	t.Helper()
	prev := storeURL
	if url == prev {
		return
	}
	stopManager()
	storeURL = url
	if err := startManager(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopManager()
		storeURL = prev
		if err := startManager(); err != nil {
			t.Fatal(err)
		}
	})
}

// crasher stops the manager at steps of archiving the runs r00, r01... of one namespace, as a
// crash would, and starts a new one. It crashes each step once: at the first run that reaches it
// from a run chosen at random on. While a manager stops, every step of every run fails, as nothing
// more happens in a dead process.
type crasher struct {
	t    *testing.T
	ns   string
	from map[string]int // step -> the first run that may crash there
	wg   sync.WaitGroup
	mu   sync.Mutex
	// down: a manager is stopping; crashed: the steps crashed; off: no more crashes.
	down, off bool
	crashed   map[string]int
}

func newCrasher(t *testing.T, ns string, runs int) *crasher {
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	c := &crasher{t: t, ns: ns, from: map[string]int{}, crashed: map[string]int{}}
	for _, step := range archiveSteps {
		c.from[step] = rng.IntN(runs)
	}
	t.Logf("crashes from runs %v (seed %d)", c.from, seed)
	hook := c.stepDone
	archiveStepDone.Store(&hook)
	t.Cleanup(c.stop)
	return c
}

func (c *crasher) stepDone(run types.NamespacedName, step string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.down {
		return errCrash
	}
	var i int
	if _, err := fmt.Sscanf(run.Name, "r%d", &i); err != nil || c.off || run.Namespace != c.ns || c.crashed[step] > 0 || i < c.from[step] {
		return nil
	}
	c.crashed[step]++
	c.down = true
	c.t.Logf("crash after step %s of run %s", step, run.Name)
	c.wg.Go(func() {
		stopManager()
		c.mu.Lock()
		c.down = false
		c.mu.Unlock()
		if err := startManager(); err != nil {
			c.t.Errorf("restarting the manager: %v", err)
		}
	})
	return errCrash
}

// stop ends the crashes and waits for the last restart.
func (c *crasher) stop() {
	c.mu.Lock()
	c.off = true
	c.mu.Unlock()
	c.wg.Wait()
	archiveStepDone.Store(nil)
}

// finishing creates n runs a → (b, c) in change group g1, archived as soon as they end, and drives
// them to their end one after the other: every fourth one fails (a fails, b and c are skipped). It
// returns the runs as they finished, with the tasks that have ExecutorTasks.
func finishing(t *testing.T, ns string, n int) []finishedRun {
	var out []finishedRun
	for i := range n {
		run := createRun(t, archivedSoon(fanOut(ns, fmt.Sprintf("r%02d", i)), "0s"))
		f := finishedRun{run: run, tasks: []string{"a", "b", "c"}}
		run.Status.Phase, run.Status.Result = rsv1.RunPhaseFinished, rsv1.RunResultSuccess
		run.Status.Tasks = []rsv1.TaskStatus{{Name: "a"}, {Name: "b"}, {Name: "c"}}
		if i%4 == 3 {
			run.Status.Result, f.tasks = rsv1.RunResultFailed, []string{"a"}
		}
		out = append(out, f)
	}
	for _, f := range out {
		if f.run.Status.Result == rsv1.RunResultFailed {
			complete(t, ns, f.run.Name, "a", rsv1.TaskPhaseFailed)
			continue
		}
		for _, task := range f.tasks {
			complete(t, ns, f.run.Name, task, rsv1.TaskPhaseSuccess)
		}
	}
	return out
}

// finishedRun is a run as it finished (uid, phase, result, tasks), and the tasks it ran.
type finishedRun struct {
	run   *rsv1.Run
	tasks []string
}

// checkArchiveOutcome checks the whole outcome of archiving the runs of ns, which finished as
// runs say: each is gone from etcd with its ExecutorTasks; the store holds exactly one document
// per run, of its uid, with its result and ExecutorTasks; and an index rebuilt cold from the
// store's segments lists and counts exactly these documents.
func checkArchiveOutcome(t *testing.T, ns string, runs []finishedRun) {
	t.Helper()
	ctx := context.Background()
	want := map[string]finishedRun{}
	counts := map[string]int64{}
	for _, f := range runs {
		checkDocument(t, waitArchived(t, f.run), f.run, f.tasks...)
		want[f.run.Name] = f
		counts[string(f.run.Status.Phase)+"/"+string(f.run.Status.Result)]++
	}
	var live rsv1.RunList
	var tasks rsv1.ExecutorTaskList
	if err := k8s.List(ctx, &live, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if err := k8s.List(ctx, &tasks, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(live.Items) != 0 || len(tasks.Items) != 0 {
		t.Errorf("%d runs and %d ExecutorTasks left in etcd, want none", len(live.Items), len(tasks.Items))
	}

	store := openStore(t)
	keys, err := store.List(ctx, "runs/"+ns+"/")
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string][]string{} // run name -> the uids of its documents
	for _, k := range keys {
		if parts := strings.Split(k, "/"); len(parts) == 5 && parts[4] == "run.json" {
			docs[parts[2]] = append(docs[parts[2]], parts[3])
		}
	}
	if len(docs) != len(want) {
		t.Errorf("documents of %d runs in the store, want the %d that finished", len(docs), len(want))
	}
	for name, uids := range docs {
		if f, ok := want[name]; !ok || len(uids) != 1 || uids[0] != string(f.run.UID) {
			t.Errorf("run %s has documents of uids %v, want one, of %s", name, uids, f.run.UID)
		}
	}

	ix, err := index.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Close()
	if err := (&index.Follower{Store: store, Index: ix}).Sync(ctx); err != nil {
		t.Fatalf("cold rebuild of the index from the store: %v", err)
	}
	seen := map[string]bool{}
	q := index.Query{Namespace: ns, Limit: 7}
	for {
		page, err := ix.List(q)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.Entries {
			f, ok := want[e.Name]
			if !ok || seen[e.Name] || e.UID != string(f.run.UID) || e.Phase != string(f.run.Status.Phase) || e.Result != string(f.run.Status.Result) {
				t.Errorf("the rebuilt index lists %s %s %s/%s (listed before: %v), want each finished run once as it finished", e.Name, e.UID, e.Phase, e.Result, seen[e.Name])
			}
			seen[e.Name] = true
		}
		if q.Continue = page.Continue; q.Continue == "" {
			break
		}
	}
	if len(seen) != len(want) {
		t.Errorf("the rebuilt index lists %d runs, want %d", len(seen), len(want))
	}
	for _, group := range []string{"", "g1"} {
		if got, err := ix.Count(ns, group); err != nil || !maps.Equal(got, counts) {
			t.Errorf("the rebuilt index counts %v in group %q (%v), want %v", got, group, err, counts)
		}
	}
}

// TestArchivingSurvivesACrashAtEveryStep: on each store, 20 runs finish while the manager is
// stopped, once after each step of archiving (the document written, midway through the index
// segment's write, the segment written, the ExecutorTasks deleted, the finalizer removed) at a
// run chosen at random, and a new manager started each time. Afterwards each run is archived once, as it
// finished, and gone from etcd with its ExecutorTasks, and an index rebuilt cold from the store
// equals the documents.
func TestArchivingSurvivesACrashAtEveryStep(t *testing.T) {
	onEachStore(t, func(t *testing.T, _ archiveStore) {
		ns := newNamespace(t)
		startExecutor(t, ns, "ex1")
		c := newCrasher(t, ns, 20)
		runs := finishing(t, ns, 20)
		for _, f := range runs {
			waitArchived(t, f.run)
		}
		c.stop()
		for _, step := range archiveSteps {
			if c.crashed[step] == 0 {
				t.Errorf("no crash after step %s", step)
			}
		}
		checkArchiveOutcome(t, ns, runs)
	})
}

// TestArchivingWaitsForTheObjectStore: on each store, while the store is unavailable (the
// directory replaced by a file; the S3 server stopped, its port refusing), finished runs stay in
// etcd with their ExecutorTasks; once the store is back they are archived, whole.
func TestArchivingWaitsForTheObjectStore(t *testing.T) {
	onEachStore(t, func(t *testing.T, s archiveStore) {
		ns := newNamespace(t)
		startExecutor(t, ns, "ex1")
		s.down(t)
		runs := finishing(t, ns, 4)
		for _, f := range runs {
			waitRunPhase(t, ns, f.run.Name, rsv1.RunPhaseFinished)
		}
		time.Sleep(3 * time.Second) // several attempts fail meanwhile
		for _, f := range runs {
			if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(f.run), &rsv1.Run{}); err != nil {
				t.Fatalf("run %s left etcd while the store was unavailable: %v", f.run.Name, err)
			}
			if n := len(runTasks(t, ns, f.run)); n != len(f.tasks) {
				t.Fatalf("run %s: %d ExecutorTasks left while the store was unavailable, want %d", f.run.Name, n, len(f.tasks))
			}
		}
		s.up(t)
		checkArchiveOutcome(t, ns, runs)
	})
}

func runTasks(t *testing.T, ns string, run *rsv1.Run) []rsv1.ExecutorTask {
	t.Helper()
	var list rsv1.ExecutorTaskList
	if err := k8s.List(context.Background(), &list, client.InNamespace(ns), client.MatchingLabels{rsv1.LabelRunUID: string(run.UID)}); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

// TestArchiveAfterIsValidated: a run whose archive-after is not a duration is refused at admission,
// the annotation named.
func TestArchiveAfterIsValidated(t *testing.T) {
	ns := newNamespace(t)
	for _, v := range []string{"soon", "-1m"} {
		err := k8s.Create(context.Background(), archivedSoon(newRun(ns, fmt.Sprintf("bad-%d", len(v)), task("a")), v))
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "metadata.annotations[runservice.dev/archive-after]") {
			t.Errorf("archive-after %q: %v, want Invalid naming metadata.annotations[runservice.dev/archive-after]", v, err)
		}
	}
}

// TestLabelsArchivedRunsAreSelectedByCannotBeForged: the labels a selector on runs and archived runs
// shares say what the run is: a run that claims a phase or result it has not reached, or a change
// group it is not in, is refused at admission with the label named.
func TestLabelsArchivedRunsAreSelectedByCannotBeForged(t *testing.T) {
	ns := newNamespace(t)
	for key, value := range map[string]string{
		arv1.LabelPhase: "Finished", arv1.LabelResult: "Success", arv1.LabelChangeGroupPrefix + "other": "",
		arv1.LabelChangeGroupPrefix + "g1": "x", // the run's group, with a value the manager would rewrite
	} {
		run := fanOut(ns, fmt.Sprintf("forged-%d", len(key)))
		run.Labels = map[string]string{key: value}
		err := k8s.Create(context.Background(), run)
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "metadata.labels["+key+"]") {
			t.Errorf("label %s=%q: %v, want Invalid naming metadata.labels[%s]", key, value, err, key)
		}
	}
}

// TestArchivingWaitsForTheRunControllersLastWrites: the archiver takes a run once the run
// controller is done with it (the log keys fetched tasks got, the change groups released, the phase
// and result labels), so that the archiver's writes are never refused for a copy of the run the run
// controller has just changed: no conflict, and the document has the log keys.
func TestArchivingWaitsForTheRunControllersLastWrites(t *testing.T) {
	ns := newNamespace(t)
	executorToken(t, ns)
	exe := serveHTTP(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "log") })
	startExecutor(t, ns, "ex1", withFetchEndpoint(exe.URL))
	const runs = 6
	var finished []*rsv1.Run
	for i := range runs {
		createRun(t, archivedSoon(fanOut(ns, fmt.Sprintf("r%d", i)), "0s"))
	}
	for i := range runs {
		name := fmt.Sprintf("r%d", i)
		for _, task := range []string{"a", "b", "c"} {
			complete(t, ns, name, task, rsv1.TaskPhaseSuccess)
		}
		finished = append(finished, waitRunPhase(t, ns, name, rsv1.RunPhaseFinished))
	}
	for _, run := range finished {
		doc := waitArchived(t, run)
		for _, et := range doc.Status.ExecutorTasks {
			if et.Fetched == "" || et.Fetched == rsv1.FetchedLost {
				t.Errorf("%s: task %s archived with fetch outcome %q, want its logs stored", run.Name, et.Task, et.Fetched)
			}
		}
		for _, ts := range doc.Status.Tasks {
			for j, s := range ts.Steps {
				if s.Phase != rsv1.StepPhaseNotStarted && s.LogKey == "" {
					t.Errorf("%s: task %s step %d archived without its log key", run.Name, ts.Name, j)
				}
			}
		}
	}
	// The ledger's writes of the group, which the runs leave together, may conflict among themselves
	// (each is retried); the runs' own writes may not.
	var conflicts []string
	for _, w := range managerWritesIn(ns) {
		if w.code == 409 && strings.Contains(w.path, "/runs/") {
			conflicts = append(conflicts, fmt.Sprintf("%s %s", w.method, w.path))
		}
	}
	if len(conflicts) > 0 {
		t.Errorf("%d of the manager's writes of runs were refused for conflicts while archiving %d runs:\n%s", len(conflicts), runs, strings.Join(conflicts, "\n"))
	}
}

// TestADeletedFinishedRunIsArchivedWithItsLogs: a run deleted once it has finished, its logs
// fetched after, is archived at once (its archive-after is not waited for) with their log keys:
// the run controller folds them into a deleted run's status as into a live one's, which the
// archiver waits for.
func TestADeletedFinishedRunIsArchivedWithItsLogs(t *testing.T) {
	ns := newNamespace(t)
	executorToken(t, ns)
	deleted := make(chan struct{})
	exe := serveHTTP(t, func(w http.ResponseWriter, r *http.Request) {
		<-deleted // the logs are fetched once the run is deleted
		_, _ = io.WriteString(w, "log")
	})
	startExecutor(t, ns, "ex1", withFetchEndpoint(exe.URL))
	createRun(t, fanOut(ns, "gone")) // the suite's archive-after: an hour
	for _, task := range []string{"a", "b", "c"} {
		complete(t, ns, "gone", task, rsv1.TaskPhaseSuccess)
	}
	run := waitRunPhase(t, ns, "gone", rsv1.RunPhaseFinished)
	if err := k8s.Delete(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	close(deleted)
	doc := waitArchived(t, run)
	for _, ts := range doc.Status.Tasks {
		for j, s := range ts.Steps {
			if s.Phase != rsv1.StepPhaseNotStarted && s.LogKey == "" {
				t.Errorf("task %s step %d archived without its log key", ts.Name, j)
			}
		}
	}
}

// TestArchivingDeletesARunsExecutorTasksInOneRequest: the ExecutorTasks of an archived run leave
// etcd in one request (a deletecollection selecting the run's uid), not one per task, and that
// request takes no other run's: those of a run still running in the namespace stay.
func TestArchivingDeletesARunsExecutorTasksInOneRequest(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	startExecutor(t, ns, "ex1")
	createRun(t, newRun(ns, "busy", task("a")))
	busy := waitTask(t, ns, "busy", "a")
	report(t, ns, busy.Name, rsv1.TaskPhaseRunning, "")
	createRun(t, archivedSoon(fanOut(ns, "done"), "0s"))
	for _, task := range []string{"a", "b", "c"} {
		complete(t, ns, "done", task, rsv1.TaskPhaseSuccess)
	}
	run := waitRunPhase(t, ns, "done", rsv1.RunPhaseFinished)
	checkDocument(t, waitArchived(t, run), run, "a", "b", "c")
	var deletes []string
	for _, w := range managerWritesIn(ns) {
		if w.method == http.MethodDelete && strings.Contains(w.path, "/executortasks") {
			deletes = append(deletes, fmt.Sprintf("%s %d", w.path, w.code))
		}
	}
	if len(deletes) != 1 || strings.Contains(deletes[0], "/executortasks/") {
		t.Errorf("the manager deleted the archived run's 3 ExecutorTasks in %d requests, want one for the collection:\n%s", len(deletes), strings.Join(deletes, "\n"))
	}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(busy), &rsv1.ExecutorTask{}); err != nil {
		t.Errorf("the running run's ExecutorTask, after archiving another run: %v", err)
	}
}

// TestAnArchivedRunIsArchivedAndDeletedOnce: the cache still shows a run for a moment after the
// archiver deleted it, with the events of its last writes queued behind; the archiver does not
// take that copy for a run to archive again (its document and index entry rewritten, a delete
// answered 404): one delete per run.
func TestAnArchivedRunIsArchivedAndDeletedOnce(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	const runs = 8
	var wg sync.WaitGroup
	finished := make([]*rsv1.Run, runs)
	for i := range runs {
		createRun(t, archivedSoon(fanOut(ns, fmt.Sprintf("r%d", i)), "0s"))
	}
	for i := range runs {
		wg.Go(func() {
			name := fmt.Sprintf("r%d", i)
			for _, task := range []string{"a", "b", "c"} {
				complete(t, ns, name, task, rsv1.TaskPhaseSuccess)
			}
			finished[i] = waitRunPhase(t, ns, name, rsv1.RunPhaseFinished)
		})
	}
	wg.Wait()
	for _, run := range finished {
		waitArchived(t, run)
	}
	time.Sleep(time.Second) // a second archiving would follow the first within milliseconds
	deletes := map[string][]int{}
	for _, w := range managerWritesIn(ns) {
		if _, name, ok := strings.Cut(w.path, "/runs/"); ok && w.method == http.MethodDelete {
			deletes[name] = append(deletes[name], w.code)
		}
	}
	for _, run := range finished {
		if codes := deletes[run.Name]; len(codes) != 1 || codes[0] != http.StatusOK {
			t.Errorf("run %s deleted with answers %v, want one, 200", run.Name, codes)
		}
	}
}
