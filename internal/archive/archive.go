// Package archive owns what the archive keeps in the object store, the source of truth for
// finished runs once they leave etcd:
//
//   - the document of each archived run, an ArchivedRun (the Run with its status and its
//     ExecutorTasks' statuses), immutable, at a key derived from the run's uid beside its logs
//     (objectstore.RunDocKey), so that archiving it again rewrites the same object;
//   - index segments: compact, gzipped batches of Entries written after the documents they name, so
//     that an index (disposable, on each manager replica) is rebuilt from a few thousand segments
//     instead of a million documents, and follows new archives by listing the newest segments.
package archive

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/objectstore"
)

// Document is the ArchivedRun of run and its ExecutorTasks, archived at now: the run's metadata
// without what only a live object has.
func Document(run *rsv1.Run, tasks []rsv1.ExecutorTask, now time.Time) *arv1.ArchivedRun {
	doc := &arv1.ArchivedRun{
		TypeMeta: metav1.TypeMeta{APIVersion: arv1.GroupVersion.String(), Kind: "ArchivedRun"},
		ObjectMeta: metav1.ObjectMeta{
			Name:              run.Name,
			Namespace:         run.Namespace,
			UID:               run.UID,
			Generation:        run.Generation,
			CreationTimestamp: run.CreationTimestamp,
			Labels:            Labels(run),
			Annotations:       run.Annotations,
		},
		Spec: *run.Spec.DeepCopy(),
		Status: arv1.ArchivedRunStatus{
			RunStatus:   *run.Status.DeepCopy(),
			ArchiveTime: metav1.NewTime(now.UTC().Truncate(time.Second)),
		},
	}
	for i := range tasks {
		et := &tasks[i]
		doc.Status.ExecutorTasks = append(doc.Status.ExecutorTasks, arv1.ArchivedExecutorTask{
			Name:     et.Name,
			UID:      et.UID,
			Task:     et.Spec.TaskName,
			Executor: et.Spec.Executor,
			Fetched:  run.Status.Fetched(et),
			Status:   *et.Status.DeepCopy(),
		})
	}
	return doc
}

// Labels are run's labels with the ones live and archived runs carry alike: one per change group,
// and its phase and result once it is final.
func Labels(run *rsv1.Run) map[string]string {
	out := make(map[string]string, len(run.Labels)+len(run.Spec.ChangeGroups)+2)
	for k, v := range run.Labels {
		out[k] = v
	}
	for _, g := range run.Spec.ChangeGroups {
		out[arv1.LabelChangeGroupPrefix+g] = ""
	}
	if run.Status.Phase.IsFinal() {
		out[arv1.LabelPhase] = string(run.Status.Phase)
		if run.Status.Result != "" {
			out[arv1.LabelResult] = string(run.Status.Result)
		}
	}
	return out
}

// Entry is what an index keeps of an archived run: enough to list it (a Table row) and to find its
// document, no more.
type Entry struct {
	Namespace    string   `json:"ns"`
	Name         string   `json:"name"`
	UID          string   `json:"uid"`
	ChangeGroups []string `json:"groups,omitempty"`
	Phase        string   `json:"phase"`
	Result       string   `json:"result,omitempty"`
	// Progress is the run's status.progress (tasks done/total).
	Progress string    `json:"progress,omitempty"`
	Created  time.Time `json:"created"`
	Started  time.Time `json:"started,omitzero"`
	Ended    time.Time `json:"ended,omitzero"`
	Archived time.Time `json:"archived"`
	// Labels are the run's own labels, without the ones Labels derives from its groups and its end
	// and without the replica that owned it: what kubectl's -L and --show-labels show of it.
	Labels map[string]string `json:"labels,omitempty"`
	// Deleted marks a tombstone: the run's document was deleted (retention).
	Deleted bool `json:"deleted,omitempty"`
}

// EntryOf is doc's index entry.
func EntryOf(doc *arv1.ArchivedRun) Entry {
	e := Entry{
		Namespace:    doc.Namespace,
		Name:         doc.Name,
		UID:          string(doc.UID),
		ChangeGroups: doc.Spec.ChangeGroups,
		Phase:        string(doc.Status.Phase),
		Result:       string(doc.Status.Result),
		Progress:     doc.Status.Progress,
		Created:      doc.CreationTimestamp.UTC(),
		Archived:     doc.Status.ArchiveTime.UTC(),
		Labels:       ownLabels(doc.Labels),
	}
	if t := doc.Status.StartTime; t != nil {
		e.Started = t.UTC()
	}
	if t := doc.Status.EndTime; t != nil {
		e.Ended = t.UTC()
	}
	return e
}

// ownLabels are a run's labels but those Labels derives and the shard's (nil when none is left).
func ownLabels(all map[string]string) map[string]string {
	var own map[string]string
	for k, v := range all {
		if strings.HasPrefix(k, arv1.LabelChangeGroupPrefix) || k == arv1.LabelPhase || k == arv1.LabelResult ||
			k == rsv1.LabelShard || k == rsv1.LabelShardDrain {
			continue
		}
		if own == nil {
			own = map[string]string{}
		}
		own[k] = v
	}
	return own
}

// maxDocumentBytes bounds an archived run's document when read: a run's status is bounded by its
// size limits (dag.ValidateSize), far below this.
const maxDocumentBytes = 16 << 20

// DocumentKey is where doc is kept.
func DocumentKey(namespace, name, uid string) string {
	return objectstore.RunDocKey(namespace, name, uid)
}

// PutDocument writes doc at its key; writing it again replaces it whole.
func PutDocument(ctx context.Context, store *objectstore.Store, doc *arv1.ArchivedRun) error {
	b, err := json.Marshal(doc)
	if err != nil {
		return fmt.Errorf("encoding archived run %s/%s: %w", doc.Namespace, doc.Name, err)
	}
	return store.Put(ctx, DocumentKey(doc.Namespace, doc.Name, string(doc.UID)), bytes.NewReader(b))
}

// GetDocument reads the document of the run namespace/name with uid; objectstore.ErrNotFound when
// there is none.
func GetDocument(ctx context.Context, store *objectstore.Store, namespace, name, uid string) (*arv1.ArchivedRun, error) {
	key := DocumentKey(namespace, name, uid)
	r, err := store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, maxDocumentBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", key, err)
	}
	if len(b) > maxDocumentBytes {
		return nil, fmt.Errorf("reading %s: larger than %d bytes", key, maxDocumentBytes)
	}
	doc := &arv1.ArchivedRun{}
	if err := json.Unmarshal(b, doc); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", key, err)
	}
	return doc, nil
}
