package e2e

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// ArchivedMany: n runs in two change groups (every fifth one failing: its step exits 1 and its
// child is skipped) run to their end, are archived at once (runservice.dev/archive-after set to 0s
// on all of them with kubectl) and leave etcd with their ExecutorTasks. kubectl then lists each of
// them once in archivedruns, in pages of 7, with the change group, phase, result and tasks it
// finished with; selectors on change group, phase and result select exactly their runs; runctl
// still reads the logs of a failed and a successful one.
func ArchivedMany(t *testing.T, h *Harness, ns string, n int) {
	ctx := context.Background()
	start := time.Now()
	groups := []string{"project-a", "project-b"}
	for i := range n {
		tasks := []rsv1.Task{ShellTask("main", fmt.Sprintf("echo run %d", i))}
		if i%5 == 0 {
			tasks = []rsv1.Task{ShellTask("main", fmt.Sprintf("echo run %d fails; exit 1", i)), ShellTask("after", "echo never", After("main"))}
		}
		run := &rsv1.Run{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("many-%02d", i), Namespace: ns},
			Spec:       rsv1.RunSpec{ChangeGroups: []string{groups[i%2]}, Tasks: tasks},
		}
		if err := h.Client.Create(ctx, run); err != nil {
			t.Fatalf("creating run %s: %v", run.Name, err)
		}
	}

	// What each run finished with, as the table of archived runs shows it: name, change groups,
	// phase, result, tasks.
	finished := map[string]string{}
	// n runs of real containers take longer than one wait of the harness on a loaded machine.
	Eventually(t, max(h.Timeout, time.Duration(n)*5*time.Second), fmt.Sprintf("the %d runs finished", n), func() bool {
		var list rsv1.RunList
		if err := h.Client.List(ctx, &list, client.InNamespace(ns)); err != nil || len(list.Items) != n {
			return false
		}
		for _, r := range list.Items {
			if r.Status.Phase != rsv1.RunPhaseFinished {
				return false
			}
			finished[r.Name] = strings.Join([]string{r.Name, strings.Join(r.Spec.ChangeGroups, ","), string(r.Status.Phase), string(r.Status.Result), r.Status.Progress}, " ")
		}
		return true
	})
	t.Logf("%d runs finished in %v", n, time.Since(start).Round(time.Millisecond))
	for i := range n {
		name, want := fmt.Sprintf("many-%02d", i), rsv1.RunResultSuccess
		if i%5 == 0 {
			want = rsv1.RunResultFailed
		}
		if got := strings.Fields(finished[name])[3]; got != string(want) {
			t.Fatalf("run %s finished %s, want %s", name, got, want)
		}
	}

	if out, err := h.KubectlRun(ns, "annotate", "runs", "--all", rsv1.AnnotationArchiveAfter+"=0s"); err != nil {
		t.Fatalf("kubectl annotate: %v\n%s", err, out)
	}
	h.Eventually(t, "the runs and their ExecutorTasks gone from etcd", func() bool {
		var runs rsv1.RunList
		var tasks rsv1.ExecutorTaskList
		return h.Client.List(ctx, &runs, client.InNamespace(ns)) == nil && len(runs.Items) == 0 &&
			h.Client.List(ctx, &tasks, client.InNamespace(ns)) == nil && len(tasks.Items) == 0
	})

	t.Logf("archived and gone from etcd %v later", time.Since(start).Round(time.Millisecond))

	// Every run once, in pages of 7, as it finished.
	var rows []string
	var requests string
	h.Eventually(t, fmt.Sprintf("the %d runs listed as archived", n), func() bool {
		out, log, err := h.kubectlSplit(ns, "get", "archivedruns", "--chunk-size=7", "--no-headers", "-v=6")
		if err != nil {
			return false
		}
		rows, requests = strings.Split(strings.TrimSpace(out), "\n"), log
		return len(rows) >= n
	})
	t.Logf("listed %v later", time.Since(start).Round(time.Millisecond))
	got := map[string]string{}
	for _, row := range rows {
		f := strings.Fields(row)
		if len(f) < 5 {
			t.Fatalf("kubectl get archivedruns: row %q", row)
		}
		line := strings.Join(f[:5], " ")
		if _, twice := got[f[0]]; twice {
			t.Errorf("%s listed twice over the pages", f[0])
		}
		got[f[0]] = line
	}
	if !maps.Equal(got, finished) {
		for name, want := range finished {
			if got[name] != want {
				t.Errorf("archived %q, finished %q", got[name], want)
			}
		}
		t.Fatalf("kubectl get archivedruns --chunk-size=7 listed %d runs, want the %d as they finished", len(got), n)
	}
	if pages := strings.Count(requests, "archivedruns?continue="); pages < (n-1)/7 {
		t.Errorf("kubectl read %d pages after the first, want %d (pages of 7):\n%s", pages, (n-1)/7, requests)
	}

	// Selectors select exactly their runs.
	selects := func(selector string, in func(group, phase, result string) bool) {
		t.Helper()
		out, err := h.KubectlRun(ns, "get", "archivedruns", "-l", selector, "--chunk-size=7", "--no-headers", "-o", "name")
		if err != nil {
			t.Fatalf("kubectl get archivedruns -l %s: %v\n%s", selector, err, out)
		}
		var names, want []string
		for _, l := range strings.Fields(out) {
			names = append(names, strings.TrimPrefix(l, "archivedrun.archive.runservice.dev/"))
		}
		for name, line := range finished {
			if f := strings.Fields(line); in(f[1], f[2], f[3]) {
				want = append(want, name)
			}
		}
		slices.Sort(names)
		slices.Sort(want)
		if !slices.Equal(names, want) {
			t.Errorf("kubectl get archivedruns -l %s: %v, want %v", selector, names, want)
		}
	}
	selects("changegroup.runservice.dev/project-a", func(g, _, _ string) bool { return g == "project-a" })
	selects("runservice.dev/result=Failed", func(_, _, r string) bool { return r == "Failed" })
	selects("runservice.dev/phase=Finished", func(_, p, _ string) bool { return p == "Finished" })
	selects("changegroup.runservice.dev/project-b,runservice.dev/result=Success", func(g, _, r string) bool { return g == "project-b" && r == "Success" })

	for name, want := range map[string]string{"many-00": "run 0 fails", "many-07": "run 7"} {
		if log, err := h.Logs(ns, name, "main"); err != nil || !strings.Contains(log, want) {
			t.Errorf("runctl logs of the archived %s: %v\n%s", name, err, log)
		}
	}
}

// kubectlSplit runs kubectl in a namespace and returns its output and its log apart.
func (h *Harness) kubectlSplit(ns string, args ...string) (string, string, error) {
	cmd := exec.Command(h.Kubectl, append([]string{"--kubeconfig", h.Kubeconfig, "-n", ns}, args...)...)
	var out, log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &log
	err := cmd.Run()
	return out.String(), log.String(), err
}
