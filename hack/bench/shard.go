package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/shard"
	"runservice.dev/runservice/internal/testenv"
	"runservice.dev/runservice/pkg/client/clientset/versioned"
)

// shardBench is issue 12's measurement: the cluster scenario's stack (kube-scheduler, kwok nodes,
// three Kubernetes-driver executors as processes) under the same load, runs at once, for each
// count of manager replicas. The replicas are processes of the manager binary with its default
// --shards=auto, each with its own identity (the shard label of its runs), metrics port and user
// agent (the identity is in it, so the audit log tells their writes apart). The first one started
// serves the webhook (the control plane calls one address) and is the elected leader (the sharder,
// executor liveness); the others serve neither. Each count starts replicas of its own, once the
// previous count's runs are deleted: runs left labelled with members gone would be moved to the
// new ring by the sharder, work this measurement is not about.
type shardBench struct {
	env        *testenv.Env
	kube       kubernetes.Interface
	audit      auditLog
	suffix     string
	counts     []int
	runs       int
	submitters int
}

// shardReplica is one manager replica of a count, and what was read from its metrics.
type shardReplica struct {
	member  string
	proc    *proc
	metrics string // its metrics URL
	roles   string // "webhook, leader" for the first

	// idleRSS and idleHeap are its resident set and Go heap in use before the phase, its caches
	// synced: what a replica costs before it holds any run.
	idleRSS, idleHeap int64

	mu                   sync.Mutex
	peakRuns, peakTasks  int // the most owned objects its cache held during the phase
	peakHeap, lastHeap   int64
	endRuns, endTasks    int
	acknowledged, moveIn int // over the phase: handovers it acknowledged; runs moved to it (its sharder's count, on the leader)
}

// shardCount is what one count of replicas measured.
type shardCount struct {
	shards   int
	phase    *clusterPhase
	replicas []*shardReplica
	owners   *runOwners
}

func (b *shardBench) run(ctx context.Context, out io.Writer) (err error) {
	pd, err := newProcDir(b.env, "", "runservice-bench-shards-")
	if err != nil {
		return err
	}
	defer pd.finish(&err)
	// A pool of nodes of its own: the cluster scenario's, if it ran before, are still registered.
	st, err := startClusterStack(ctx, b.env, b.kube, pd, "bench-shards-"+b.suffix, "kwok-shards")
	if err != nil {
		return err
	}
	defer st.stop()
	ring, err := newNamespace(ctx, b.kube, "bench-ring-"+b.suffix)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nsharding scenario (issue 12): the cluster scenario's stack (kube-scheduler, %d kwok nodes, %d Kubernetes-driver executors as processes, runs of %s); %d runs at once for each count of manager replicas %v, each replica a process with --shards=auto, its own identity, metrics port and user agent; the first serves the webhook and is the elected leader\n",
		clusterNodes, clusterExecutors, runShape, b.runs, b.counts)
	fmt.Fprintf(out, "load average before: %s\n", loadAverage())

	var counts []*shardCount
	for _, n := range b.counts {
		fmt.Fprintf(os.Stderr, "  ... shards: %d replica(s), %d runs at once\n", n, b.runs)
		c, err := b.count(ctx, st, ring, n)
		if err != nil {
			return fmt.Errorf("%d replica(s): %w", n, err)
		}
		counts = append(counts, c)
		printShardCount(out, c)
	}
	fmt.Fprintf(out, "load average after: %s\n", loadAverage())
	printShardSummary(out, counts)
	return nil
}

// count starts n replicas, measures one phase of runs at once, deletes the runs and stops the
// replicas.
func (b *shardBench) count(ctx context.Context, st *clusterStack, ring string, n int) (_ *shardCount, err error) {
	c := &shardCount{shards: n, owners: &runOwners{labels: map[string][]string{}}}
	defer func() {
		serr := stopReplicas(ctx, b.kube, ring, c.replicas)
		if err == nil {
			err = serr
		}
	}()
	for i := range n {
		r, err := b.startReplica(st, ring, fmt.Sprintf("replica-%d-of-%d", i+1, n), i == 0)
		if err != nil {
			return nil, err
		}
		c.replicas = append(c.replicas, r)
		if i == 0 {
			// The first is the leader, before the others start: the same replica has the same
			// roles at every count.
			if err := waitLeader(ctx, b.kube, ring, r.proc); err != nil {
				return nil, err
			}
		}
	}
	if !slices.ContainsFunc(st.set.procs, func(p *proc) bool { return p.component == "executors" }) {
		if err := st.startExecutors(ctx, false); err != nil {
			return nil, err
		}
	}
	members := make([]string, n)
	for i, r := range c.replicas {
		members[i] = r.member
	}
	if err := waitRing(ctx, st.sub, st.ns, shard.NewRing(members...)); err != nil {
		return nil, err
	}
	for _, r := range c.replicas {
		if err := r.waitSynced(ctx); err != nil {
			return nil, err
		}
	}

	// Runs an earlier scenario left (the cluster scenario's, of an unsharded manager: unlabelled) are
	// this ring's too, assigned by the sharder: the phase starts with none in etcd. They are
	// deleted once the sharder has placed them: a run deleted while the sharder moves it can be
	// left labelled with the member gone (the move's patch conflicts), archived by nobody until the
	// sharder's next full scan.
	if err := waitPlaced(ctx, st.sub, members); err != nil {
		return nil, err
	}
	if err := deleteRuns(ctx, st.sub); err != nil {
		return nil, err
	}
	set := &procSet{procs: slices.Clone(st.set.procs)}
	for _, r := range c.replicas {
		set.procs = append(set.procs, r.proc)
		if err := r.sample(ctx, true); err != nil {
			return nil, err
		}
		r.idleRSS, r.idleHeap = r.proc.rss(), r.lastHeap
		r.peakRuns, r.peakTasks, r.peakHeap = 0, 0, 0
		r.acknowledged, r.moveIn = -r.acknowledged, -r.moveIn // counted from here
	}
	sampleCtx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan error, 1)
	go func() { sampled <- sampleReplicas(sampleCtx, c.replicas) }()
	cb := &clusterBench{env: b.env, kube: b.kube, audit: b.audit, submitters: b.submitters, seen: c.owners.see}
	prefix := fmt.Sprintf("shards%d-", n)
	c.phase, err = cb.phase(ctx, set, st.sub, st.ns, fmt.Sprintf("%d replica(s), %d runs at once", n, b.runs), prefix, b.runs, 0)
	stopSampling()
	if serr := <-sampled; err == nil && serr != nil {
		err = serr
	}
	if err != nil {
		return nil, err
	}
	for _, r := range c.replicas {
		if err := r.sample(ctx, true); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(os.Stderr, "  ... shards: deleting the %d runs (their owners archive them)\n", b.runs)
	return c, deleteRuns(ctx, st.sub)
}

// startReplica starts a manager replica named member, a member of the ring of namespace ring;
// only the first serves the webhook.
func (b *shardBench) startReplica(st *clusterStack, ring, member string, first bool) (*shardReplica, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	args := []string{"--shards", "auto", "--shard-identity", member, "--namespace", ring,
		"--leader-elect", "--leader-election-namespace", ring,
		"--metrics-bind-address", "127.0.0.1:" + strconv.Itoa(port)}
	roles := "webhook, leader"
	if !first {
		args = append(args, "--webhook-port", "0")
		roles = ""
	}
	// One object store for all: the replicas of a Deployment share the bucket.
	p, err := startNamedManagerProc(b.env, st.pd.dir, member, st.pd.bins, st.pd.kubeconfig,
		"file://"+st.pd.dir+"/store", nil, args...)
	if err != nil {
		return nil, err
	}
	return &shardReplica{member: member, proc: p, roles: roles, metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", port)}, nil
}

// leaderLease is controller-runtime's leader election Lease of the manager (its LeaderElectionID).
const leaderLease = "runservice-manager.runservice.dev"

// waitLeader waits until the leader election Lease in ns has a holder (p, the only replica yet).
func waitLeader(ctx context.Context, kube kubernetes.Interface, ns string, p *proc) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		l, err := kube.CoordinationV1().Leases(ns).Get(ctx, leaderLease, metav1.GetOptions{})
		if err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited while starting: %v", p.name, p.err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to be elected leader: %w", p.name, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitRing waits until the webhook labels runs as the ring of every replica does: the webhook's
// replica sees every member's Lease, so no run submitted from now on is labelled for a smaller
// ring and moved later. Dry runs of a few names, whose owners cover the ring, create nothing.
func waitRing(ctx context.Context, c versioned.Interface, ns string, ring *shard.Ring) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var last string
	for {
		ok := true
		for i := range 16 {
			name := fmt.Sprintf("ring-probe-%d", i)
			probe := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: rsv1.RunSpec{Tasks: benchTasks()}}
			got, err := c.RunserviceV1alpha1().Runs(ns).Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				ok, last = false, err.Error()
				break
			}
			if want := ring.Owner(shard.Key(ns, name)); got.Labels[rsv1.LabelShard] != want {
				ok, last = false, fmt.Sprintf("%s labelled %q, its owner is %s", name, got.Labels[rsv1.LabelShard], want)
				break
			}
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the webhook to label runs for the ring of %v (last: %s): %w", ring.Members(), last, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitSynced waits until the replica's metrics show what its cache owns: its caches have synced.
func (r *shardReplica) waitSynced(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		err := r.sample(ctx, false)
		if err == nil {
			return nil
		}
		select {
		case <-r.proc.exited:
			return fmt.Errorf("%s exited while starting: %v", r.member, r.proc.err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s's caches (last: %v): %w", r.member, err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// sampleReplicas reads the replicas' metrics every half second until ctx ends, for the peaks.
func sampleReplicas(ctx context.Context, replicas []*shardReplica) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
		for _, r := range replicas {
			if err := r.sample(ctx, false); err != nil && ctx.Err() == nil {
				return err
			}
		}
	}
}

// sample reads the replica's owned Runs and ExecutorTasks (its cache's, through
// runservice_shard_runs and runservice_shard_executortasks) into the peaks, and at the end the
// handover counters too.
func (r *shardReplica) sample(ctx context.Context, end bool) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	fams, err := scrapeFamilies(ctx, r.metrics)
	if err != nil {
		return err
	}
	runs, okR := labelled(fams, "runservice_shard_runs", map[string]string{"shard": r.member})
	tasks, okT := labelled(fams, "runservice_shard_executortasks", map[string]string{"shard": r.member})
	heap, okH := labelled(fams, "go_memstats_heap_inuse_bytes", nil)
	if !okR || !okT || !okH {
		return fmt.Errorf("%s's metrics lack runservice_shard_runs or runservice_shard_executortasks of shard %s, or go_memstats_heap_inuse_bytes", r.member, r.member)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.peakRuns, r.peakTasks, r.peakHeap = max(r.peakRuns, int(runs)), max(r.peakTasks, int(tasks)), max(r.peakHeap, int64(heap))
	r.lastHeap = int64(heap)
	if end {
		// Counters: the first call (before the phase) stored their opposites.
		r.endRuns, r.endTasks = int(runs), int(tasks)
		ack, _ := labelled(fams, "runservice_shard_handovers_acknowledged_total", nil)
		in, _ := labelled(fams, "runservice_shard_reassignments_total", map[string]string{"direction": "in"})
		r.acknowledged, r.moveIn = r.acknowledged+int(ack), r.moveIn+int(in)
	}
	return nil
}

// labelled sums the values of family name's metrics that have the labels want, and reports
// whether any had.
func labelled(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	sum, found := 0.0, false
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && have[k] == v
		}
		if match {
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
			found = true
		}
	}
	return sum, found
}

// runOwners is what the bench's watch saw of the runs' shard labels.
type runOwners struct {
	labels  map[string][]string // run -> the distinct shard labels it had, in order
	drained map[string]bool     // runs seen with the drain label
}

// see is the tracker's hook (called under its lock, so one at a time).
func (o *runOwners) see(run *rsv1.Run) {
	if _, ok := run.Labels[rsv1.LabelShardDrain]; ok {
		if o.drained == nil {
			o.drained = map[string]bool{}
		}
		o.drained[run.Name] = true
	}
	l := run.Labels[rsv1.LabelShard]
	if seen := o.labels[run.Name]; l != "" && (len(seen) == 0 || seen[len(seen)-1] != l) {
		o.labels[run.Name] = append(seen, l)
	}
}

// share is the runs by their last shard label; moved, those that had more than one or were
// drained; unlabelled, those never seen with one.
func (o *runOwners) share(runs int) (share map[string]int, moved, unlabelled int) {
	share = map[string]int{}
	for run, ls := range o.labels {
		share[ls[len(ls)-1]]++
		if len(ls) > 1 || o.drained[run] {
			moved++
		}
	}
	return share, moved, runs - len(o.labels)
}

// waitPlaced waits until every run of the cluster is labelled with one of members and none is
// being drained.
func waitPlaced(ctx context.Context, c versioned.Interface, members []string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		runs, err := c.RunserviceV1alpha1().Runs("").List(ctx, metav1.ListOptions{})
		var misplaced []string
		if err == nil {
			for _, r := range runs.Items {
				_, draining := r.Labels[rsv1.LabelShardDrain]
				if draining || !slices.Contains(members, r.Labels[rsv1.LabelShard]) {
					misplaced = append(misplaced, r.Namespace+"/"+r.Name+" ("+r.Labels[rsv1.LabelShard]+")")
				}
			}
			if len(misplaced) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the sharder to place every run in the ring of %v (%d not: %s): %w",
				members, len(misplaced), strings.Join(misplaced[:min(len(misplaced), 5)], ", "), ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// deleteRuns deletes every run of the cluster and waits until they and their ExecutorTasks are
// gone: each replica's archiver archives its own before their finalizers let them go.
func deleteRuns(ctx context.Context, c versioned.Interface) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	all, err := c.RunserviceV1alpha1().Runs("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing the runs: %w", err)
	}
	namespaces := map[string]bool{}
	for _, r := range all.Items {
		namespaces[r.Namespace] = true
	}
	for ns := range namespaces {
		if err := c.RunserviceV1alpha1().Runs(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			return fmt.Errorf("deleting the runs of %s: %w", ns, err)
		}
	}
	one := metav1.ListOptions{Limit: 1}
	for {
		runs, err := c.RunserviceV1alpha1().Runs("").List(ctx, one)
		if err == nil && len(runs.Items) == 0 {
			tasks, err := c.RunserviceV1alpha1().ExecutorTasks("").List(ctx, one)
			if err == nil && len(tasks.Items) == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the deleted runs and their ExecutorTasks to be gone: %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// stopReplicas stops the replicas, the first (the leader) last, and waits until their membership
// Leases are gone from the ring (released on a clean stop) and the leader's election Lease is
// free, so that the next count starts on an empty ring.
func stopReplicas(ctx context.Context, kube kubernetes.Interface, ring string, replicas []*shardReplica) error {
	for i := len(replicas) - 1; i >= 0; i-- {
		replicas[i].proc.stop(30 * time.Second)
	}
	if len(replicas) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		leases, err := kube.CoordinationV1().Leases(ring).List(ctx, metav1.ListOptions{})
		held := 0
		if err == nil {
			for _, l := range leases.Items {
				// Released (a clean stop), or expired (a replica killed after the grace).
				if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" && l.Spec.RenewTime != nil && l.Spec.LeaseDurationSeconds != nil &&
					time.Since(l.Spec.RenewTime.Time) < time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second {
					held++
				}
			}
			if held == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the stopped replicas' Leases to be released (%d held): %w", held, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// loadAverage is the machine's load average (1, 5 and 15 minutes): what else ran beside the bench.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// perTaskMs is d per task, in milliseconds.
func perTaskMs(d time.Duration, tasks int) float64 {
	return float64(d.Microseconds()) / 1000 / float64(max(tasks, 1))
}

func printShardCount(out io.Writer, c *shardCount) {
	p := c.phase
	tasks := p.tasks()
	secs := p.elapsed.Seconds()
	share, moved, unlabelled := c.owners.share(p.runs)
	reassigned := 0
	for _, r := range c.replicas {
		reassigned += r.moveIn
	}
	fmt.Fprintf(out, "%s: %d runs (%d tasks) in %.1fs = %.0f runs/min; create->finish p50 %.2fs p99 %.2fs; the last create returned at %.1fs\n",
		p.name, p.runs, tasks, secs, float64(p.runs)/secs*60, percentile(p.latency, 0.5).Seconds(), percentile(p.latency, 0.99).Seconds(), p.submittedIn.Seconds())
	fmt.Fprintf(out, "  managers (all replicas): CPU %.2f ms/task, writes %.2f/task (%d conflicts); runs that changed owner %d (expected 0 at a fixed membership; the sharder's reassignments %d), runs never labelled %d\n",
		perTaskMs(p.usage.cpu["manager"], tasks), float64(p.writes.total("manager"))/float64(tasks), p.writes.conflicts["manager"], moved, reassigned, unlabelled)
	fmt.Fprintf(out, "  managers' writes per task: %s\n", p.writes.breakdown("manager", tasks))
	fmt.Fprintf(out, "  CPU per task, the rest: executors %.2f ms, apiserver %.2f ms, etcd %.2f ms, scheduler %.2f ms, kwok %.2f ms\n",
		perTaskMs(p.usage.cpu["executors"], tasks), perTaskMs(p.usage.cpu["apiserver"], tasks), perTaskMs(p.usage.cpu["etcd"], tasks),
		perTaskMs(p.usage.cpu["scheduler"], tasks), perTaskMs(p.usage.cpu["kwok"], tasks))
	for _, r := range c.replicas {
		own := share[r.member]
		cpu := p.usage.procCPU[r.proc]
		roles := ""
		if r.roles != "" {
			roles = " (" + r.roles + ")"
		}
		fmt.Fprintf(out, "  %s%s: %d runs = %.0f%% of them; cache peak %d runs + %d ExecutorTasks (at the end %d + %d); peak RSS %s (%s before the phase), peak Go heap in use %s (%s before); CPU %.1fs = %.2f ms per task of the phase, %.2f ms per task it owned; writes %.2f per task of the phase; handovers acknowledged %d\n",
			r.member, roles, own, 100*float64(own)/float64(p.runs), r.peakRuns, r.peakTasks, r.endRuns, r.endTasks,
			mib(p.usage.procPeak[r.proc]), mib(r.idleRSS), mib(r.peakHeap), mib(r.idleHeap),
			cpu.Seconds(), perTaskMs(cpu, tasks), perTaskMs(cpu, 3*own), float64(p.writes.shardWrites[r.member])/float64(tasks), r.acknowledged)
	}
}

// shardFigures are a count's per-replica figures: the busiest replica's and the mean.
type shardFigures struct {
	// max, mean: cached objects at peak; peak RSS, its growth over the phase and peak Go heap in
	// use (MiB); CPU ms per task of the phase.
	objects, rss, grown, heap, cpu [2]float64
	shareMax                       float64 // the largest share over the mean share
}

func figures(c *shardCount) shardFigures {
	var f shardFigures
	share, _, _ := c.owners.share(c.phase.runs)
	n := float64(len(c.replicas))
	for _, r := range c.replicas {
		obj := float64(r.peakRuns + r.peakTasks)
		rss := mibf(c.phase.usage.procPeak[r.proc])
		grown := mibf(c.phase.usage.procPeak[r.proc] - r.idleRSS)
		heap := mibf(r.peakHeap)
		cpu := perTaskMs(c.phase.usage.procCPU[r.proc], c.phase.tasks())
		f.objects = [2]float64{max(f.objects[0], obj), f.objects[1] + obj/n}
		f.rss = [2]float64{max(f.rss[0], rss), f.rss[1] + rss/n}
		f.grown = [2]float64{max(f.grown[0], grown), f.grown[1] + grown/n}
		f.heap = [2]float64{max(f.heap[0], heap), f.heap[1] + heap/n}
		f.cpu = [2]float64{max(f.cpu[0], cpu), f.cpu[1] + cpu/n}
		f.shareMax = max(f.shareMax, float64(share[r.member])/(float64(c.phase.runs)/n))
	}
	return f
}

// printShardSummary prints the counts side by side, each replica's figures against the first
// count's (one replica: the baseline), and a projection of the manager's capacity to one node per
// replica.
func printShardSummary(out io.Writer, counts []*shardCount) {
	if len(counts) == 0 {
		return
	}
	base := figures(counts[0])
	fmt.Fprintf(out, "sharding summary (per replica: the busiest / the mean, and the busiest against %d replica(s) of the same run):\n", counts[0].shards)
	fmt.Fprintln(out, "  replicas | runs/min | p50 / p99 | managers' CPU ms/task, writes/task | cache objects per replica | peak RSS per replica (MiB) | RSS growth over the phase (MiB) | peak Go heap (MiB) | CPU ms/task per replica | largest share / mean | owner changes")
	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", a/b)
	}
	for _, c := range counts {
		p, f := c.phase, figures(c)
		_, moved, _ := c.owners.share(p.runs)
		fmt.Fprintf(out, "  %8d | %8.0f | %.1fs / %.1fs | %.2f, %.2f | %.0f / %.0f (%s) | %.0f / %.0f (%s) | %.0f / %.0f (%s) | %.0f / %.0f (%s) | %.2f / %.2f (%s) | %.2f | %d\n",
			c.shards, float64(p.runs)/p.elapsed.Seconds()*60, percentile(p.latency, 0.5).Seconds(), percentile(p.latency, 0.99).Seconds(),
			perTaskMs(p.usage.cpu["manager"], p.tasks()), float64(p.writes.total("manager"))/float64(p.tasks()),
			f.objects[0], f.objects[1], ratio(f.objects[0], base.objects[0]), f.rss[0], f.rss[1], ratio(f.rss[0], base.rss[0]),
			f.grown[0], f.grown[1], ratio(f.grown[0], base.grown[0]), f.heap[0], f.heap[1], ratio(f.heap[0], base.heap[0]),
			f.cpu[0], f.cpu[1], ratio(f.cpu[0], base.cpu[0]), f.shareMax, moved)
	}
	// The projection: with a node (a core) per replica, the manager tier's CPU limit is the busiest
	// replica's CPU per task; the apiserver and etcd are not projected (they do not shard).
	last := counts[len(counts)-1]
	lf := figures(last)
	if last.shards > 1 && lf.cpu[0] > 0 && base.cpu[0] > 0 {
		fmt.Fprintf(out, "  projection, one core per replica: the busiest of %d replicas needs %.2f ms of CPU per task (one replica %.2f): the managers' CPU would carry %.0f tasks/s instead of %.0f (%.1fx), before the apiserver and etcd, which do not shard, limit it\n",
			last.shards, lf.cpu[0], base.cpu[0], 1000/lf.cpu[0], 1000/base.cpu[0], base.cpu[0]/lf.cpu[0])
	}
	var missing []string
	for _, c := range counts {
		if _, moved, unlabelled := c.owners.share(c.phase.runs); moved > 0 || unlabelled > 0 {
			missing = append(missing, fmt.Sprintf("%d replicas: %d moved, %d unlabelled", c.shards, moved, unlabelled))
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(out, "  runs moved or unlabelled at a fixed membership: %s\n", strings.Join(missing, "; "))
	}
}
