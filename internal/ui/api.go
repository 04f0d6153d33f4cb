package ui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/runlogs"
	"runservice.dev/runservice/internal/runops"
)

// runSummary is a row of the runs list.
type runSummary struct {
	Namespace     string    `json:"namespace"`
	Name          string    `json:"name"`
	UID           string    `json:"uid"`
	Phase         string    `json:"phase"`
	Result        string    `json:"result"`
	Done          int       `json:"done"`
	Total         int       `json:"total"`
	ChangeGroups  []string  `json:"changeGroups,omitempty"`
	Created       time.Time `json:"created"`
	Archived      bool      `json:"archived,omitempty"`
	RestartedFrom string    `json:"restartedFrom,omitempty"`
}

func summarize(r *rsv1.Run, archived bool) runSummary {
	s := runSummary{
		Namespace: r.Namespace, Name: r.Name, UID: string(r.UID),
		Phase: string(r.Status.Phase), Result: string(r.Status.Result),
		Total: len(r.Spec.Tasks), ChangeGroups: r.Spec.ChangeGroups,
		Created: r.CreationTimestamp.Time, Archived: archived,
	}
	if s.Phase == "" {
		s.Phase = string(rsv1.RunPhaseQueued)
	}
	if s.Result == "" {
		s.Result = string(rsv1.RunResultUnknown)
	}
	for _, t := range r.Status.Tasks {
		if t.Phase.IsFinal() {
			s.Done++
		}
	}
	if r.Status.RestartedFrom != nil {
		s.RestartedFrom = r.Status.RestartedFrom.Name
	} else if r.Spec.RestartFrom != nil {
		s.RestartedFrom = r.Spec.RestartFrom.Run
	}
	return s
}

// filter is the runs list's filters.
type filter struct{ namespace, changeGroup, phase string }

func filterOf(r *http.Request) filter {
	q := r.URL.Query()
	return filter{namespace: q.Get("namespace"), changeGroup: q.Get("changeGroup"), phase: q.Get("phase")}
}

// selector selects runs of the change group; live runs get the phase label only once they end,
// so the phase is matched here (match), not by the apiserver.
func (f filter) selector() string {
	if f.changeGroup == "" {
		return ""
	}
	return arv1.LabelChangeGroupPrefix + f.changeGroup
}

func (f filter) match(s runSummary) bool {
	return f.phase == "" || s.Phase == f.phase
}

type runList struct {
	Runs []runSummary `json:"runs"`
	// ArchiveError says why archived runs are missing from the list (the archive API is not
	// served, or RBAC refuses it); live runs are listed all the same.
	ArchiveError    string `json:"archiveError,omitempty"`
	ResourceVersion string `json:"-"`
}

// list lists the live runs and the newest archived ones that pass the filter, newest first.
func (s *server) list(ctx context.Context, f filter) (*runList, error) {
	live, err := s.runs.RunserviceV1alpha1().Runs(f.namespace).List(ctx, metav1.ListOptions{LabelSelector: f.selector()})
	if err != nil {
		return nil, err
	}
	out := &runList{Runs: []runSummary{}, ResourceVersion: live.ResourceVersion}
	seen := map[string]bool{}
	for i := range live.Items {
		seen[string(live.Items[i].UID)] = true
		if sum := summarize(&live.Items[i], false); f.match(sum) {
			out.Runs = append(out.Runs, sum)
		}
	}
	sel := f.selector()
	if f.phase != "" {
		sel = strings.TrimPrefix(sel+","+arv1.LabelPhase+"="+f.phase, ",")
	}
	const archivedShown = 100 // the newest; older ones are a kubectl get archivedruns away
	archived, err := s.runs.ArchiveV1alpha1().ArchivedRuns(f.namespace).List(ctx, metav1.ListOptions{LabelSelector: sel, Limit: archivedShown})
	if err != nil {
		out.ArchiveError = "archived runs not shown: " + err.Error()
	} else {
		for i := range archived.Items {
			a := &archived.Items[i]
			if seen[string(a.UID)] {
				continue // archived a moment ago, not yet deleted: the live one is listed
			}
			out.Runs = append(out.Runs, summarize(&rsv1.Run{ObjectMeta: a.ObjectMeta, Spec: a.Spec, Status: a.Status.RunStatus}, true))
		}
	}
	slices.SortStableFunc(out.Runs, func(a, b runSummary) int { return b.Created.Compare(a.Created) })
	return out, nil
}

func (s *server) config(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, map[string]string{"namespace": s.o.Namespace})
}

func (s *server) listRuns(w http.ResponseWriter, r *http.Request) {
	l, err := s.list(r.Context(), filterOf(r))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, l)
}

// watchRuns streams the runs list as Server-Sent Events: "reset" with the whole list, then "run"
// with each change of a live run ({type, run}; a run that no longer passes the filter comes as
// DELETED). When the watch ends the stream ends and the browser reconnects, starting again from
// a fresh list.
func (s *server) watchRuns(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	f := filterOf(r)
	l, err := s.list(ctx, f)
	if err != nil {
		writeError(w, err)
		return
	}
	ev, ok := newEvents(w)
	if !ok {
		return
	}
	ev.send("reset", l)
	wi, err := s.runs.RunserviceV1alpha1().Runs(f.namespace).Watch(ctx, metav1.ListOptions{
		LabelSelector: f.selector(), ResourceVersion: l.ResourceVersion, AllowWatchBookmarks: true,
	})
	if err != nil {
		ev.send("failure", map[string]string{"error": err.Error()})
		return
	}
	defer wi.Stop()
	// A deleted run is usually being archived: the list is sent again once the archive's index
	// (which follows the store every few seconds) can list it.
	refresh := time.NewTimer(time.Hour)
	refresh.Stop()
	defer refresh.Stop()
	ev.refresh, ev.onRefresh = refresh.C, func() {
		if l, err := s.list(ctx, f); err == nil {
			ev.send("reset", l)
		}
	}
	ev.loop(ctx, wi, func(e watch.Event) {
		run, ok := e.Object.(*rsv1.Run)
		if !ok {
			return
		}
		if e.Type == watch.Deleted {
			refresh.Reset(archiveLag)
		}
		sum := summarize(run, false)
		typ := e.Type
		if !f.match(sum) {
			typ = watch.Deleted
		}
		ev.send("run", map[string]any{"type": typ, "run": sum})
	})
}

// archiveLag is how long after a run's deletion the runs list is sent again, with the run archived.
const archiveLag = 5 * time.Second

// runView is what the run page draws.
type runView struct {
	Namespace     string     `json:"namespace"`
	Name          string     `json:"name"`
	UID           string     `json:"uid"`
	Archived      bool       `json:"archived"`
	Phase         string     `json:"phase"`
	Result        string     `json:"result"`
	Stopping      bool       `json:"stopping,omitempty"`
	ChangeGroups  []string   `json:"changeGroups,omitempty"`
	RestartedFrom string     `json:"restartedFrom,omitempty"`
	Created       time.Time  `json:"created"`
	StartTime     *time.Time `json:"startTime,omitempty"`
	EndTime       *time.Time `json:"endTime,omitempty"`
	Tasks         []taskView `json:"tasks"`
	Edges         []Edge     `json:"edges"`
}

type taskView struct {
	Node
	Phase           string     `json:"phase"`
	WaitingApproval bool       `json:"waitingApproval,omitempty"`
	NeedsApproval   bool       `json:"needsApproval,omitempty"`
	Approved        bool       `json:"approved,omitempty"`
	Executor        string     `json:"executor,omitempty"`
	StartTime       *time.Time `json:"startTime,omitempty"`
	EndTime         *time.Time `json:"endTime,omitempty"`
	Reason          string     `json:"reason,omitempty"`
	Message         string     `json:"message,omitempty"`
	FromRun         string     `json:"fromRun,omitempty"`
	Steps           []stepView `json:"steps"`
}

type stepView struct {
	Name      string     `json:"name"`
	Phase     string     `json:"phase"`
	ExitCode  *int32     `json:"exitCode,omitempty"`
	StartTime *time.Time `json:"startTime,omitempty"`
	EndTime   *time.Time `json:"endTime,omitempty"`
}

func timeOf(t *metav1.Time) *time.Time {
	if t == nil {
		return nil
	}
	return &t.Time
}

func viewOf(r *rsv1.Run, archived bool) runView {
	sum := summarize(r, archived)
	v := runView{
		Namespace: r.Namespace, Name: r.Name, UID: sum.UID, Archived: archived, Phase: sum.Phase, Result: sum.Result,
		Stopping: r.IsStopped() && !r.Status.Phase.IsFinal(), ChangeGroups: r.Spec.ChangeGroups, RestartedFrom: sum.RestartedFrom,
		Created: r.CreationTimestamp.Time, StartTime: timeOf(r.Status.StartTime), EndTime: timeOf(r.Status.EndTime),
	}
	nodes, edges := Layout(r.Spec.Tasks)
	v.Edges = edges
	if v.Edges == nil {
		v.Edges = []Edge{}
	}
	status := map[string]*rsv1.TaskStatus{}
	for i := range r.Status.Tasks {
		status[r.Status.Tasks[i].Name] = &r.Status.Tasks[i]
	}
	for i, t := range r.Spec.Tasks {
		tv := taskView{Node: nodes[i], Phase: string(rsv1.TaskPhaseNotStarted), NeedsApproval: t.IsNeedsApproval(),
			Approved: slices.Contains(r.Spec.ApprovedTasks, t.Name), Steps: []stepView{}}
		if ts := status[t.Name]; ts != nil {
			if ts.Phase != "" {
				tv.Phase = string(ts.Phase)
			}
			tv.WaitingApproval, tv.Executor, tv.Reason, tv.Message, tv.FromRun = ts.WaitingApproval, ts.Executor, ts.Reason, ts.Message, ts.FromRun
			tv.StartTime, tv.EndTime = timeOf(ts.StartTime), timeOf(ts.EndTime)
			for _, st := range ts.Steps {
				tv.Steps = append(tv.Steps, stepView{Name: st.Name, Phase: string(st.Phase), ExitCode: st.ExitCode, StartTime: timeOf(st.StartTime), EndTime: timeOf(st.EndTime)})
			}
		}
		v.Tasks = append(v.Tasks, tv)
	}
	if v.Tasks == nil {
		v.Tasks = []taskView{}
	}
	return v
}

func (s *server) reader(ns string) *runlogs.Reader {
	return &runlogs.Reader{Runs: s.runs, Kube: s.kube, Namespace: ns, StoreURL: s.o.ObjectStore, InsecureHTTP: s.o.InsecureHTTP}
}

func (s *server) getRun(w http.ResponseWriter, r *http.Request) {
	run, archived, err := s.reader(r.PathValue("ns")).Run(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, viewOf(run, archived))
}

// watchRun streams the run page as Server-Sent Events: "run" with the whole view at start and at
// each change. An archived run never changes: it is sent once. A live run deleted (archived) is
// sent once more from the archive, when it is there, and the stream ends.
func (s *server) watchRun(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	ns, name := r.PathValue("ns"), r.PathValue("name")
	run, archived, err := s.reader(ns).Run(ctx, name)
	if err != nil {
		writeError(w, err)
		return
	}
	ev, ok := newEvents(w)
	if !ok {
		return
	}
	ev.send("run", viewOf(run, archived))
	if archived {
		<-ctx.Done()
		return
	}
	wi, err := s.runs.RunserviceV1alpha1().Runs(ns).Watch(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String(), ResourceVersion: run.ResourceVersion, AllowWatchBookmarks: true,
	})
	if err != nil {
		ev.send("failure", map[string]string{"error": err.Error()})
		return
	}
	defer wi.Stop()
	ev.loop(ctx, wi, func(e watch.Event) {
		run, ok := e.Object.(*rsv1.Run)
		if !ok {
			return
		}
		if e.Type == watch.Deleted {
			// Archived, usually: the archive's index lists it a few seconds later.
			for deadline := time.Now().Add(30 * time.Second); ; {
				ar, err := s.runs.ArchiveV1alpha1().ArchivedRuns(ns).Get(ctx, string(run.UID), metav1.GetOptions{})
				if err == nil {
					ev.send("run", viewOf(&rsv1.Run{ObjectMeta: ar.ObjectMeta, Spec: ar.Spec, Status: ar.Status.RunStatus}, true))
					return
				}
				if time.Now().After(deadline) || ctx.Err() != nil {
					ev.send("failure", map[string]string{"error": fmt.Sprintf("run %s was deleted and is not in the archive: %v", name, err)})
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
		ev.send("run", viewOf(run, false))
	})
}

// stepLog streams a step's log as text, live (?follow=true) while the step runs.
func (s *server) stepLog(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	rd := s.reader(r.PathValue("ns"))
	run, _, err := rd.Run(ctx, r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	ts, err := rd.Task(ctx, run, r.PathValue("task"))
	if err != nil {
		writeError(w, notFound(err))
		return
	}
	i, err := strconv.Atoi(r.PathValue("step"))
	if err != nil || i < 0 || i >= len(ts.Steps) {
		writeError(w, notFound(fmt.Errorf("task %s has no step %q", ts.Name, r.PathValue("step"))))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fw := &flushWriter{w: w}
	if err := rd.Step(ctx, fw, run, ts, i, r.URL.Query().Get("follow") == "true"); err != nil {
		if !fw.wrote {
			if errors.Is(err, runlogs.ErrNoLog) {
				err = notFound(err)
			}
			writeError(w, err)
			return
		}
		fmt.Fprintf(fw, "\n[runctl ui: the log stopped: %v]\n", err)
	}
}

type flushWriter struct {
	w     http.ResponseWriter
	wrote bool
}

func (f *flushWriter) Write(p []byte) (int, error) {
	f.wrote = true
	n, err := f.w.Write(p)
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}

func (s *server) approve(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Tasks []string `json:"tasks"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&body); err != nil {
		writeError(w, badRequest(fmt.Errorf("reading the request: %w", err)))
		return
	}
	run, err := runops.Approve(r.Context(), s.runs, r.PathValue("ns"), r.PathValue("name"), body.Tasks...)
	s.answer(w, run, err)
}

func (s *server) stop(w http.ResponseWriter, r *http.Request) {
	run, err := runops.Stop(r.Context(), s.runs, r.PathValue("ns"), r.PathValue("name"))
	s.answer(w, run, err)
}

func (s *server) restart(w http.ResponseWriter, r *http.Request) {
	var body struct {
		FailedTasksOnly bool `json:"failedTasksOnly"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&body); err != nil {
		writeError(w, badRequest(fmt.Errorf("reading the request: %w", err)))
		return
	}
	run, err := runops.Restart(r.Context(), s.runs, r.PathValue("ns"), r.PathValue("name"), runops.RestartOptions{FailedTasksOnly: body.FailedTasksOnly})
	s.answer(w, run, err)
}

func (s *server) answer(w http.ResponseWriter, run *rsv1.Run, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, map[string]string{"namespace": run.Namespace, "name": run.Name})
}

// httpError carries the status an error is answered with.
type httpError struct {
	code int
	err  error
}

func (e httpError) Error() string { return e.err.Error() }
func (e httpError) Unwrap() error { return e.err }

func notFound(err error) error   { return httpError{http.StatusNotFound, err} }
func badRequest(err error) error { return httpError{http.StatusBadRequest, err} }

// writeError answers an error as JSON {error}, with the apiserver's status code when it has one
// (403 when RBAC refused the user), else 422: runops refused the operation and says why.
func writeError(w http.ResponseWriter, err error) {
	code := http.StatusUnprocessableEntity
	var he httpError
	var status apierrors.APIStatus
	switch {
	case errors.As(err, &he):
		code = he.code
	case errors.As(err, &status) && status.Status().Code != 0:
		code = int(status.Status().Code)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// events writes Server-Sent Events.
type events struct {
	w  http.ResponseWriter
	fl http.Flusher
	// refresh, when set, calls onRefresh from loop.
	refresh   <-chan time.Time
	onRefresh func()
}

func newEvents(w http.ResponseWriter) (*events, bool) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return nil, false
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n") // the browser reconnects this soon after a stream ends
	fl.Flush()
	return &events{w: w, fl: fl}, true
}

func (e *events) send(event string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	fmt.Fprintf(e.w, "event: %s\ndata: %s\n\n", event, b)
	e.fl.Flush()
}

// loop hands each event of the watch to f until the watch or ctx ends, and keeps the connection
// alive with a comment every 15 s (so a closed browser tab is noticed and the watch stopped).
func (e *events) loop(ctx context.Context, wi watch.Interface, f func(watch.Event)) {
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.refresh:
			e.onRefresh()
		case <-tick.C:
			if _, err := fmt.Fprint(e.w, ": keep-alive\n\n"); err != nil {
				return
			}
			e.fl.Flush()
		case ev, ok := <-wi.ResultChan():
			if !ok {
				return
			}
			switch ev.Type {
			case watch.Bookmark:
			case watch.Error:
				e.send("failure", map[string]string{"error": apierrors.FromObject(ev.Object).Error()})
				return
			default:
				f(ev)
			}
		}
	}
}
