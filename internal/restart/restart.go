// Package restart owns what a run that restarts another (spec.restartFrom) needs of the restarted
// run: finding it, live or archived (Find), and deciding which of its tasks a restart from failed
// tasks keeps (Kept). The admission webhooks and the run controller both call it, so that what is
// admitted and what runs cannot disagree.
package restart

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apipath "k8s.io/apimachinery/pkg/api/validation/path"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/client"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
)

// GoneError says that the restarted run is neither live nor archived (with the uid asked, when one
// is): it will not come back.
type GoneError struct {
	Namespace, Run string
	// UID is the uid asked for; "" when any run of the name would do.
	UID types.UID
	// LiveUID is the uid of the live run of that name, when there is one (another run's).
	LiveUID types.UID
}

func (e *GoneError) Error() string {
	switch {
	case e.UID == "":
		return fmt.Sprintf("there is no run %s in namespace %s, neither live nor archived", e.Run, e.Namespace)
	case e.LiveUID != "":
		return fmt.Sprintf("uid %s is neither the live run %s's (%s) nor an archived run %s's", e.UID, e.Run, e.LiveUID, e.Run)
	}
	return fmt.Sprintf("no run %s with uid %s in namespace %s, neither live nor archived (deleted, or its archive removed by retention)", e.Run, e.UID, e.Namespace)
}

// TooManyError says that a restart names no uid and the run's name has more uids in the object
// store than admission reads to find the newest archived one: the restart must name it.
type TooManyError struct {
	Namespace, Run string
	// UIDs is how many uids the name has in the store, at least.
	UIDs int
}

func (e *TooManyError) Error() string {
	return fmt.Sprintf("run %s is not live and has more than %d archived runs of that name in namespace %s: "+
		"name the one to restart in spec.restartFrom.uid (runctl get --archived -n %s lists them; runctl restart sets it)",
		e.Run, maxArchivedScanned, e.Namespace, e.Namespace)
}

// maxArchivedScanned bounds the documents read to find the newest archived run of a name: each is
// a read of the object store, made in an admission webhook the apiserver gives up on after 10 s.
const maxArchivedScanned = 100

// Find returns the run from names in namespace, as an archived run's document: the live run of
// that name (with its uid, when from has one), else the archived one of that uid (when from has
// none, the newest archived one of the name, or a *TooManyError when the name has more than
// maxArchivedScanned uids in the store). With tasks, a live run's document lists its
// ExecutorTasks, as its archive would. A run that is nowhere is a *GoneError; any other error is
// one of reading (the apiserver or the object store), worth a retry. store may be nil (no archive).
func Find(ctx context.Context, r client.Reader, store *objectstore.Store, namespace string, from rsv1.RunRestart, tasks bool) (*arv1.ArchivedRun, error) {
	if len(Validate(from, field.NewPath("spec", "restartFrom"))) > 0 {
		// No run has such a name or uid; neither is made into a request path or a store key.
		return nil, &GoneError{Namespace: namespace, Run: from.Run, UID: from.UID}
	}
	live := &rsv1.Run{}
	err := r.Get(ctx, types.NamespacedName{Namespace: namespace, Name: from.Run}, live)
	switch {
	case err == nil && (from.UID == "" || live.UID == from.UID):
		return liveDocument(ctx, r, live, tasks)
	case err == nil:
	case apierrors.IsNotFound(err):
		live = nil
	default:
		return nil, fmt.Errorf("reading run %s: %w", from.Run, err)
	}
	gone := &GoneError{Namespace: namespace, Run: from.Run, UID: from.UID}
	if live != nil {
		gone.LiveUID = live.UID
	}
	if store == nil {
		return nil, gone
	}
	uid := string(from.UID)
	if uid == "" {
		if uid, err = newestArchived(ctx, store, namespace, from.Run); err != nil {
			return nil, err
		}
		if uid == "" {
			return nil, gone
		}
	}
	doc, err := archive.GetDocument(ctx, store, namespace, from.Run, uid)
	if errors.Is(err, objectstore.ErrNotFound) {
		return nil, gone
	}
	if err != nil {
		return nil, fmt.Errorf("reading the archive of run %s: %w", from.Run, err)
	}
	return doc, nil
}

// Validate checks that a restart names a run by an object name and, when it names one, a uid
// that is a path segment: both become parts of object-store keys.
func Validate(from rsv1.RunRestart, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Subdomain(from.Run) {
		errs = append(errs, field.Invalid(p.Child("run"), from.Run, msg))
	}
	if from.UID != "" {
		for _, msg := range apipath.IsValidPathSegmentName(string(from.UID)) {
			errs = append(errs, field.Invalid(p.Child("uid"), from.UID, msg))
		}
	}
	return errs
}

// liveDocument is the document of a live run, with its ExecutorTasks when tasks.
func liveDocument(ctx context.Context, r client.Reader, run *rsv1.Run, tasks bool) (*arv1.ArchivedRun, error) {
	var ets []rsv1.ExecutorTask
	if tasks {
		var list rsv1.ExecutorTaskList
		if err := r.List(ctx, &list, client.InNamespace(run.Namespace), client.MatchingLabels{rsv1.LabelRunUID: string(run.UID)}); err != nil {
			return nil, fmt.Errorf("listing the executor tasks of run %s: %w", run.Name, err)
		}
		ets = list.Items
	}
	return archive.Document(run, ets, time.Now()), nil
}

// newestArchived is the uid of the newest archived run named name ("" when there is none), found
// in the object store itself: an archive index follows the archive's segments, a moment behind.
// A uid directory without a document is a live or deleted run's logs, not an archive.
func newestArchived(ctx context.Context, store *objectstore.Store, namespace, name string) (string, error) {
	dirs, err := store.ListDirs(ctx, fmt.Sprintf("runs/%s/%s/", namespace, name))
	if err != nil {
		return "", err
	}
	if len(dirs) > maxArchivedScanned {
		return "", &TooManyError{Namespace: namespace, Run: name, UIDs: len(dirs)}
	}
	var newest *arv1.ArchivedRun
	for _, d := range dirs {
		uid := path.Base(d)
		if uid == "tasks" { // the layout of runs from before run uids
			continue
		}
		doc, err := archive.GetDocument(ctx, store, namespace, name, uid)
		if errors.Is(err, objectstore.ErrNotFound) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("reading the archive of run %s: %w", name, err)
		}
		if newest == nil || newest.CreationTimestamp.Before(&doc.CreationTimestamp) {
			newest = doc
		}
	}
	if newest == nil {
		return "", nil
	}
	return string(newest.UID), nil
}

// Kept returns the statuses of the tasks of spec that a restart from failed tasks keeps from orig,
// in spec order. A task is kept when it ended Success in orig, with the same definition and the
// same run environment (spec.environment, which every task is given), its saved workspace archives
// are all in the object store, and every task it depends on is kept: a task whose parent runs
// again runs again too. Each keeps orig's status (times, executor, executorTask, steps) with its
// steps' log keys and fromRun set. The tasks named in again run again whatever orig says, and so
// does everything below them: those that already have an ExecutorTask of the restart (an earlier
// decision scheduled them, and its status write was lost), so that a kept task never has one, and
// those whose archives are no longer stored (Unstored).
func Kept(spec *rsv1.RunSpec, orig *arv1.ArchivedRun, again ...string) []rsv1.TaskStatus {
	if !equality.Semantic.DeepEqual(spec.Environment, orig.Spec.Environment) {
		return nil // every task ran with another environment than the restart gives it
	}
	origTasks := map[string]*rsv1.Task{}
	for i := range orig.Spec.Tasks {
		origTasks[orig.Spec.Tasks[i].Name] = &orig.Spec.Tasks[i]
	}
	statuses := map[string]*rsv1.TaskStatus{}
	for i := range orig.Status.Tasks {
		statuses[orig.Status.Tasks[i].Name] = &orig.Status.Tasks[i]
	}
	ets := map[string]*arv1.ArchivedExecutorTask{}
	for i := range orig.Status.ExecutorTasks {
		ets[orig.Status.ExecutorTasks[i].Name] = &orig.Status.ExecutorTasks[i]
	}
	tasks := map[string]*rsv1.Task{}
	for i := range spec.Tasks {
		tasks[spec.Tasks[i].Name] = &spec.Tasks[i]
	}

	// kept is memoized; a task on a cycle (an invalid graph, refused before) is visiting, not kept.
	const visiting = 2
	memo := map[string]int{}
	var kept func(name string) bool
	kept = func(name string) bool {
		if v, ok := memo[name]; ok {
			return v == 1
		}
		memo[name] = visiting
		t, ts := tasks[name], statuses[name]
		ok := t != nil && ts != nil && ts.Phase == rsv1.TaskPhaseSuccess && !slices.Contains(again, name) &&
			origTasks[name] != nil && equality.Semantic.DeepEqual(t, origTasks[name]) &&
			stored(t, ts, ets[ts.ExecutorTask])
		for i := 0; ok && i < len(t.Depends); i++ {
			ok = kept(t.Depends[i].Task)
		}
		memo[name] = 0
		if ok {
			memo[name] = 1
		}
		return ok
	}
	var out []rsv1.TaskStatus
	for i := range spec.Tasks {
		name := spec.Tasks[i].Name
		if !kept(name) {
			continue
		}
		ts := statuses[name].DeepCopy()
		if ts.FromRun == "" {
			// A task the original kept in turn stays its first run's: its logs and archives are there.
			// Its logs are where the original's fetch stores them, fetched yet or not: neither the
			// original's ExecutorTask (deleted when it is archived) nor this run will say so later.
			ts.FromRun, ts.FromRunUID = orig.Name, orig.UID
			if ts.ExecutorTask != "" {
				at := objectstore.Task{Namespace: orig.Namespace, Run: orig.Name, RunUID: string(orig.UID), ExecutorTask: ts.ExecutorTask}
				for j := range ts.Steps {
					if ts.Steps[j].LogKey == "" && ts.Steps[j].Phase != rsv1.StepPhaseNotStarted {
						ts.Steps[j].LogKey = at.LogKey(j)
					}
				}
			}
		}
		out = append(out, *ts)
	}
	return out
}

// Unstored returns the names of the tasks of kept (as Kept returned them for spec) whose saved
// workspace archives are not all in store any more, where their children would restore them from:
// under the run each ran in, which the archive's retention may have expired since (a task kept in
// turn ran in a run older than the one restarted), or whose expiry stopped midway. Such a task
// must run again (Kept's again). store nil (no archive) checks nothing.
func Unstored(ctx context.Context, store *objectstore.Store, namespace string, spec *rsv1.RunSpec, kept []rsv1.TaskStatus) ([]string, error) {
	if store == nil {
		return nil, nil
	}
	var gone []string
	for i := range kept {
		ts := &kept[i]
		j := slices.IndexFunc(spec.Tasks, func(t rsv1.Task) bool { return t.Name == ts.Name })
		if j < 0 {
			continue
		}
		at := objectstore.Task{Namespace: namespace, Run: ts.FromRun, RunUID: string(ts.FromRunUID), ExecutorTask: ts.ExecutorTask}
		for _, step := range SavedArchives(&spec.Tasks[j], ts) {
			ok, err := store.Exists(ctx, at.ArchiveKey(step))
			if err != nil {
				return nil, err
			}
			if !ok {
				gone = append(gone, ts.Name)
				break
			}
		}
	}
	return gone, nil
}

// stored says whether what task saved in its workspace (as ts reports it) is in the object store,
// as its fetch left it: recorded in the run's status, or, in a document archived before that, in
// its ExecutorTask's. A task kept by the original in turn was checked when it was kept.
func stored(task *rsv1.Task, ts *rsv1.TaskStatus, et *arv1.ArchivedExecutorTask) bool {
	if ts.FromRun != "" {
		return true
	}
	if len(SavedArchives(task, ts)) == 0 {
		return true
	}
	v := ts.Fetched
	if v == "" && et != nil {
		v = et.Fetched
	}
	return fetched(v)
}

// fetched says whether a fetch's outcome (status.tasks[].fetched) says that the task's logs and all its archives are stored.
func fetched(v string) bool {
	return v != "" && v != rsv1.FetchedLost && !strings.HasPrefix(v, rsv1.FetchedArchivesMissing)
}

// SavedArchives are the indexes of task's saveToWorkspace steps that succeeded as ts reports them:
// the archives a kept task's children restore.
func SavedArchives(task *rsv1.Task, ts *rsv1.TaskStatus) []int {
	et := &rsv1.ExecutorTask{Spec: rsv1.ExecutorTaskSpec{Task: *task}, Status: rsv1.ExecutorTaskStatus{Steps: ts.Steps}}
	return et.SavedArchives()
}
