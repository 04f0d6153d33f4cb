package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	arv1 "runservice.dev/runservice/api/archive/v1alpha1"
	"runservice.dev/runservice/internal/archive"
	"runservice.dev/runservice/internal/archive/index"
	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

// archiveBench is issue 9's measure of the archive at scale (-archive): runs archived through the
// archiver's writer into each object store, then, per store, a cold rebuild of the index from the
// store's segments, pages and counts by change group from the index directly and through the
// aggregated API (the kube-apiserver proxying to the manager, a process of its own, serving from
// that index), and a full kubectl scan by pages of 500 with the manager's and kubectl's peak memory.
type archiveBench struct {
	env     *testenv.Env
	runs    int
	stores  []string
	groups  int
	hours   int
	writers int
	samples int    // timed queries of each kind, per store and way
	scan    bool   // scan with kubectl on the first store (a Table list reads no document: one store is enough)
	keep    string // keep the stores and indexes under this directory; "" deletes them
}

// The ways a query goes.
const (
	viaIndex = "index"
	viaAPI   = "API"
)

// archiveStoreResult is what was measured on one store.
type archiveStoreResult struct {
	store             string
	write             writeResult
	baseN             int
	baseBefore        time.Duration
	baseAfter         time.Duration
	merged            int
	compactTook       time.Duration
	segments          int // what the cold rebuild read
	rebuild           time.Duration
	indexBytes        int64
	lat               map[string][]time.Duration // by query kind + "/" + way
	deepPage          int                        // the page measured as the deep one (200, unless no group is that deep)
	deepGroups        int
	scanRows          int
	scanTook          time.Duration
	managerRSS        int64 // before the scan
	managerPeak       int64 // during the scan
	kubectlPeak       int64
	scanCPU           [2]time.Duration // the manager's and kubectl's CPU time during the scan
	managerReadyAfter time.Duration    // from its start to the API answering, over the rebuilt index
}

func (r *archiveStoreResult) add(kind, way string, d time.Duration) {
	r.lat[kind+"/"+way] = append(r.lat[kind+"/"+way], d)
}

// Query kinds.
const (
	qFirst50  = "first page of 50"
	qFirst500 = "first page of 500"
	qDeep     = "deep page of 50"
	qCount    = "count"
)

func (b *archiveBench) run(ctx context.Context, out io.Writer) (err error) {
	pd, err := newProcDir(b.env, b.keep, "runservice-bench-archive-")
	if err != nil {
		return err
	}
	defer func() {
		if b.keep != "" {
			fmt.Fprintf(out, "archive: stores, indexes and logs kept in %s\n", pd.dir)
			return
		}
		pd.finish(&err)
	}()
	tmp, bins, kubeconfig := pd.dir, pd.bins, pd.kubeconfig
	reg, err := b.env.ArchiveAPI(ctx)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	gen, err := newArchiveGen(b.env.Root, b.runs, b.groups, b.hours, now)
	if err != nil {
		return err
	}
	docBytes := 0
	for i := range 100 {
		n, err := gen.docBytes(i * (b.runs / 100))
		if err != nil {
			return err
		}
		docBytes += n
	}
	docBytes /= 100
	b.printShape(out, gen, docBytes)

	var results []*archiveStoreResult
	for i, kind := range b.stores {
		dir := filepath.Join(tmp, kind)
		r, err := b.measureStore(ctx, gen, kind, dir, bins, kubeconfig, reg.Host, reg.Port, reg.CertDir, docBytes, now, b.scan && i == 0)
		if err == nil {
			// Printed before the store is deleted, which takes minutes for a million runs.
			printArchive(out, []*archiveStoreResult{r}, docBytes, b.writers)
			results = append(results, r)
		}
		if b.keep == "" {
			// The store and the index, not the manager's log.
			fmt.Fprintf(os.Stderr, "  ... archive %s: deleting the store\n", kind)
			for _, d := range []string{"bucket", "s3", "index"} {
				if rerr := removeParallel(filepath.Join(dir, d)); rerr != nil && err == nil {
					err = rerr
				}
			}
		}
		if err != nil {
			return fmt.Errorf("%s store: %w", kind, err)
		}
	}
	if len(results) > 1 {
		printArchive(out, results, docBytes, b.writers)
	}
	return nil
}

// removeParallel removes dir, the trees three levels down (runs/<ns>/<run>) at once: one at a
// time, a million runs' directories take long on a busy machine.
func removeParallel(dir string) error {
	subs, _ := filepath.Glob(filepath.Join(dir, "*", "*", "*"))
	sem := make(chan struct{}, 16)
	errs := make(chan error, len(subs))
	for _, s := range subs {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errs <- os.RemoveAll(s)
		}()
	}
	for range cap(sem) {
		sem <- struct{}{}
	}
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return os.RemoveAll(dir)
}

func (b *archiveBench) printShape(out io.Writer, g *archiveGen, docBytes int) {
	sizes := slices.Clone(g.groupSize)
	slices.Sort(sizes)
	nonEmpty := 0
	for _, n := range sizes {
		if n > 0 {
			nonEmpty++
		}
	}
	deep := 0
	for _, n := range sizes {
		if n >= 200*50 {
			deep++
		}
	}
	fmt.Fprintf(out, "archive: %d runs in %d change groups (Zipf s=%.1f: %d with runs, largest %d runs, 10th largest %d, median %d; %d groups of >= 10,000 runs), %d namespaces; documents %.1f KiB on average (config/samples/run_diamond.yaml finished: 4 tasks, their steps, times, log keys and ExecutorTasks); archived over the last %d hours in segments of %d entries, past hours compacted as the archiver's upkeep does\n",
		g.runs, g.groupCount, archiveZipfS, nonEmpty, sizes[len(sizes)-1], sizes[max(0, len(sizes)-10)], sizes[len(sizes)/2], deep, archiveNamespaces, float64(docBytes)/1024, b.hours, archiveSegment)
}

func (b *archiveBench) measureStore(ctx context.Context, gen *archiveGen, kind, dir, bins, kubeconfig, apiHost string, apiPort int, certDir string, docBytes int, now time.Time, scan bool) (res *archiveStoreResult, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var storeURL string
	var procEnv []string
	switch kind {
	case "file":
		storeURL = objectstore.FileURL(filepath.Join(dir, "bucket"))
	case "s3":
		s3, err := testenv.StartS3(b.env.Root, filepath.Join(dir, "s3"))
		if err != nil {
			return nil, err
		}
		defer s3.Stop()
		storeURL, procEnv = s3.URL, s3.Env
		for _, kv := range s3.Env {
			k, v, _ := strings.Cut(kv, "=")
			if err := os.Setenv(k, v); err != nil {
				return nil, err
			}
		}
	default:
		return nil, fmt.Errorf("-archive-stores: %q is neither file nor s3", kind)
	}
	store, err := objectstore.Open(ctx, storeURL)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	res = &archiveStoreResult{store: kind, lat: map[string][]time.Duration{}}

	// Writes: the raw PUT rate before and after the generation, the generation, the compaction.
	res.baseN = min(b.runs, max(2000, b.runs/100))
	fmt.Fprintf(os.Stderr, "  ... archive %s: baseline, %d PUTs of %d bytes\n", kind, res.baseN, docBytes)
	if res.baseBefore, err = putBaseline(ctx, store, "before", res.baseN, docBytes, b.writers); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "  ... archive %s: writing %d runs\n", kind, b.runs)
	if res.write, err = gen.write(ctx, store, b.writers, func(done int) {
		fmt.Fprintf(os.Stderr, "  ... archive %s: %d of %d runs written\n", kind, done, b.runs)
	}); err != nil {
		return nil, err
	}
	if res.baseAfter, err = putBaseline(ctx, store, "after", res.baseN, docBytes, b.writers); err != nil {
		return nil, err
	}
	begin := time.Now()
	if res.merged, err = archive.CompactPast(ctx, store, now, nil); err != nil {
		return nil, err
	}
	res.compactTook = time.Since(begin)

	// The cold rebuild, timed here; the manager then opens the index it left.
	keys, err := store.List(ctx, archive.SegmentPrefix)
	if err != nil {
		return nil, err
	}
	res.segments = len(keys)
	fmt.Fprintf(os.Stderr, "  ... archive %s: cold index rebuild from %d segments\n", kind, res.segments)
	ixDir := filepath.Join(dir, "index")
	ix, err := index.Open(ixDir)
	if err != nil {
		return nil, err
	}
	begin = time.Now()
	if err := (&index.Follower{Store: store, Index: ix}).Sync(ctx); err != nil {
		_ = ix.Close()
		return nil, err
	}
	res.rebuild = time.Since(begin)
	qs, err := b.queriesOf(gen, ix)
	if err == nil {
		err = qs.timeIndex(ix, res)
	}
	if cerr := ix.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if res.indexBytes, err = dirBytes(ixDir); err != nil {
		return nil, err
	}

	// The same queries through the aggregated API, served by the manager from that index.
	fmt.Fprintf(os.Stderr, "  ... archive %s: the manager serving the archive API\n", kind)
	begin = time.Now()
	mgr, err := startManagerProc(b.env, dir, bins, kubeconfig, storeURL, procEnv,
		"--archive-api-host", apiHost, "--archive-api-port", strconv.Itoa(apiPort), "--archive-api-cert-dir", certDir,
		"--archive-index-dir", ixDir)
	if err != nil {
		return nil, err
	}
	defer mgr.stop(15 * time.Second)
	api, err := newArchiveClient(b.env.Config)
	if err != nil {
		return nil, err
	}
	if err := api.wait(ctx, mgr, qs.first[0]); err != nil {
		return nil, err
	}
	res.managerReadyAfter = time.Since(begin)
	if err := qs.timeAPI(ctx, api, res); err != nil {
		return nil, err
	}
	if !scan {
		return res, nil
	}
	fmt.Fprintf(os.Stderr, "  ... archive %s: kubectl get archivedruns -A --chunk-size=500\n", kind)
	if err := b.scanAll(ctx, kubeconfig, mgr, res); err != nil {
		return nil, err
	}
	return res, nil
}

// groupRef is a change group and its namespace.
type groupRef struct {
	ns, group string
	size      int
}

// archiveQueries are the queries timed on a store, the same by index and by API.
type archiveQueries struct {
	first  []groupRef // first pages and counts: half of them groups picked uniformly, half the group of a run picked uniformly
	deep   []groupRef // groups with a deep page
	tokens []string   // deep[i]'s continue token of its deep page
	page   int        // which page the deep one is
}

func (b *archiveBench) queriesOf(g *archiveGen, ix *index.Index) (*archiveQueries, error) {
	r := rand.New(rand.NewPCG(3, 3))
	ref := func(grp int) groupRef {
		return groupRef{ns: groupNamespace(grp), group: groupName(grp), size: g.groupSize[grp]}
	}
	var nonEmpty []int
	for grp, n := range g.groupSize {
		if n > 0 {
			nonEmpty = append(nonEmpty, grp)
		}
	}
	qs := &archiveQueries{page: 200}
	for i := range b.samples {
		if i%2 == 0 {
			qs.first = append(qs.first, ref(nonEmpty[r.IntN(len(nonEmpty))]))
		} else {
			qs.first = append(qs.first, ref(int(g.group[r.IntN(g.runs)])))
		}
	}
	largest := 0
	for grp, n := range g.groupSize {
		if n >= qs.page*50 {
			qs.deep = append(qs.deep, ref(grp))
		}
		if n > g.groupSize[largest] {
			largest = grp
		}
	}
	if len(qs.deep) == 0 { // a small archive: the largest group's last page
		qs.deep = []groupRef{ref(largest)}
		qs.page = max(1, (g.groupSize[largest]-1)/50+1)
	}
	// The deep page's token, by walking the pages before it.
	for _, d := range qs.deep {
		token := ""
		for p := 1; p < qs.page; p++ {
			page, err := ix.List(index.Query{Namespace: d.ns, ChangeGroups: []string{d.group}, Limit: 50, Continue: token})
			if err != nil {
				return nil, err
			}
			if token = page.Continue; token == "" {
				return nil, fmt.Errorf("group %s/%s of %d runs has no page %d", d.ns, d.group, d.size, p+1)
			}
		}
		qs.tokens = append(qs.tokens, token)
	}
	return qs, nil
}

// timeIndex times the queries on the index directly, and checks what they return.
func (qs *archiveQueries) timeIndex(ix *index.Index, res *archiveStoreResult) error {
	list := func(kind string, g groupRef, limit int, token string) error {
		begin := time.Now()
		page, err := ix.List(index.Query{Namespace: g.ns, ChangeGroups: []string{g.group}, Limit: limit, Continue: token})
		res.add(kind, viaIndex, time.Since(begin))
		if err != nil {
			return err
		}
		if token == "" && len(page.Entries) != min(limit, g.size) {
			return fmt.Errorf("index: the first page of %d of group %s/%s of %d runs has %d", limit, g.ns, g.group, g.size, len(page.Entries))
		}
		return nil
	}
	for _, g := range qs.first {
		if err := list(qFirst50, g, 50, ""); err != nil {
			return err
		}
		if err := list(qFirst500, g, 500, ""); err != nil {
			return err
		}
		begin := time.Now()
		counts, err := ix.Count(g.ns, g.group)
		res.add(qCount, viaIndex, time.Since(begin))
		if err != nil {
			return err
		}
		if n := sumCounts(counts); n != int64(g.size) {
			return fmt.Errorf("index: group %s/%s counts %d runs, not %d", g.ns, g.group, n, g.size)
		}
	}
	for i := range qs.first {
		d := i % len(qs.deep)
		if err := list(qDeep, qs.deep[d], 50, qs.tokens[d]); err != nil {
			return err
		}
	}
	res.deepPage, res.deepGroups = qs.page, len(qs.deep)
	return nil
}

func sumCounts(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// timeAPI times the queries through the aggregated API, as kubectl get asks for them (a Table).
// A count is a first page of 1: its remainingItemCount, from the index's counters.
func (qs *archiveQueries) timeAPI(ctx context.Context, api *archiveClient, res *archiveStoreResult) error {
	list := func(kind string, g groupRef, limit int, token string) (archivePage, error) {
		begin := time.Now()
		page, err := api.list(ctx, g.ns, g.group, limit, token)
		res.add(kind, viaAPI, time.Since(begin))
		if err == nil && token == "" && page.rows != min(limit, g.size) {
			err = fmt.Errorf("API: the first page of %d of group %s/%s of %d runs has %d", limit, g.ns, g.group, g.size, page.rows)
		}
		return page, err
	}
	for _, g := range qs.first {
		if _, err := list(qFirst50, g, 50, ""); err != nil {
			return err
		}
		if _, err := list(qFirst500, g, 500, ""); err != nil {
			return err
		}
		page, err := list(qCount, g, 1, "")
		if err != nil {
			return err
		}
		if n := int64(page.rows) + ptrOr(page.remaining); n != int64(g.size) {
			return fmt.Errorf("API: group %s/%s counts %d runs, not %d", g.ns, g.group, n, g.size)
		}
	}
	for i := range qs.first {
		d := i % len(qs.deep)
		if _, err := list(qDeep, qs.deep[d], 50, qs.tokens[d]); err != nil {
			return err
		}
	}
	return nil
}

func ptrOr(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}

// archiveClient lists archived runs through the kube-apiserver, as a Table.
type archiveClient struct {
	hc   *http.Client
	host string
}

func newArchiveClient(cfg *rest.Config) (*archiveClient, error) {
	c := rest.CopyConfig(cfg)
	c.QPS = -1 // no client-side rate limit: the latencies are the server's
	hc, err := rest.HTTPClientFor(c)
	if err != nil {
		return nil, err
	}
	return &archiveClient{hc: hc, host: strings.TrimSuffix(c.Host, "/")}, nil
}

type archivePage struct {
	rows      int
	next      string
	remaining *int64
}

// tableAccept is what kubectl get asks for.
const tableAccept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"

func (c *archiveClient) list(ctx context.Context, ns, group string, limit int, token string) (archivePage, error) {
	q := url.Values{"labelSelector": {arv1.LabelChangeGroupPrefix + group}, "limit": {strconv.Itoa(limit)}}
	if token != "" {
		q.Set("continue", token)
	}
	u := fmt.Sprintf("%s/apis/%s/namespaces/%s/archivedruns?%s", c.host, arv1.GroupVersion, ns, q.Encode())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return archivePage{}, err
	}
	req.Header.Set("Accept", tableAccept)
	resp, err := c.hc.Do(req)
	if err != nil {
		return archivePage{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return archivePage{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return archivePage{}, fmt.Errorf("listing archived runs of %s/%s: %s: %s", ns, group, resp.Status, body)
	}
	var t metav1.Table
	if err := json.Unmarshal(body, &t); err != nil {
		return archivePage{}, fmt.Errorf("decoding a Table of archived runs: %w", err)
	}
	return archivePage{rows: len(t.Rows), next: t.Continue, remaining: t.RemainingItemCount}, nil
}

// wait waits until the API lists g through the kube-apiserver.
func (c *archiveClient) wait(ctx context.Context, mgr *proc, g groupRef) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := c.list(ctx, g.ns, g.group, 1, "")
		if err == nil {
			return nil
		}
		select {
		case <-mgr.exited:
			return fmt.Errorf("the manager exited: %v", mgr.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the archive API does not answer after 2 minutes: %w", err)
		}
	}
}

// scan lists every archived run with kubectl by pages of 500, and measures the manager's and
// kubectl's peak resident set meanwhile.
func (b *archiveBench) scanAll(ctx context.Context, kubeconfig string, mgr *proc, res *archiveStoreResult) error {
	if !mgr.resetPeak() {
		return errors.New("cannot reset the manager's peak RSS (/proc/<pid>/clear_refs needs root)")
	}
	res.managerRSS = mgr.peakRSS()
	cpu := mgr.cpu()
	cmd := exec.CommandContext(ctx, b.env.Kubectl(), "--kubeconfig", kubeconfig, "get", "archivedruns", "-A", "--chunk-size=500", "--no-headers")
	lines := &lineCounter{}
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = lines, &stderr
	begin := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kubectl get archivedruns -A: %w: %s", err, stderr.String())
	}
	res.scanTook = time.Since(begin)
	res.managerPeak = mgr.peakRSS()
	res.scanCPU[0] = mgr.cpu() - cpu
	res.scanCPU[1] = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.kubectlPeak = ru.Maxrss << 10
	}
	res.scanRows = lines.n
	if lines.n != b.runs {
		return fmt.Errorf("kubectl get archivedruns -A --chunk-size=500 listed %d runs, not %d", lines.n, b.runs)
	}
	return nil
}

type lineCounter struct{ n int }

func (l *lineCounter) Write(p []byte) (int, error) {
	for _, c := range p {
		if c == '\n' {
			l.n++
		}
	}
	return len(p), nil
}

// dirBytes is the size of the files under dir.
func dirBytes(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	return n, err
}

func printArchive(out io.Writer, results []*archiveStoreResult, docBytes, writers int) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	row := func(name string, f func(r *archiveStoreResult) string) {
		cells := []string{name}
		for _, r := range results {
			cells = append(cells, f(r))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	rate := func(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }
	base := func(r *archiveStoreResult) float64 { return rate(2*r.baseN, r.baseBefore+r.baseAfter) }
	row("archive", func(r *archiveStoreResult) string { return r.store })
	row(fmt.Sprintf("write: runs/s through the archiver's writer (%d writers)", writers), func(r *archiveStoreResult) string {
		return fmt.Sprintf("%.0f (%d runs, %d segments, in %.1fs)", rate(r.write.runs, r.write.elapsed), r.write.runs, r.write.segments, r.write.elapsed.Seconds())
	})
	row(fmt.Sprintf("baseline: raw PUTs/s of %d-byte objects, before / after", docBytes), func(r *archiveStoreResult) string {
		return fmt.Sprintf("%.0f (%.0f / %.0f)", base(r), rate(r.baseN, r.baseBefore), rate(r.baseN, r.baseAfter))
	})
	row("ratio: write / baseline", func(r *archiveStoreResult) string {
		return fmt.Sprintf("%.2f", rate(r.write.runs, r.write.elapsed)/base(r))
	})
	row("compaction of the past hours", func(r *archiveStoreResult) string {
		return fmt.Sprintf("%d segments merged in %.1fs", r.merged, r.compactTook.Seconds())
	})
	row("cold index rebuild", func(r *archiveStoreResult) string {
		return fmt.Sprintf("%.1fs (%d segments)", r.rebuild.Seconds(), r.segments)
	})
	row("index size on disk", func(r *archiveStoreResult) string {
		return fmt.Sprintf("%s (%.0f bytes/run)", mib(r.indexBytes), float64(r.indexBytes)/float64(r.write.runs))
	})
	for _, kind := range []string{qFirst50, qFirst500, qDeep, qCount} {
		for _, way := range []string{viaIndex, viaAPI} {
			name := kind + " by group p50 / p99, " + way
			if kind == qDeep {
				name = fmt.Sprintf("page %d of 50 by group p50 / p99, %s", results[0].deepPage, way)
			}
			if kind == qCount && way == viaAPI {
				name = "count by group p50 / p99, API (a page of 1: remainingItemCount)"
			}
			row(name, func(r *archiveStoreResult) string {
				l := sortedCopy(r.lat[kind+"/"+way])
				return fmt.Sprintf("%s / %s", ms(percentile(l, 0.5)), ms(percentile(l, 0.99)))
			})
		}
	}
	row("manager: start to API answering (index rebuilt)", func(r *archiveStoreResult) string {
		return fmt.Sprintf("%.1fs", r.managerReadyAfter.Seconds())
	})
	row("kubectl get archivedruns -A --chunk-size=500", func(r *archiveStoreResult) string {
		if r.scanRows == 0 {
			return "not scanned (-archive-scan, first store only)"
		}
		return fmt.Sprintf("%d rows in %.1fs (%.0f rows/s)", r.scanRows, r.scanTook.Seconds(), rate(r.scanRows, r.scanTook))
	})
	row("  CPU time: manager / kubectl", func(r *archiveStoreResult) string {
		if r.scanRows == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1fs / %.1fs", r.scanCPU[0].Seconds(), r.scanCPU[1].Seconds())
	})
	row("  peak RSS: manager (before the scan) / kubectl", func(r *archiveStoreResult) string {
		if r.scanRows == 0 {
			return "-"
		}
		return fmt.Sprintf("%s (%s) / %s", mib(r.managerPeak), mib(r.managerRSS), mib(r.kubectlPeak))
	})
	_ = tw.Flush()
	if len(results) > 0 {
		r := results[0]
		fmt.Fprintf(out, "archive queries: %d first pages and counts per way (half of uniformly picked groups, half the groups of uniformly picked runs), %d deep pages over the %d groups that have page %d\n",
			len(r.lat[qCount+"/"+viaIndex]), len(r.lat[qDeep+"/"+viaIndex]), r.deepGroups, r.deepPage)
	}
	for _, r := range results {
		p99 := func(kind string) time.Duration { return percentile(sortedCopy(r.lat[kind+"/"+viaAPI]), 0.99) }
		verdict := metOrMissed
		deep := fmt.Sprintf("page %d", r.deepPage)
		if r.deepPage != 200 {
			deep += " (no group has 200 pages)"
		}
		rebuilt := verdict(r.rebuild < 2*time.Minute)
		if r.write.runs < 1_000_000 {
			rebuilt = "not measured (fewer runs)"
		}
		fmt.Fprintf(out, "archive targets (%s, through the API): first page p99 < 100ms: %s (%s of 50, %s of 500); 200th page p99 < 100ms: %s (%s, %s); count < 1s: %s (p99 %s); cold rebuild of 1M < 2min: %s (%.1fs for %d runs)\n",
			r.store, verdict(max(p99(qFirst50), p99(qFirst500)) < 100*time.Millisecond), ms(p99(qFirst50)), ms(p99(qFirst500)),
			verdict(p99(qDeep) < 100*time.Millisecond), ms(p99(qDeep)), deep,
			verdict(p99(qCount) < time.Second), ms(p99(qCount)),
			rebuilt, r.rebuild.Seconds(), r.write.runs)
	}
}
