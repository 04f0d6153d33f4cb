package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/objectstore"
)

// The shape of the generated archive.
const (
	archiveNamespaces = 10  // change group g is in namespace team-<g mod 10>
	archiveZipfS      = 1.1 // skew of the change groups' sizes
	archiveSegment    = 500 // entries per segment, the archiver's batch at most
	archiveAfterDelay = 10 * time.Minute
)

// archiveGen generates archived runs as the archiver writes them: each run's document
// (archive.PutDocument), then a segment of the entries of a batch of them (archive.WriteSegment),
// named by the hour the batch was archived in. Run i is archived at start + i*step; runs are
// spread over the hours before now, so that past hours can be compacted as the archiver's upkeep
// compacts them.
type archiveGen struct {
	sample     *rsv1.Run // config/samples/run_diamond.yaml: four tasks, a fan-out and a fan-in
	runs       int
	groupCount int
	group      []uint16 // run i's change group, Zipf-distributed
	outcome    []uint8  // run i's outcome: one of the outcomes below
	groupSize  []int    // runs per change group
	start      time.Time
	stepDur    time.Duration
}

// Outcomes of the generated runs, in these proportions: 85% succeed, 11% fail a task, 3% are
// cancelled, 1% fail to set up.
const (
	outcomeSuccess uint8 = iota
	outcomeFailed
	outcomeCancelled
	outcomeSetupError
)

func newArchiveGen(root string, runs, groups int, hours int, now time.Time) (*archiveGen, error) {
	b, err := os.ReadFile(filepath.Join(root, "config", "samples", "run_diamond.yaml"))
	if err != nil {
		return nil, err
	}
	sample := &rsv1.Run{}
	if err := yaml.Unmarshal(b, sample); err != nil {
		return nil, fmt.Errorf("decoding the sample run: %w", err)
	}
	g := &archiveGen{sample: sample, runs: runs, groupCount: groups, group: make([]uint16, runs), outcome: make([]uint8, runs), groupSize: make([]int, groups)}
	r := rand.New(rand.NewPCG(9, 9))
	z := rand.NewZipf(r, archiveZipfS, 1, uint64(groups-1))
	// Group numbers are shuffled, so that the large groups are not all in one namespace.
	perm := r.Perm(groups)
	for i := range runs {
		grp := perm[z.Uint64()]
		g.group[i] = uint16(grp)
		g.groupSize[grp]++
		switch p := r.IntN(100); {
		case p < 85:
			g.outcome[i] = outcomeSuccess
		case p < 96:
			g.outcome[i] = outcomeFailed
		case p < 99:
			g.outcome[i] = outcomeCancelled
		default:
			g.outcome[i] = outcomeSetupError
		}
	}
	span := time.Duration(hours) * time.Hour
	g.stepDur = span / time.Duration(runs)
	g.start = now.Add(-span)
	return g, nil
}

func groupName(g int) string      { return fmt.Sprintf("project-%04d", g) }
func groupNamespace(g int) string { return fmt.Sprintf("team-%d", g%archiveNamespaces) }

func (g *archiveGen) archivedAt(i int) time.Time { return g.start.Add(time.Duration(i) * g.stepDur) }

// document is run i's archived document: the sample run in its change group, finished with its
// outcome, with its tasks' and steps' statuses, times and log keys, and its ExecutorTasks.
func (g *archiveGen) document(i int) *arv1.ArchivedRun {
	grp := int(g.group[i])
	r := rand.New(rand.NewPCG(uint64(i), 17))
	archived := g.archivedAt(i)
	end := archived.Add(-archiveAfterDelay - time.Duration(r.IntN(30_000))*time.Millisecond)
	took := time.Duration(60+r.IntN(1200)) * time.Second
	start := end.Add(-took)
	created := start.Add(-time.Duration(1+r.IntN(20)) * time.Second)
	t := func(d time.Time) *metav1.Time { return ptr.To(metav1.NewTime(d.Truncate(time.Second))) }

	run := g.sample.DeepCopy()
	run.Namespace, run.Name = groupNamespace(grp), fmt.Sprintf("run-%07d", i)
	run.UID = types.UID(fmt.Sprintf("6f1c%04x-%04x-4000-8000-%012x", grp, i>>32, i))
	run.Generation = 1
	run.CreationTimestamp = metav1.NewTime(created.Truncate(time.Second))
	run.Labels = map[string]string{"app.kubernetes.io/part-of": "ci", "ci.example.com/trigger": "push"}
	run.Annotations = map[string]string{"ci.example.com/commit": fmt.Sprintf("%040x", r.Uint64())}
	run.Spec.ChangeGroups = []string{groupName(grp)}
	st := &run.Status
	st.ObservedGeneration = 1
	st.QueueTime, st.StartTime, st.EndTime = t(created), t(start), t(end)
	st.Phase, st.Result = rsv1.RunPhaseFinished, rsv1.RunResultSuccess
	outcome := g.outcome[i]
	switch outcome {
	case outcomeFailed:
		st.Result = rsv1.RunResultFailed
	case outcomeCancelled:
		st.Phase, st.Result = rsv1.RunPhaseCancelled, rsv1.RunResultStopped
	case outcomeSetupError:
		st.Phase, st.Result, st.StartTime = rsv1.RunPhaseSetupError, rsv1.RunResultFailed, nil
		st.Progress = "0/4"
		st.Conditions = []metav1.Condition{{Type: "Valid", Status: metav1.ConditionFalse, Reason: "InvalidGraph", ObservedGeneration: 1,
			LastTransitionTime: *t(end), Message: "spec.tasks[2].depends[0].task: Not found: \"chekout\""}}
		return archive.Document(run, nil, archived)
	}
	// checkout, then build and test side by side, then package: each task its share of the run.
	window := map[string][2]float64{"checkout": {0, 0.2}, "build": {0.2, 0.8}, "test": {0.2, 0.75}, "package": {0.8, 1}}
	var tasks []rsv1.ExecutorTask
	done := 0
	for _, task := range run.Spec.Tasks {
		w := window[task.Name]
		ts := rsv1.TaskStatus{Name: task.Name, Phase: rsv1.TaskPhaseSuccess}
		if task.Name == "package" && outcome != outcomeSuccess {
			ts.Phase = rsv1.TaskPhaseSkipped
			if outcome == outcomeCancelled {
				ts.Phase = rsv1.TaskPhaseCancelled
			}
			st.Tasks = append(st.Tasks, ts)
			continue
		}
		tStart, tEnd := start.Add(time.Duration(w[0]*float64(took))), start.Add(time.Duration(w[1]*float64(took)))
		et := rsv1.ExecutorTask{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: run.Namespace, Name: rsv1.ExecutorTaskName(run.Name, run.UID, task.Name),
				UID: types.UID(fmt.Sprintf("7a2d%04x-%04x-4000-8000-%012x", done, i>>32, i)),
			},
			Spec: rsv1.ExecutorTaskSpec{RunName: run.Name, RunUID: string(run.UID), TaskName: task.Name,
				Executor: fmt.Sprintf("k8s-executor-%d", r.IntN(3)), Task: task, Environment: run.Spec.Environment},
		}
		loc := objectstore.TaskOf(&et)
		var steps []rsv1.StepStatus
		n := len(task.Steps)
		for s := range task.Steps {
			sStart := tStart.Add(time.Duration(s) * tEnd.Sub(tStart) / time.Duration(n))
			sEnd := tStart.Add(time.Duration(s+1) * tEnd.Sub(tStart) / time.Duration(n))
			steps = append(steps, rsv1.StepStatus{Name: fmt.Sprintf("step-%d", s), Phase: rsv1.StepPhaseSuccess, ExitCode: ptr.To[int32](0),
				StartTime: t(sStart), EndTime: t(sEnd), LogKey: loc.LogKey(s)})
		}
		if task.Name == "test" && outcome != outcomeSuccess {
			ts.Phase, steps[n-1].Phase, steps[n-1].ExitCode = rsv1.TaskPhaseFailed, rsv1.StepPhaseFailed, ptr.To[int32](1)
			if outcome == outcomeCancelled {
				ts.Phase, steps[n-1].Phase, steps[n-1].ExitCode = rsv1.TaskPhaseStopped, rsv1.StepPhaseStopped, ptr.To[int32](137)
			}
		}
		ts.Executor, ts.ExecutorTask, ts.StartTime, ts.EndTime, ts.Steps = et.Spec.Executor, et.Name, t(tStart), t(tEnd), steps
		ts.Fetched = tEnd.Add(2 * time.Second).UTC().Format(time.RFC3339)
		et.Status = rsv1.ExecutorTaskStatus{Phase: ts.Phase, StartTime: ts.StartTime, EndTime: ts.EndTime, Steps: steps}
		st.Tasks = append(st.Tasks, ts)
		tasks = append(tasks, et)
		if ts.Phase == rsv1.TaskPhaseSuccess {
			done++
		}
	}
	st.Progress = fmt.Sprintf("%d/%d", done, len(run.Spec.Tasks))
	return archive.Document(run, tasks, archived)
}

// docBytes is the size of run i's document as PutDocument writes it.
func (g *archiveGen) docBytes(i int) (int, error) {
	b, err := json.Marshal(g.document(i))
	return len(b), err
}

// writeResult is what generating the archive took.
type writeResult struct {
	runs, segments int
	elapsed        time.Duration
}

// write generates the archive into store with writers goroutines, each writing one batch at a time:
// its documents, then its segment, as the archiver does (a run is in a segment only once its
// document is durable).
func (g *archiveGen) write(ctx context.Context, store *objectstore.Store, writers int, progress func(done int)) (writeResult, error) {
	batches := make(chan int)
	var written atomic.Int64
	var segments atomic.Int64
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	begin := time.Now()
	for range writers {
		wg.Go(func() {
			for b := range batches {
				from, to := b*archiveSegment, min((b+1)*archiveSegment, g.runs)
				entries := make([]archive.Entry, 0, to-from)
				for i := from; i < to; i++ {
					doc := g.document(i)
					if err := archive.PutDocument(ctx, store, doc); err != nil {
						cancel(err)
						return
					}
					entries = append(entries, archive.EntryOf(doc))
				}
				if _, err := archive.WriteSegment(ctx, store, g.archivedAt(to-1), entries); err != nil {
					cancel(err)
					return
				}
				segments.Add(1)
				written.Add(int64(to - from))
			}
		})
	}
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
feed:
	for b := 0; b*archiveSegment < g.runs; b++ {
		for {
			select {
			case batches <- b:
				continue feed
			case <-ctx.Done():
				break feed
			case <-tick.C:
				progress(int(written.Load()))
			}
		}
	}
	close(batches)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return writeResult{}, fmt.Errorf("generating the archive: %w", err)
	}
	return writeResult{runs: int(written.Load()), segments: int(segments.Load()), elapsed: time.Since(begin)}, nil
}

// putBaseline puts n objects of size bytes into store with writers goroutines, under keys as deep
// as the documents' (baseline/<ns>/<name>/<uid>/run.json), and returns the time it took.
func putBaseline(ctx context.Context, store *objectstore.Store, prefix string, n, size, writers int) (time.Duration, error) {
	body := make([]byte, size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	next := atomic.Int64{}
	errs := make(chan error, writers)
	begin := time.Now()
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				key := fmt.Sprintf("baseline/%s/team-%d/run-%07d/%012x/run.json", prefix, i%archiveNamespaces, i, i)
				if err := store.Put(ctx, key, bytes.NewReader(body)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("baseline puts: %w", err)
	}
	return time.Since(begin), ctx.Err()
}
