package restart

import (
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/objectstore"
)

func task(name string, parents ...string) rsv1.Task {
	t := rsv1.Task{Name: name, Containers: []rsv1.Container{{Image: "busybox"}}, Steps: []rsv1.Step{{Run: &rsv1.RunStep{Command: "true"}}}}
	for _, p := range parents {
		t.Depends = append(t.Depends, rsv1.TaskDependency{Task: p})
	}
	return t
}

// saving makes a task save a workspace in a second step.
func saving(t rsv1.Task) rsv1.Task {
	t.Steps = append(t.Steps, rsv1.Step{SaveToWorkspace: &rsv1.SaveToWorkspaceStep{Contents: []rsv1.SaveContent{{SourceDir: "."}}}})
	return t
}

// original is run "orig" of tasks, each ended as phases says, its ExecutorTask fetched as fetched
// says ("" when not named: a complete fetch).
func original(tasks []rsv1.Task, phases map[string]rsv1.TaskPhase, fetched map[string]string) *arv1.ArchivedRun {
	doc := &arv1.ArchivedRun{ObjectMeta: metav1.ObjectMeta{Name: "orig", Namespace: "ns", UID: "uid-orig"}}
	doc.Spec.Tasks = tasks
	for _, t := range tasks {
		ts := rsv1.TaskStatus{Name: t.Name, Phase: phases[t.Name], ExecutorTask: "orig-" + t.Name, Executor: "ex"}
		for range t.Steps {
			ts.Steps = append(ts.Steps, rsv1.StepStatus{Name: "s", Phase: rsv1.StepPhase(phases[t.Name])})
		}
		doc.Status.Tasks = append(doc.Status.Tasks, ts)
		f, ok := fetched[t.Name]
		if !ok {
			f = "2026-12-01T00:00:00Z"
		}
		doc.Status.ExecutorTasks = append(doc.Status.ExecutorTasks, arv1.ArchivedExecutorTask{Name: "orig-" + t.Name, Task: t.Name, Fetched: f})
	}
	return doc
}

// inStatus is doc as a manager that records fetches in the run's status archives it: each task's
// fetch in status.tasks[].fetched only (its ExecutorTask's field emptied, to show which is read).
func inStatus(doc *arv1.ArchivedRun) *arv1.ArchivedRun {
	for i := range doc.Status.ExecutorTasks {
		et := &doc.Status.ExecutorTasks[i]
		for j := range doc.Status.Tasks {
			if doc.Status.Tasks[j].ExecutorTask == et.Name {
				doc.Status.Tasks[j].Fetched = et.Fetched
			}
		}
		et.Fetched = ""
	}
	return doc
}

func names(ts []rsv1.TaskStatus) []string {
	var out []string
	for _, t := range ts {
		out = append(out, t.Name)
	}
	return out
}

func TestKept(t *testing.T) {
	const ok, failed, skipped = rsv1.TaskPhaseSuccess, rsv1.TaskPhaseFailed, rsv1.TaskPhaseSkipped
	chain := []rsv1.Task{task("a"), task("b", "a"), task("c", "b"), task("d")}
	changedA := slices.Clone(chain)
	changedA[0].Steps = []rsv1.Step{{Run: &rsv1.RunStep{Command: "false"}}}
	saved := []rsv1.Task{saving(task("a")), task("b", "a")}
	allOK := map[string]rsv1.TaskPhase{"a": ok, "b": ok, "c": ok, "d": ok}

	tests := []struct {
		name string
		spec []rsv1.Task
		orig *arv1.ArchivedRun
		want []string
	}{
		{"what succeeded is kept, what failed and what it skipped run again", chain,
			original(chain, map[string]rsv1.TaskPhase{"a": ok, "b": failed, "c": skipped, "d": ok}, nil), []string{"a", "d"}},
		{"a task whose definition changed runs again, and everything below it", changedA, original(chain, allOK, nil), []string{"d"}},
		{"a task the original does not have runs", append(slices.Clone(chain), task("e", "a")), original(chain, allOK, nil), []string{"a", "b", "c", "d"}},
		{"a saved workspace that is stored is kept", saved, original(saved, allOK, nil), []string{"a", "b"}},
		{"a saved workspace whose executor was lost before the fetch runs again", saved,
			original(saved, allOK, map[string]string{"a": rsv1.FetchedLost}), nil},
		{"a saved workspace with an archive missing runs again", saved,
			original(saved, allOK, map[string]string{"a": rsv1.FetchedArchivesMissing + "1"}), nil},
		{"a saved workspace not fetched yet runs again", saved, original(saved, allOK, map[string]string{"a": ""}), nil},
		{"a saved workspace whose fetch the run's status records is kept", saved, inStatus(original(saved, allOK, nil)), []string{"a", "b"}},
		{"a saved workspace the run's status records lost runs again", saved,
			inStatus(original(saved, allOK, map[string]string{"a": rsv1.FetchedLost})), nil},
		{"a task that saved nothing is kept whatever its fetch", chain[:1], original(chain[:1], allOK, map[string]string{"a": rsv1.FetchedLost}), []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := &rsv1.RunSpec{Tasks: tt.spec}
			got := Kept(spec, tt.orig)
			if !slices.Equal(names(got), tt.want) {
				t.Fatalf("kept %v, want %v", names(got), tt.want)
			}
			for _, ts := range got {
				if ts.FromRun != "orig" || ts.FromRunUID != "uid-orig" || ts.ExecutorTask != "orig-"+ts.Name {
					t.Errorf("kept %s: fromRun %s/%s executorTask %s, want the original's", ts.Name, ts.FromRun, ts.FromRunUID, ts.ExecutorTask)
				}
			}
		})
	}
}

// TestKeptLogKeysAndKeptInTurn: a kept task's steps point at the original's logs; a task the
// original kept in turn stays its first run's (fromRun, uid and log keys), and its archives are
// not looked for in the original.
func TestKeptLogKeysAndKeptInTurn(t *testing.T) {
	tasks := []rsv1.Task{saving(task("a")), task("b", "a")}
	orig := original(tasks, map[string]rsv1.TaskPhase{"a": rsv1.TaskPhaseSuccess, "b": rsv1.TaskPhaseSuccess}, nil)
	got := Kept(&rsv1.RunSpec{Tasks: tasks}, orig)
	at := objectstore.Task{Namespace: "ns", Run: "orig", RunUID: "uid-orig", ExecutorTask: "orig-a"}
	if len(got) != 2 || got[0].Steps[0].LogKey != at.LogKey(0) || got[0].Steps[1].LogKey != at.LogKey(1) {
		t.Fatalf("kept %+v, want a's steps at %s and %s", got, at.LogKey(0), at.LogKey(1))
	}

	// orig2 restarted orig and kept a: a restart of orig2 keeps a from orig, where it ran.
	orig2 := original(tasks, map[string]rsv1.TaskPhase{"a": rsv1.TaskPhaseSuccess, "b": rsv1.TaskPhaseFailed}, nil)
	orig2.Name, orig2.UID = "orig2", "uid-orig2"
	orig2.Status.Tasks[0] = got[0]
	orig2.Status.ExecutorTasks = orig2.Status.ExecutorTasks[1:] // a has none of its own
	again := Kept(&rsv1.RunSpec{Tasks: tasks}, orig2)
	if len(again) != 1 || again[0].FromRun != "orig" || again[0].FromRunUID != "uid-orig" || again[0].Steps[1].LogKey != at.LogKey(1) {
		t.Fatalf("kept in turn %+v, want a from orig with its log keys", again)
	}
	if archives := SavedArchives(&tasks[0], &again[0]); !slices.Equal(archives, []int{1}) {
		t.Errorf("saved archives of the kept a: %v, want [1]", archives)
	}
}

// TestKeptNeedsTheSameEnvironment: spec.environment is given to every task, so a task that ran under
// another environment did not run the restart's definition: with the environment changed, every
// task runs again.
func TestKeptNeedsTheSameEnvironment(t *testing.T) {
	tasks := []rsv1.Task{task("a"), task("b", "a")}
	orig := original(tasks, map[string]rsv1.TaskPhase{"a": rsv1.TaskPhaseSuccess, "b": rsv1.TaskPhaseFailed}, nil)
	orig.Spec.Environment = []rsv1.EnvVar{{Name: "TARGET", Value: "staging"}}

	same := &rsv1.RunSpec{Tasks: tasks, Environment: []rsv1.EnvVar{{Name: "TARGET", Value: "staging"}}}
	if got := Kept(same, orig); !slices.Equal(names(got), []string{"a"}) {
		t.Fatalf("same environment: kept %v, want [a]", names(got))
	}
	for _, env := range [][]rsv1.EnvVar{{{Name: "TARGET", Value: "production"}}, nil} {
		if got := Kept(&rsv1.RunSpec{Tasks: tasks, Environment: env}, orig); len(got) != 0 {
			t.Errorf("environment %v instead of the original's %v: kept %v, want none", env, orig.Spec.Environment, names(got))
		}
	}
}

// TestKeptLogKeysBeforeTheFetch: a task that saved nothing is kept whatever its fetch, also one
// restarted before the original's logs were fetched; its steps still point at where the fetch
// stores them (under the original's uid), since neither the original's ExecutorTask (deleted
// with it when archived) nor this run's status will say so later.
func TestKeptLogKeysBeforeTheFetch(t *testing.T) {
	tasks := []rsv1.Task{task("a"), task("b", "a")}
	orig := original(tasks, map[string]rsv1.TaskPhase{"a": rsv1.TaskPhaseSuccess, "b": rsv1.TaskPhaseFailed}, map[string]string{"a": ""})
	got := Kept(&rsv1.RunSpec{Tasks: tasks}, orig)
	at := objectstore.Task{Namespace: "ns", Run: "orig", RunUID: "uid-orig", ExecutorTask: "orig-a"}
	if len(got) != 1 || got[0].Steps[0].LogKey != at.LogKey(0) {
		t.Fatalf("kept %+v, want a with its step's log at %s", got, at.LogKey(0))
	}
}

// TestKeptLeavesScheduledTasks: a task that already has an ExecutorTask of the restart is not
// kept, nor anything below it, whatever the original says.
func TestKeptLeavesScheduledTasks(t *testing.T) {
	tasks := []rsv1.Task{task("a"), task("b", "a"), task("c")}
	orig := original(tasks, map[string]rsv1.TaskPhase{"a": rsv1.TaskPhaseSuccess, "b": rsv1.TaskPhaseSuccess, "c": rsv1.TaskPhaseSuccess}, nil)
	if got := Kept(&rsv1.RunSpec{Tasks: tasks}, orig, "a"); !slices.Equal(names(got), []string{"c"}) {
		t.Fatalf("a scheduled: kept %v, want [c]", names(got))
	}
}
