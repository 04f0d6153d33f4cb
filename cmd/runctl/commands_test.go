package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

// TestGet: the table has the CRD's columns (-o wide its priority-1 ones too), also when listed in
// chunks; filters by change group, phase and result select exactly their runs; -o json and yaml
// print the runs as a List.
func TestGet(t *testing.T) {
	ns := fixture(t)
	golden(t, "get", normalizeTable(mustRunctl(t, ns, "get")))
	golden(t, "get-wide", normalizeTable(mustRunctl(t, ns, "list", "-o", "wide")))
	listChunk = 3 // two chunks: one table all the same, and one List of all
	chunked, chunkedJSON := mustRunctl(t, ns, "get"), mustRunctl(t, ns, "get", "-o", "json")
	listChunk = 500
	golden(t, "get", normalizeTable(chunked))
	if err := json.Unmarshal([]byte(chunkedJSON), &rsv1.RunList{}); err != nil || strings.Count(chunkedJSON, `"kind": "Run"`) != 4 {
		t.Errorf("get -o json in chunks: %v\n%s", err, chunkedJSON)
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--changegroup", "project-a"}, []string{"held", "release"}},
		{[]string{"--phase", "finished"}, []string{"diamond", "ok"}},
		{[]string{"--phase", "Queued"}, []string{"held"}},
		{[]string{"--result", "Failed"}, []string{"diamond"}},
		{[]string{"--changegroup", "project-a", "--phase", "Running"}, []string{"release"}},
		{[]string{"release", "ok"}, []string{"ok", "release"}},
		{[]string{"ok"}, []string{"ok"}},
	} {
		out := mustRunctl(t, ns, append([]string{"get", "-o", "name"}, c.args...)...)
		var got []string
		for _, l := range strings.Fields(out) {
			got = append(got, strings.TrimPrefix(l, "run.runservice.dev/"))
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("get %v: %q, want %v", c.args, out, c.want)
		}
	}
	var list rsv1.RunList
	if err := json.Unmarshal([]byte(mustRunctl(t, ns, "get", "--result", "Success", "-o", "json")), &list); err != nil {
		t.Fatalf("get -o json: %v", err)
	}
	if list.Kind != "RunList" || len(list.Items) != 1 || list.Items[0].Name != "ok" || list.Items[0].Kind != "Run" || list.Items[0].Status.Result != rsv1.RunResultSuccess {
		t.Errorf("get -o json: %+v", list)
	}
	if y := mustRunctl(t, ns, "get", "held", "-o", "yaml"); !strings.Contains(y, "kind: RunList") || !strings.Contains(y, "name: held") || !strings.Contains(y, "suspend: true") {
		t.Errorf("get -o yaml:\n%s", y)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "--phase", "Done"}, `--phase "Done" is not one of Queued, Running, Finished, SetupError, Cancelled`},
		{[]string{"get", "--result", "ok"}, `--result "ok" is not one of Unknown, Success, Failed, Stopped`},
		{[]string{"get", "-o", "table"}, `--output "table" is not one of wide, json, yaml, name`},
		{[]string{"get", "nosuch"}, "no run nosuch in namespace " + ns + " matches"},
	} {
		if _, errOut, code := runctl(t, ns, c.args...); code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, %q; want 1 and %q", c.args, code, errOut, c.want)
		}
	}
	if _, errOut, code := runctl(t, ns, "get", "--phase", "SetupError"); code != 0 || !strings.Contains(errOut, "No runs found in namespace "+ns) {
		t.Errorf("get of nothing: exit %d, %q", code, errOut)
	}
}

// TestGetWatch: --watch prints the list, then a line for each change of a run: here the release
// run's approval and the end it then comes to.
func TestGetWatch(t *testing.T) {
	ns := fixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "--kubeconfig", kubeconfig, "-n", ns, "get", "release", "--watch")
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	waitFor(t, "the listed run", func() bool { return strings.Count(out.String(), "release") == 1 })
	mustRunctl(t, ns, "approve", "release", "deploy")
	testenv.ReportTask(t, k8s, ns, "release", "deploy", ended(50, 60, 0))
	waitFor(t, "the run finished, watched", func() bool {
		return regexp.MustCompile(`release\s+Finished\s+Success\s+2/2\s+\["project-a"\]`).MatchString(out.String())
	})
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); !strings.HasPrefix(lines[0], "NAME") || strings.Count(out.String(), "NAME") != 1 {
		t.Errorf("watch output has no or several headers:\n%s", out.String())
	}
}

// TestDescribe: the graph as a tree with each task's phase, executor, duration and why (failed step
// and exit code, waiting for approval, other dependencies), against golden files.
func TestDescribe(t *testing.T) {
	ns := fixture(t)
	golden(t, "describe-diamond", normalizeDescribe(mustRunctl(t, ns, "describe", "diamond")))
	golden(t, "describe-release", normalizeDescribe(mustRunctl(t, ns, "describe", "release")))
	if _, errOut, code := runctl(t, ns, "describe", "nosuch"); code != 1 || !strings.Contains(errOut, "run nosuch is neither live nor archived in namespace "+ns) || !strings.Contains(errOut, "-n chooses another") {
		t.Errorf("describe nosuch: exit %d, %q", code, errOut)
	}
}

// TestApprove: approve adds the tasks to spec.approvedTasks and the task runs; a typo lists the
// run's tasks, a task that needs no approval lists those that do, and nothing is written then.
func TestApprove(t *testing.T) {
	ns := fixture(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"approve", "release", "deplo"}, `run release has no task "deplo" (its tasks: build, deploy)`},
		{[]string{"approve", "release", "build"}, `task "build" of run release does not need approval (tasks that do: deploy)`},
		{[]string{"approve", "release", "deploy", "deplo"}, `has no task "deplo"`},
		{[]string{"approve", "nosuch", "deploy"}, `runs.runservice.dev "nosuch" not found in namespace ` + ns},
		{[]string{"approve", "release"}, `requires at least 2 arg(s)`},
	} {
		if _, errOut, code := runctl(t, ns, c.args...); code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, %q; want 1 and %q", c.args, code, errOut, c.want)
		}
	}
	if got := getRun(t, ns, "release").Spec.ApprovedTasks; len(got) != 0 {
		t.Fatalf("refused approvals wrote %v", got)
	}
	if out := mustRunctl(t, ns, "approve", "release", "deploy"); out != "run release: approved deploy\n" {
		t.Errorf("approve printed %q", out)
	}
	if got := getRun(t, ns, "release").Spec.ApprovedTasks; !slices.Equal(got, []string{"deploy"}) {
		t.Fatalf("approvedTasks %v", got)
	}
	testenv.ReportTask(t, k8s, ns, "release", "deploy", ended(50, 60, 0)) // it was scheduled
	if _, errOut, code := runctl(t, ns, "approve", "release", "deploy"); code != 1 || !strings.Contains(errOut, `task "deploy" of run release is already approved`) {
		t.Errorf("approving twice: exit %d, %q", code, errOut)
	}
}

// TestStopAndRestart: stop cancels a queued run; stopping an ended run is refused; restart prints
// the new run's name, which names the run it restarts; a run still running cannot be restarted;
// a restart into a change group with a stale update token is refused naming the group (409: see
// internal/runops's tests), with the group's current token it is created.
func TestStopAndRestart(t *testing.T) {
	ns := fixture(t)
	if out := mustRunctl(t, ns, "stop", "held"); out != "run held: stopping\n" {
		t.Errorf("stop printed %q", out)
	}
	held := eventually(t, "cancelled", phaseIs(rsv1.RunPhaseCancelled), ns, "held")
	if held.Status.Result != rsv1.RunResultStopped {
		t.Errorf("stopped run: %s %s", held.Status.Phase, held.Status.Result)
	}
	if _, errOut, code := runctl(t, ns, "stop", "held"); code != 1 || !strings.Contains(errOut, "run held has ended (Cancelled, Stopped): there is nothing to stop") {
		t.Errorf("stopping an ended run: exit %d, %q", code, errOut)
	}

	out := mustRunctl(t, ns, "restart", "diamond", "--failed-only")
	name := strings.TrimSpace(out)
	if !regexp.MustCompile(`^diamond-[a-z0-9]{5}$`).MatchString(name) {
		t.Fatalf("restart printed %q, want the new run's name", out)
	}
	orig, restarted := getRun(t, ns, "diamond"), getRun(t, ns, name)
	if rf := restarted.Spec.RestartFrom; rf == nil || rf.Run != "diamond" || rf.UID != orig.UID || !rf.FailedTasksOnly {
		t.Errorf("restart's spec.restartFrom %+v", restarted.Spec.RestartFrom)
	}
	if len(restarted.Spec.Tasks) != 4 {
		t.Errorf("restart's tasks %+v", restarted.Spec.Tasks)
	}
	if _, errOut, code := runctl(t, ns, "restart", "release"); code != 1 || !strings.Contains(errOut, "run release is still Running: stop it first (runctl stop release) or wait for its end (runctl wait release)") {
		t.Errorf("restarting a running run: exit %d, %q", code, errOut)
	}

	group := &rsv1.ChangeGroup{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "project-a"}, group); err != nil {
		t.Fatal(err)
	}
	stale := group.ResourceVersion
	mustRunctl(t, ns, "stop", "release") // the group changes: stale is stale now
	eventually(t, "ended", func(r *rsv1.Run) bool { return r.Status.Phase.IsFinal() }, ns, "release")
	waitFor(t, "the group's ledger to change", func() bool {
		_ = k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "project-a"}, group)
		return group.ResourceVersion != stale
	})
	_, errOut, code := runctl(t, ns, "restart", "held", "--update-token", stale)
	if code != 1 || !strings.Contains(errOut, `change group "project-a": the update token is stale`) {
		t.Errorf("restart with a stale token: exit %d, %q; want a conflict naming project-a", code, errOut)
	}
	// With the group's current token it is created (read again: the manager may still be writing
	// the group's ledger after release's end).
	waitFor(t, "a restart with the group's token", func() bool {
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "project-a"}, group); err != nil {
			t.Fatal(err)
		}
		out, _, code := runctl(t, ns, "restart", "held", "--update-token", group.ResourceVersion)
		return code == 0 && strings.HasPrefix(out, "held-")
	})
}

// TestWaitExitCodes runs the built binary: 0 for Success, 1 Failed, 2 Stopped, 3 timeout, 4 a run
// that is not there, and the run's end reported on stdout.
func TestWaitExitCodes(t *testing.T) {
	ns := fixture(t)
	mustRunctl(t, ns, "stop", "held")
	for _, c := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"ok"}, 0, "run ok: Finished, Success"},
		{[]string{"diamond"}, 1, "run diamond: Finished, Failed"},
		{[]string{"held"}, 2, "run held: Cancelled, Stopped"},
		{[]string{"release", "--timeout", "1s"}, 3, "run release has not ended after 1s"},
		{[]string{"nosuch"}, 4, "run nosuch is neither live nor archived in namespace " + ns},
	} {
		cmd := exec.Command(binary, append([]string{"--kubeconfig", kubeconfig, "-n", ns, "wait"}, c.args...)...)
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != c.code || !strings.Contains(string(out), c.out) {
			t.Errorf("wait %v: exit %d, %q; want %d and %q", c.args, code, out, c.code, c.out)
		}
	}
	// A run that ends while waited for.
	cmd := exec.Command(binary, "--kubeconfig", kubeconfig, "-n", ns, "wait", "release", "--timeout", "1m")
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	mustRunctl(t, ns, "approve", "release", "deploy")
	testenv.ReportTask(t, k8s, ns, "release", "deploy", ended(50, 60, 0))
	_ = cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 0 || out.String() != "run release: Finished, Success\n" {
		t.Errorf("wait for a run that ends: exit %d, %q", code, out.String())
	}
}

// TestCompletion: the bash and zsh scripts, and the dynamic completion of run, task and step names
// cobra asks runctl for (the hidden __complete command the scripts call).
func TestCompletion(t *testing.T) {
	ns := fixture(t)
	if out := mustRunctl(t, ns, "completion", "bash"); !strings.Contains(out, "__start_runctl") || !strings.Contains(out, "complete -o default -F __start_runctl runctl") {
		t.Errorf("bash completion:\n%.300s", out)
	}
	if out := mustRunctl(t, ns, "completion", "zsh"); !strings.HasPrefix(out, "#compdef runctl") || !strings.Contains(out, "__complete") {
		t.Errorf("zsh completion:\n%.300s", out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"describe", ""}, "diamond\nheld\nok\nrelease\n:4\n"},
		{[]string{"describe", "d"}, "diamond\n:4\n"},
		{[]string{"describe", "diamond", ""}, ":4\n"},
		{[]string{"approve", "rel"}, "release\n:4\n"},
		{[]string{"approve", "release", ""}, "deploy\n:4\n"},
		{[]string{"approve", "diamond", ""}, ":4\n"},
		{[]string{"logs", "diamond", ""}, "checkout\nbuild\ntest\npackage\n:4\n"},
		{[]string{"logs", "diamond", "test", ""}, "make\n:4\n"},
		{[]string{"get", "--phase", "F"}, "Queued\nRunning\nFinished\nSetupError\nCancelled\n:4\n"},
		{[]string{"get", "--changegroup", ""}, "project-a\n:4\n"},
		{[]string{"w"}, "wait\tWait for a run to end; the exit code tells its result\n:4\n"},
	} {
		out := mustRunctl(t, ns, append([]string{"__complete"}, c.args...)...)
		if got := strings.SplitN(out, "Completion ended", 2)[0]; got != c.want {
			t.Errorf("__complete %q: %q, want %q", c.args, got, c.want)
		}
	}
}

// TestLogs: logs prints a fetched step's log from the object store; it names what is there when
// what was asked for is not: the run's tasks, the task's steps, a task never scheduled, a run in no
// namespace's list.
func TestLogs(t *testing.T) {
	ns := fixture(t)
	ctx := context.Background()
	store, err := objectstore.Open(ctx, storeURL)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	// The fake executor serves no logs: the log is put where the fetcher would, and the task
	// marked fetched (the fetcher may mark it lost first: runctl then reads the store all the same).
	et := &rsv1.ExecutorTask{}
	name := testenv.ReportTask(t, k8s, ns, "diamond", "test", ended(3, 10, 2))
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, et); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(ctx, objectstore.TaskOf(et).LogKey(0), strings.NewReader("FAIL: 2 of 9 tests\n")); err != nil {
		t.Fatal(err)
	}
	if et.Annotations[rsv1.AnnotationFetched] == "" {
		patch := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"`+rsv1.AnnotationFetched+`":"2026-12-01T10:00:10Z"}}}`))
		if err := k8s.Patch(ctx, et, patch); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{{"diamond", "test"}, {"diamond", "test", "make"}, {"diamond", "test", "0"}} {
		if out := mustRunctl(t, ns, append([]string{"logs", "--object-store", storeURL}, args...)...); out != "FAIL: 2 of 9 tests\n" {
			t.Errorf("logs %v: %q", args, out)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"logs", "diamond", "tset"}, `run diamond has no task "tset" (its tasks: checkout, build, test, package)`},
		{[]string{"logs", "diamond", "test", "5"}, `task test has no step "5" (its steps: 0 make)`},
		{[]string{"logs", "release", "deploy"}, "task deploy is NotStarted and was never scheduled: it has no log"},
		{[]string{"logs", "nosuch", "build"}, "run nosuch is neither live nor archived in namespace " + ns},
		{[]string{"logs", "diamond"}, "accepts between 2 and 3 arg(s), received 1"},
	} {
		if _, errOut, code := runctl(t, ns, c.args...); code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, %q; want 1 and %q", c.args, code, errOut, c.want)
		}
	}
}

// TestArchivedRuns: a run archived and gone from etcd is listed by get --archived (filters by the
// archive API's labels, -o json its document), described, waited for and restarted.
func TestArchivedRuns(t *testing.T) {
	ns := newNamespace(t)
	testenv.StartFakeExecutor(t, k8s, ns, "docker-1")
	createRun(t, ns, "old", []string{"nightly"}, func(r *rsv1.Run) {
		r.Annotations = map[string]string{rsv1.AnnotationArchiveAfter: "0s"}
	}, task("only"))
	testenv.ReportTask(t, k8s, ns, "old", "only", ended(0, 4, 0))
	waitFor(t, "old archived and gone from etcd", func() bool {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "old"}, &rsv1.Run{})
		_, _, code := runctl(t, ns, "get", "old", "--archived", "-o", "name")
		return apierrors.IsNotFound(err) && code == 0
	})
	out := mustRunctl(t, ns, "get", "--archived")
	if !regexp.MustCompile(`(?m)^NAME\s+CHANGEGROUPS\s+PHASE\s+RESULT\s+TASKS\s+STARTED\s+DURATION\s+AGE\n^old\s+nightly\s+Finished\s+Success\s+1/1\s`).MatchString(out) {
		t.Errorf("get --archived:\n%s", out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--changegroup", "nightly", "--result", "success", "--phase", "Finished"}, "archivedrun.archive.runservice.dev/old\n"},
		{[]string{"--result", "Failed"}, ""},
		{[]string{"--changegroup", "other"}, ""},
	} {
		if got := mustRunctl(t, ns, append([]string{"get", "--archived", "-o", "name"}, c.args...)...); got != c.want {
			t.Errorf("get --archived %v: %q, want %q", c.args, got, c.want)
		}
	}
	if _, errOut, code := runctl(t, ns, "get", "--archived", "--phase", "Running"); code != 1 || !strings.Contains(errOut, "--phase Running: archived runs have ended") {
		t.Errorf("get --archived --phase Running: exit %d, %q", code, errOut)
	}
	var list arv1.ArchivedRunList
	if err := json.Unmarshal([]byte(mustRunctl(t, ns, "get", "--archived", "-o", "json")), &list); err != nil || len(list.Items) != 1 || len(list.Items[0].Spec.Tasks) != 1 || list.Items[0].Status.ExecutorTasks[0].Task != "only" {
		t.Errorf("get --archived -o json: %v %+v", err, list)
	}
	if out := mustRunctl(t, ns, "describe", "old"); !strings.Contains(out, "Finished (archived)") || !regexp.MustCompile(`only\s+Success\s+docker-1\s+4s`).MatchString(out) {
		t.Errorf("describe of an archived run:\n%s", out)
	}
	if out, _, code := runctl(t, ns, "wait", "old"); code != 0 || out != "run old: Finished, Success\n" {
		t.Errorf("wait for an archived run: exit %d, %q", code, out)
	}
	if out := mustRunctl(t, ns, "restart", "old"); !strings.HasPrefix(out, "old-") {
		t.Errorf("restart of an archived run printed %q", out)
	}
}
