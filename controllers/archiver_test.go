package controllers_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
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

// checkDocument compares an archived run's document with the run as it finished.
func checkDocument(t *testing.T, doc *arv1.ArchivedRun, run *rsv1.Run, tasks ...string) {
	t.Helper()
	if doc.UID != run.UID || doc.Name != run.Name || doc.Namespace != run.Namespace {
		t.Errorf("document of %s/%s %s, want the run's %s/%s %s", doc.Namespace, doc.Name, doc.UID, run.Namespace, run.Name, run.UID)
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
	createRun(t, archivedSoon(fanOut(ns, "r"), "3s"))
	for _, task := range []string{"a", "b", "c"} {
		complete(t, ns, "r", task, rsv1.TaskPhaseSuccess)
	}
	run := waitRunPhase(t, ns, "r", rsv1.RunPhaseFinished)
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

// TestArchivingSurvivesACrashAtEveryStep: the manager stops after each step of archiving (the
// document written, the index segment written, the ExecutorTasks deleted, the finalizer removed);
// a new manager finishes the work: the run is gone from etcd with its ExecutorTasks, its one
// document holds every ExecutorTask, and an index segment names it.
func TestArchivingSurvivesACrashAtEveryStep(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	t.Cleanup(func() { archiveStepDone.Store(nil) })
	for _, step := range []string{"document", "segment", "executortasks", "finalizer"} {
		t.Run(step, func(t *testing.T) {
			name := "crash-" + step
			crash := newManagerCrash()
			hook := func(run types.NamespacedName, s string) error {
				if run.Name != name || s != step {
					return nil
				}
				return crash.now()
			}
			archiveStepDone.Store(&hook)
			createRun(t, archivedSoon(fanOut(ns, name), "0s"))
			for _, task := range []string{"a", "b", "c"} {
				complete(t, ns, name, task, rsv1.TaskPhaseSuccess)
			}
			run := waitRunPhase(t, ns, name, rsv1.RunPhaseFinished)
			crash.wait(t, "archiving step "+step)
			archiveStepDone.Store(nil)
			if err := startManager(); err != nil {
				t.Fatal(err)
			}
			doc := waitArchived(t, run)
			checkDocument(t, doc, run, "a", "b", "c")
		})
	}
}

// TestArchivingWaitsForTheObjectStore: while the object store refuses writes, a finished run stays
// in etcd with its ExecutorTasks; once the store is back it is archived.
func TestArchivingWaitsForTheObjectStore(t *testing.T) {
	ns := newNamespace(t)
	startExecutor(t, ns, "ex1")
	// The suite's store is a directory: a file in its place makes every write fail.
	moved := storeDir + ".away"
	if err := os.Rename(storeDir, moved); err != nil {
		t.Fatal(err)
	}
	restore := func() {
		if _, err := os.Stat(moved); err == nil {
			_ = os.Remove(storeDir)
			if err := os.Rename(moved, storeDir); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(restore)
	if err := os.WriteFile(storeDir, []byte("unavailable"), 0o600); err != nil {
		t.Fatal(err)
	}
	createRun(t, archivedSoon(fanOut(ns, "waits"), "0s"))
	for _, task := range []string{"a", "b", "c"} {
		complete(t, ns, "waits", task, rsv1.TaskPhaseSuccess)
	}
	run := waitRunPhase(t, ns, "waits", rsv1.RunPhaseFinished)
	time.Sleep(3 * time.Second) // several attempts fail meanwhile
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(run), &rsv1.Run{}); err != nil {
		t.Fatalf("the run left etcd while the store was unavailable: %v", err)
	}
	if n := len(runTasks(t, ns, run)); n != 3 {
		t.Fatalf("%d ExecutorTasks left while the store was unavailable, want 3", n)
	}
	restore()
	checkDocument(t, waitArchived(t, run), run, "a", "b", "c")
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
