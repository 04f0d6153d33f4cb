package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/liggitt/tabwriter"
	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/cli-runtime/pkg/printers"
	"k8s.io/client-go/rest"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// tableAccept asks the apiserver for a Table of the CRD's printer columns, as kubectl does, so
// that runctl's columns are the CRD's (-o wide adds those of priority 1).
const tableAccept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"

var (
	runPhases  = []rsv1.RunPhase{rsv1.RunPhaseQueued, rsv1.RunPhaseRunning, rsv1.RunPhaseFinished, rsv1.RunPhaseSetupError, rsv1.RunPhaseCancelled}
	runResults = []rsv1.RunResult{rsv1.RunResultUnknown, rsv1.RunResultSuccess, rsv1.RunResultFailed, rsv1.RunResultStopped}
)

type get struct {
	*options
	changeGroup, phase, result, output, selector string
	watch, allNamespaces, archived               bool
}

func newGet(o *options) *cobra.Command {
	g := &get{options: o}
	cmd := &cobra.Command{
		Use:     "get [RUN...]",
		Aliases: []string{"list", "ls"},
		Short:   "List runs, with the CRD's columns",
		Long: `Lists the runs of the namespace (or those named) with the columns kubectl shows, which the Run
CRD's printer columns define. Filters combine: --changegroup selects the runs of a change group,
--phase and --result their phase and result (case does not matter). --archived lists the runs the
manager archived instead (they have ended; describe, logs, wait and restart read them too).`,
		Example: `  runctl get
  runctl get --changegroup project-a --phase Running -o wide
  runctl get --result Failed -o yaml
  runctl get release -w         # watch one run change
  runctl get --archived --changegroup project-a --result Failed`,
		ValidArgsFunction: o.completeRuns,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.run(cmd.Context(), args)
		},
	}
	f := cmd.Flags()
	f.StringVar(&g.changeGroup, "changegroup", "", "Only runs of this change group.")
	f.StringVar(&g.phase, "phase", "", "Only runs in this phase: "+joinAny(runPhases)+".")
	f.StringVar(&g.result, "result", "", "Only runs with this result: "+joinAny(runResults)+".")
	f.StringVarP(&g.selector, "selector", "l", "", "Only runs whose labels match this selector.")
	f.StringVarP(&g.output, "output", "o", "", "Output format: wide, json, yaml or name (default: the table).")
	f.BoolVarP(&g.watch, "watch", "w", false, "After listing, watch for changes and print each.")
	f.BoolVarP(&g.allNamespaces, "all-namespaces", "A", false, "List the runs of every namespace.")
	f.BoolVar(&g.archived, "archived", false, "List the archived runs (ended, moved out of etcd into the object store) instead of the live ones.")
	_ = cmd.RegisterFlagCompletionFunc("phase", fixedCompletion(runPhases))
	_ = cmd.RegisterFlagCompletionFunc("result", fixedCompletion(runResults))
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"wide", "json", "yaml", "name"}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("changegroup", o.completeChangeGroups)
	return cmd
}

// filter is what a run must match to be listed.
type filter struct {
	names  []string
	phase  rsv1.RunPhase
	result rsv1.RunResult
}

func (f filter) match(r *rsv1.Run) bool {
	phase := r.Status.Phase
	if phase == "" {
		phase = rsv1.RunPhaseQueued
	}
	result := r.Status.Result
	if result == "" {
		result = rsv1.RunResultUnknown
	}
	return (len(f.names) == 0 || slices.Contains(f.names, r.Name)) &&
		(f.phase == "" || phase == f.phase) && (f.result == "" || result == f.result)
}

// parseEnum returns the value of values that s names, whatever its case, or an error naming flag
// and the values.
func parseEnum[T ~string](flag, s string, values []T) (T, error) {
	if s == "" {
		return "", nil
	}
	for _, v := range values {
		if strings.EqualFold(s, string(v)) {
			return v, nil
		}
	}
	return "", fmt.Errorf("--%s %q is not one of %s", flag, s, joinAny(values))
}

func joinAny[T ~string](values []T) string {
	s := make([]string, len(values))
	for i, v := range values {
		s[i] = string(v)
	}
	return strings.Join(s, ", ")
}

func (g *get) run(ctx context.Context, names []string) error {
	var f filter
	var err error
	if f.phase, err = parseEnum("phase", g.phase, runPhases); err != nil {
		return err
	}
	if f.result, err = parseEnum("result", g.result, runResults); err != nil {
		return err
	}
	switch g.output {
	case "", "wide", "json", "yaml", "name":
	default:
		return fmt.Errorf("--output %q is not one of wide, json, yaml, name", g.output)
	}
	if err := g.init(); err != nil {
		return err
	}
	f.names = names
	// The change group is a label selector: the defaulting webhook labels each run with its
	// groups, so the apiserver filters; phase and result are filtered here (their labels are set
	// only once a run has ended).
	selector := g.selector
	if g.changeGroup != "" {
		selector = strings.Trim(selector+","+arv1.LabelChangeGroupPrefix+g.changeGroup, ",")
	}
	if g.archived {
		// The archive API selects by phase and result labels itself: it may hold millions of runs.
		if g.watch {
			return fmt.Errorf("--watch does not apply to --archived: archived runs do not change")
		}
		if f.phase != "" && !f.phase.IsFinal() {
			return fmt.Errorf("--phase %s: archived runs have ended (Finished, Cancelled or SetupError)", f.phase)
		}
		for _, l := range [][2]string{{arv1.LabelPhase, string(f.phase)}, {arv1.LabelResult, string(f.result)}} {
			if l[1] != "" {
				selector = strings.Trim(selector+","+l[0]+"="+l[1], ",")
			}
		}
	}
	opts := metav1.ListOptions{LabelSelector: selector}
	if len(names) == 1 {
		opts.FieldSelector = fields.OneTermEqualSelector("metadata.name", names[0]).String()
	}
	ns := g.ns
	if g.allNamespaces {
		ns = ""
	}
	if g.archived && g.output != "" && g.output != "wide" {
		return g.printArchived(ctx, ns, names, opts)
	}
	p := g.printer()
	rv, n, err := g.list(ctx, ns, opts, f, p)
	if err != nil {
		return err
	}
	if !g.watch {
		if n == 0 {
			return g.nothingListed(ns, names)
		}
		return nil
	}
	opts.ResourceVersion, opts.Watch, opts.Limit = rv, true, 0
	return g.follow(ctx, ns, opts, f, p)
}

// nothingListed says why nothing was listed: a run named that is not there is an error.
func (g *get) nothingListed(ns string, names []string) error {
	where := "in namespace " + ns
	if ns == "" {
		where = "in any namespace"
	}
	if len(names) > 0 {
		return fmt.Errorf("no run %s %s matches (archived runs: kubectl get archivedruns; -n chooses another namespace)", strings.Join(names, ", "), where)
	}
	fmt.Fprintf(g.err, "No runs found %s.\n", where)
	return nil
}

// printArchived prints the archived runs as objects (the archive API's Table rows hold only what
// its index keeps, not the documents): one List for json and yaml, each name for name.
func (g *get) printArchived(ctx context.Context, ns string, names []string, opts metav1.ListOptions) error {
	list := &arv1.ArchivedRunList{}
	opts.Limit = listChunk
	for {
		page, err := g.rs.ArchiveV1alpha1().ArchivedRuns(ns).List(ctx, opts)
		if err != nil {
			return hint(err)
		}
		for _, r := range page.Items {
			if len(names) == 0 || slices.Contains(names, r.Name) {
				list.Items = append(list.Items, r)
			}
		}
		if opts.Continue = page.Continue; opts.Continue == "" {
			break
		}
	}
	if len(list.Items) == 0 {
		return g.nothingListed(ns, names)
	}
	var p printers.ResourcePrinter = &printers.JSONPrinter{}
	switch g.output {
	case "yaml":
		p = &printers.YAMLPrinter{}
	case "name":
		p = &printers.NamePrinter{}
	}
	for i := range list.Items {
		list.Items[i].SetGroupVersionKind(arv1.GroupVersion.WithKind("ArchivedRun"))
		if g.output == "name" {
			if err := p.PrintObj(&list.Items[i], g.out); err != nil {
				return err
			}
		}
	}
	if g.output == "name" {
		return nil
	}
	list.SetGroupVersionKind(arv1.GroupVersion.WithKind("ArchivedRunList"))
	return p.PrintObj(list, g.out)
}

// runPrinter prints what get lists: tables of rows with their objects, or the objects.
type runPrinter interface {
	print(t *metav1.Table, runs []*rsv1.Run, w io.Writer) error
}

func (g *get) printer() runPrinter {
	switch g.output {
	case "json":
		return objectPrinter{p: &printers.JSONPrinter{}, list: !g.watch}
	case "yaml":
		return objectPrinter{p: &printers.YAMLPrinter{}, list: !g.watch}
	case "name":
		return objectPrinter{p: &printers.NamePrinter{Operation: ""}}
	}
	return &tablePrinter{p: printers.NewTablePrinter(printers.PrintOptions{Wide: g.output == "wide", WithNamespace: g.allNamespaces})}
}

// tablePrinter prints tables through one tabwriter, flushed after each table: the chunks of a
// list are aligned as one table (the first chunk's columns widths hold for the others, as kubectl's).
type tablePrinter struct {
	p  printers.ResourcePrinter
	tw *tabwriter.Writer
}

func (t *tablePrinter) print(table *metav1.Table, _ []*rsv1.Run, w io.Writer) error {
	if t.tw == nil {
		t.tw = printers.GetNewTabWriter(w)
	}
	if err := t.p.PrintObj(table, t.tw); err != nil {
		return err
	}
	return t.tw.Flush()
}

// objectPrinter prints runs as objects: a List of them when list (as kubectl does), else each.
type objectPrinter struct {
	p    printers.ResourcePrinter
	list bool
}

func (o objectPrinter) print(_ *metav1.Table, runs []*rsv1.Run, w io.Writer) error {
	for _, r := range runs {
		r.SetGroupVersionKind(rsv1.GroupVersion.WithKind("Run"))
	}
	if !o.list {
		for _, r := range runs {
			if err := o.p.PrintObj(r, w); err != nil {
				return err
			}
		}
		return nil
	}
	list := &rsv1.RunList{}
	list.SetGroupVersionKind(rsv1.GroupVersion.WithKind("RunList"))
	for _, r := range runs {
		list.Items = append(list.Items, *r)
	}
	return o.p.PrintObj(list, w)
}

// list prints the runs that match, in chunks of listChunk as kubectl does (a namespace may hold
// many runs), and returns the list's resourceVersion and how many it printed.
func (g *get) list(ctx context.Context, ns string, opts metav1.ListOptions, f filter, p runPrinter) (string, int, error) {
	var rv string
	var runs []*rsv1.Run
	var table metav1.Table
	objects := g.output == "json" || g.output == "yaml" // printed as one List at the end
	opts.Limit = listChunk
	for {
		table = metav1.Table{}
		if err := g.tableRequest(ns, opts).Do(ctx).Into(&table); err != nil {
			return "", 0, hint(err)
		}
		if rv == "" {
			rv = table.ResourceVersion // every chunk is of the first one's snapshot
		}
		chunk, err := keep(&table, f)
		if err != nil {
			return "", 0, err
		}
		runs = append(runs, chunk...)
		if len(chunk) > 0 && !objects {
			if err := p.print(&table, chunk, g.out); err != nil {
				return "", 0, err
			}
		}
		if opts.Continue = table.Continue; opts.Continue == "" {
			break
		}
	}
	if len(runs) > 0 && objects {
		if err := p.print(&table, runs, g.out); err != nil {
			return "", 0, err
		}
	}
	return rv, len(runs), nil
}

// listChunk is how many runs a list asks for at once (kubectl's --chunk-size default).
var listChunk int64 = 500

func (g *get) tableRequest(ns string, opts metav1.ListOptions) *rest.Request {
	c, resource := g.rs.RunserviceV1alpha1().RESTClient(), "runs"
	if g.archived {
		c, resource = g.rs.ArchiveV1alpha1().RESTClient(), "archivedruns"
	}
	return c.Get().
		NamespaceIfScoped(ns, ns != "").Resource(resource).
		VersionedParams(&opts, metav1.ParameterCodec).
		Param("includeObject", string(metav1.IncludeObject)).
		SetHeader("Accept", tableAccept)
}

// keep keeps the table's rows whose runs match f and returns those runs.
func keep(table *metav1.Table, f filter) ([]*rsv1.Run, error) {
	rows := table.Rows[:0]
	var runs []*rsv1.Run
	for _, row := range table.Rows {
		r := &rsv1.Run{}
		if err := json.Unmarshal(row.Object.Raw, r); err != nil {
			return nil, fmt.Errorf("decoding a run of the table: %w", err)
		}
		if f.match(r) {
			row.Object = runtime.RawExtension{Object: r}
			rows, runs = append(rows, row), append(runs, r)
		}
	}
	table.Rows = rows
	return runs, nil
}

// follow prints each change of a matching run, as Tables of one row the apiserver sends in watch
// events, until ctx ends or the apiserver ends the watch.
func (g *get) follow(ctx context.Context, ns string, opts metav1.ListOptions, f filter, p runPrinter) error {
	body, err := g.tableRequest(ns, opts).Stream(ctx)
	if err != nil {
		return hint(err)
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	var columns []metav1.TableColumnDefinition
	for {
		var ev metav1.WatchEvent
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil || err == io.EOF {
				return nil
			}
			return fmt.Errorf("watching runs: %w", err)
		}
		switch watch.EventType(ev.Type) {
		case watch.Error:
			var status metav1.Status
			_ = json.Unmarshal(ev.Object.Raw, &status)
			return fmt.Errorf("watching runs: %s", status.Message)
		case watch.Bookmark:
			continue
		}
		var table metav1.Table
		if err := json.Unmarshal(ev.Object.Raw, &table); err != nil {
			return fmt.Errorf("decoding a watch event: %w", err)
		}
		if len(table.ColumnDefinitions) == 0 {
			table.ColumnDefinitions = columns // sent once, in the first event
		}
		columns = table.ColumnDefinitions
		runs, err := keep(&table, f)
		if err != nil {
			return err
		}
		if len(runs) == 0 {
			continue
		}
		if err := p.print(&table, runs, g.out); err != nil {
			return err
		}
	}
}
