package archiveapi

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/duration"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
)

// columns are what kubectl get prints of archived runs: all from the index's entries.
var columns = []metav1.TableColumnDefinition{
	{Name: "Name", Type: "string", Format: "name", Description: "The run's name."},
	{Name: "ChangeGroups", Type: "string", Description: "The run's change groups."},
	{Name: "Phase", Type: "string", Description: "The run's final phase."},
	{Name: "Result", Type: "string", Description: "The run's result."},
	{Name: "Tasks", Type: "string", Description: "Tasks done of all (status.progress)."},
	{Name: "Started", Type: "string", Description: "When the run started (UTC)."},
	{Name: "Duration", Type: "string", Description: "From the run's start to its end."},
	{Name: "Age", Type: "string", Description: "Since the run was created."},
}

// row is the Table row of an archived run's entry, at now.
func row(e archive.Entry, now time.Time) []any {
	started, took := "", ""
	if !e.Started.IsZero() {
		started = e.Started.UTC().Format(time.RFC3339)
		if !e.Ended.IsZero() && !e.Ended.Before(e.Started) {
			took = duration.HumanDuration(e.Ended.Sub(e.Started))
		}
	}
	return []any{e.Name, strings.Join(e.ChangeGroups, ","), e.Phase, e.Result, e.Progress, started, took, duration.HumanDuration(now.Sub(e.Created))}
}

// tableConvertor makes the Table of archived runs from what an entry holds, so that the objects of
// a Table list need only be entries (objectOf), not documents.
type tableConvertor struct{}

func (tableConvertor) ConvertToTable(_ context.Context, obj runtime.Object, _ runtime.Object) (*metav1.Table, error) {
	now := time.Now()
	table := &metav1.Table{ColumnDefinitions: columns}
	add := func(run *arv1.ArchivedRun) {
		table.Rows = append(table.Rows, metav1.TableRow{Cells: row(archive.EntryOf(run), now), Object: runtime.RawExtension{Object: run}})
	}
	switch o := obj.(type) {
	case *arv1.ArchivedRun:
		add(o)
	case *arv1.ArchivedRunList:
		for i := range o.Items {
			add(&o.Items[i])
		}
	default:
		return nil, fmt.Errorf("a table of archived runs cannot hold a %T", obj)
	}
	if l, err := meta.ListAccessor(obj); err == nil {
		table.Continue, table.RemainingItemCount = l.GetContinue(), l.GetRemainingItemCount()
	}
	return table, nil
}

// objectOf is the archived run of entry e as far as e knows it: what a Table or a metadata list
// shows, without the document. archive.EntryOf(objectOf(e)) is e.
func objectOf(e archive.Entry) arv1.ArchivedRun {
	run := arv1.ArchivedRun{
		TypeMeta: metav1.TypeMeta{APIVersion: arv1.GroupVersion.String(), Kind: "ArchivedRun"},
		ObjectMeta: metav1.ObjectMeta{
			Name:              e.Name,
			Namespace:         e.Namespace,
			UID:               types.UID(e.UID),
			CreationTimestamp: metav1.NewTime(e.Created),
		},
		Spec: rsv1.RunSpec{ChangeGroups: e.ChangeGroups},
		Status: arv1.ArchivedRunStatus{
			RunStatus: rsv1.RunStatus{
				Phase:    rsv1.RunPhase(e.Phase),
				Result:   rsv1.RunResult(e.Result),
				Progress: e.Progress,
			},
			ArchiveTime: metav1.NewTime(e.Archived),
		},
	}
	if !e.Started.IsZero() {
		run.Status.StartTime = ptrTime(e.Started)
	}
	if !e.Ended.IsZero() {
		run.Status.EndTime = ptrTime(e.Ended)
	}
	live := rsv1.Run{ObjectMeta: metav1.ObjectMeta{Labels: e.Labels}, Spec: run.Spec, Status: run.Status.RunStatus}
	run.Labels = archive.Labels(&live)
	return run
}

func ptrTime(t time.Time) *metav1.Time {
	mt := metav1.NewTime(t)
	return &mt
}
