package toolbox

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"runservice.dev/runservice/api/v1alpha1"
)

// recorder is the toolbox's stdout in a test: it keeps what was written and when.
type recorder struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes []timedWrite
}

type timedWrite struct {
	at   time.Time
	data string
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.writes = append(r.writes, timedWrite{time.Now(), string(p)})
	return r.buf.Write(p)
}

func (r *recorder) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

type streamed struct {
	dir     string // the toolbox's shared directory
	out     *recorder
	code    int
	results []*StepResult // from the termination message
}

// runStreaming runs tf as `toolbox run --stream --task FILE --termination-log FILE` would: the
// task is not in the shared directory and nobody creates the start file.
func runStreaming(t *testing.T, tf TaskFile) streamed {
	t.Helper()
	files := t.TempDir()
	taskPath := filepath.Join(files, "task.json")
	data, err := json.Marshal(tf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(taskPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	termPath := filepath.Join(files, "termination-log")
	s := streamed{dir: t.TempDir(), out: &recorder{}}
	ctx, cancel := context30s(t)
	defer cancel()
	s.code = Run(ctx, s.dir, WithTaskFile(taskPath), WithStream(s.out), WithTerminationLog(termPath))
	msg, err := os.ReadFile(termPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(msg) > MaxTerminationMessage {
		t.Errorf("termination message of %d bytes", len(msg))
	}
	if s.results, err = ParseTermination(string(msg)); err != nil {
		t.Fatalf("%v: %s", err, msg)
	}
	return s
}

func context30s(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), 30*time.Second)
}

// reported is what a directory holds that the executor reads: step logs and results, archives.
// .tmp files count too: none may be left.
func reported(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := make(map[string]string)
	for _, sub := range []string{StepsDir, ArchivesDir} {
		entries, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".sh") {
				continue // for the shell only
			}
			data, err := os.ReadFile(filepath.Join(dir, sub, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			files[sub+"/"+e.Name()] = string(data)
		}
	}
	return files
}

// demuxSteps is the number of steps of the tasks whose logs demux reads.
const demuxSteps = 8

func demux(t *testing.T, log []byte, dir string) map[string]string {
	t.Helper()
	if err := Demux(bytes.NewReader(log), dir, demuxSteps, Limits{}); err != nil {
		t.Fatal(err)
	}
	return reported(t, dir)
}

func sameFiles(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	for name, w := range want {
		g, ok := got[name]
		switch {
		case !ok:
			t.Errorf("%s: %s missing", what, name)
		case g != w:
			t.Errorf("%s: %s differs: got %d bytes %.200q, want %d bytes %.200q", what, name, len(g), g, len(w), w)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: unexpected %s", what, name)
		}
	}
}

type parsedFrame struct {
	at time.Time
	f  frame
}

// frames decodes the stream, failing on any line that is not a frame.
func frames(t *testing.T, rec *recorder) []parsedFrame {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var out []parsedFrame
	for _, w := range rec.writes {
		for line := range strings.Lines(w.data) {
			payload, ok := strings.CutPrefix(line, FramePrefix)
			if !ok || !strings.HasSuffix(payload, "\n") {
				t.Fatalf("not a whole frame on stdout: %.200q", line)
			}
			var f frame
			if err := json.Unmarshal([]byte(payload), &f); err != nil || f.I == nil {
				t.Fatalf("bad frame %.200q: %v", line, err)
			}
			out = append(out, parsedFrame{w.at, f})
		}
	}
	return out
}

func TestStreamDemux(t *testing.T) {
	t.Parallel()
	steps := []Step{
		run("big log", `echo hello; echo err >&2; head -c 30000 /dev/zero | tr '\0' x; echo`),
		run("slow", "echo first; sleep 1; echo second"),
		run("files", "mkdir out && echo a > out/a && head -c 60000 /dev/urandom > out/big"),
		{Name: "save", Kind: StepKindSaveToWorkspace, Contents: []v1alpha1.SaveContent{{SourceDir: "out", DestDir: ".", Paths: []string{"*"}}}},
		run("quiet", "true"),
		run("fails", "echo failing; exit 3"),
		run("never", "echo never"),
	}
	s := runStreaming(t, TaskFile{WorkingDir: t.TempDir(), Steps: steps})
	if s.code != ExitFailed {
		t.Fatalf("exit code %d, want %d", s.code, ExitFailed)
	}
	// The shared directory has what it would have without --stream.
	checkSteps(t, s.dir, len(steps), []wantStep{
		{phase: v1alpha1.StepPhaseSuccess, log: "hello\nerr\nxxx"},
		{phase: v1alpha1.StepPhaseSuccess, log: "first\nsecond\n"},
		{phase: v1alpha1.StepPhaseSuccess},
		{phase: v1alpha1.StepPhaseSuccess, log: "saved 2 entries"},
		{phase: v1alpha1.StepPhaseSuccess},
		{phase: v1alpha1.StepPhaseFailed, exitCode: code(3), log: "failing"},
	})
	want := reported(t, s.dir)
	if len(want[ArchivesDir+"/3.tar"]) < 60000 || len(want[StepsDir+"/0.log"]) < 30000 {
		t.Fatalf("the archive and the log should take several frames: %d, %d bytes",
			len(want[ArchivesDir+"/3.tar"]), len(want[StepsDir+"/0.log"]))
	}

	// Every line is a frame, small enough for the container runtime to keep whole.
	frs := frames(t, s.out)
	for _, line := range strings.Split(string(s.out.bytes()), "\n") {
		if len(line) >= 16<<10 {
			t.Errorf("frame of %d bytes", len(line))
		}
	}

	out := t.TempDir()
	sameFiles(t, "demuxed", demux(t, s.out.bytes(), out), want)

	// Again from the start into the same directory, as after an executor restart: nothing is
	// written twice, and an archive left half-written is written anew.
	if err := os.WriteFile(ArchivePath(out, 3)+".tmp", []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	sameFiles(t, "demuxed twice", demux(t, s.out.bytes(), out), want)

	// The termination message has the same results.
	if len(s.results) != len(steps) {
		t.Fatalf("termination message has %d steps, want %d", len(s.results), len(steps))
	}
	for i, got := range s.results {
		wantRes, err := ReadResult(s.dir, i)
		if i == len(steps)-1 {
			if got != nil || err == nil {
				t.Errorf("step %d: termination %+v, file %+v, want neither", i, got, wantRes)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, wantRes) {
			t.Errorf("step %d: termination %+v, file %+v", i, got, wantRes)
		}
	}

	// A step's output is streamed while it runs, not when it ends.
	var firstAt, endAt time.Time
	for _, pf := range frs {
		switch {
		case *pf.f.I != 1:
		case pf.f.T == FrameLog && strings.Contains(string(pf.f.D), "first") && firstAt.IsZero():
			firstAt = pf.at
		case pf.f.T == FrameResult && !strings.Contains(string(pf.f.R), `"Running"`):
			endAt = pf.at
		}
	}
	if firstAt.IsZero() || endAt.IsZero() || endAt.Sub(firstAt) < 500*time.Millisecond {
		t.Errorf("first output of step 1 streamed at %v, its end at %v", firstAt, endAt)
	}

	// When a step's final result arrives, so has all its log.
	logs, ended := make(map[int]string), make(map[int]bool)
	for _, pf := range frs {
		i := *pf.f.I
		switch {
		case pf.f.T == FrameLog && !ended[i]:
			logs[i] += string(pf.f.D)
		case pf.f.T == FrameResult && !strings.Contains(string(pf.f.R), `"Running"`):
			ended[i] = true
			if w := want[StepsDir+"/"+strconv.Itoa(i)+".log"]; logs[i] != w {
				t.Errorf("step %d ended with %d bytes of log streamed, want %d", i, len(logs[i]), len(w))
			}
		}
	}

	// The archive comes before the final result of its step.
	var archiveEnd, saveEnd int
	for j, pf := range frs {
		if *pf.f.I == 3 && pf.f.T == FrameArchiveEnd {
			archiveEnd = j
		}
		if *pf.f.I == 3 && pf.f.T == FrameResult {
			saveEnd = j
		}
	}
	if archiveEnd == 0 || archiveEnd > saveEnd {
		t.Errorf("archive end at frame %d, final result at %d", archiveEnd, saveEnd)
	}
}

// TestDemuxResumesAfterRotation: the executor's copy of a step log is appended to, never truncated.
// A follow of the pod's log that is cut mid-task is resumed from what the kubelet still has; after
// the kubelet rotated the container's log that is only a tail, and what was mirrored from the
// lines rotated away must stay, with nothing written twice.
func TestDemuxResumesAfterRotation(t *testing.T) {
	t.Parallel()
	// Output over a second: step 0's log takes several frames (one per streamInterval).
	steps := []Step{
		run("slow", `for i in $(seq 1 20); do echo "line $i of the first step, padded to make the frames larger than the notice of lost bytes....."; sleep 0.05; done`),
		run("more", `echo second step`),
	}
	s := runStreaming(t, TaskFile{WorkingDir: t.TempDir(), Steps: steps})
	if s.code != ExitSuccess {
		t.Fatalf("exit code %d", s.code)
	}
	want := reported(t, s.dir)
	lines := strings.SplitAfter(string(s.out.bytes()), "\n")
	lines = lines[:len(lines)-1] // after the last newline
	// The lines that carry step 0's log, by index.
	var logLines []int
	for j, l := range lines {
		if strings.Contains(l, `"t":"log","i":0,`) {
			logLines = append(logLines, j)
		}
	}
	if len(logLines) < 5 {
		t.Fatalf("step 0's log took %d frames, want at least 5 for the test to mean anything", len(logLines))
	}
	join := func(ls []string) []byte { return []byte(strings.Join(ls, "")) }
	// The first follow ends inside a frame line, after the second log frame of step 0: the stream
	// was cut there.
	cut := logLines[2]
	first := append(join(lines[:cut]), lines[cut][:len(lines[cut])/2]...)

	t.Run("the tail overlaps what was mirrored", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		demux(t, first, dir)
		// Rotated away: everything before step 0's second log frame, which was mirrored already.
		sameFiles(t, "resumed from the tail", demux(t, join(lines[logLines[1]:]), dir), want)
		// A third follow from the same tail, as after an executor restart, writes nothing twice.
		sameFiles(t, "resumed again", demux(t, join(lines[logLines[1]:]), dir), want)
	})

	t.Run("the tail starts after what was mirrored", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		demux(t, first, dir)
		// Where step 0's log frames start in its log.
		var at []int
		n := 0
		for _, j := range logLines {
			var f frame
			if err := json.Unmarshal([]byte(strings.TrimPrefix(lines[j], FramePrefix)), &f); err != nil {
				t.Fatal(err)
			}
			at = append(at, n)
			n += len(f.D)
		}
		// Rotated away: step 0's log frames 2 (cut) and 3, never mirrored.
		got := demux(t, join(lines[logLines[4]:]), dir)[StepsDir+"/0.log"]
		w := want[StepsDir+"/0.log"]
		if len(got) != len(w) {
			t.Fatalf("step 0's log has %d bytes, want %d (what was lost stands in for the bytes rotated away, so that later frames land at their offsets): %q", len(got), len(w), got)
		}
		if got[:at[2]] != w[:at[2]] {
			t.Errorf("what was mirrored before the cut changed: got %q, want %q", got[:at[2]], w[:at[2]])
		}
		if got[at[4]:] != w[at[4]:] {
			t.Errorf("the tail differs: got %q, want %q", got[at[4]:], w[at[4]:])
		}
		if gap := got[at[2]:at[4]]; !strings.Contains(gap, "bytes of this log were lost") {
			t.Errorf("the bytes rotated away are not marked lost: %q", gap)
		}
	})
}

// Step logs across calls of Demux (a follow resumed): appended by offset, bounded, never truncated.
func TestDemuxLogOffsets(t *testing.T) {
	t.Parallel()
	logFrame := func(off string, data string) string {
		o := ""
		if off != "" {
			o = `"o":` + off + `,`
		}
		return FramePrefix + `{"t":"log","i":0,` + o + `"d":"` + base64.StdEncoding.EncodeToString([]byte(data)) + `"}` + "\n"
	}
	tests := []struct {
		name   string
		calls  []string // the log each call reads
		lim    Limits
		want   string
		refuse bool // the last call refuses
	}{
		{"without offsets, from the start again", []string{logFrame("", "abc") + logFrame("", "def"), logFrame("", "abc") + logFrame("", "def") + logFrame("", "g")}, Limits{}, "abcdefg", false},
		{"an overlapping tail", []string{logFrame("0", "abc"), logFrame("2", "cde")}, Limits{}, "abcde", false},
		{"a tail already mirrored", []string{logFrame("0", "abc") + logFrame("3", "de"), logFrame("3", "de")}, Limits{}, "abcde", false},
		{"a gap shorter than the notice", []string{logFrame("0", "ab"), logFrame("5", "xy")}, Limits{}, "ab\n[rxy", false},
		{"an offset far past the bound", []string{logFrame("0", "ab"), logFrame("9223372036854775807", "x")}, Limits{Log: 300}, "", true},
		{"a log at its bound, read again", []string{logFrame("0", "abcdef"), logFrame("0", "abcdef")}, Limits{Log: 4}, "abcd", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			var err error
			for _, log := range tt.calls {
				err = Demux(strings.NewReader(log), dir, 1, tt.lim)
			}
			if got := errors.Is(err, ErrRefused); got != tt.refuse || err != nil && !got {
				t.Fatalf("the last Demux: %v, want a refusal: %v", err, tt.refuse)
			}
			got, rerr := os.ReadFile(StepLogPath(dir, 0))
			if rerr != nil {
				t.Fatal(rerr)
			}
			switch {
			case tt.want != "" && string(got) != tt.want:
				t.Errorf("step log %q, want %q", got, tt.want)
			case tt.want == "" && (int64(len(got)) != tt.lim.Log || !strings.HasPrefix(string(got), "ab\n[runservice: 9223372036854775805 bytes of this log were lost")):
				t.Errorf("step log of %d bytes %.200q, want the notice of lost bytes up to the bound of %d", len(got), got, tt.lim.Log)
			}
		})
	}
}

func TestDemuxSkipsWhatIsNotAFrame(t *testing.T) {
	t.Parallel()
	s := runStreaming(t, TaskFile{WorkingDir: t.TempDir(), Steps: []Step{
		run("out", "echo a; echo b >&2; mkdir d && echo c > d/c"),
		{Name: "save", Kind: StepKindSaveToWorkspace, Contents: []v1alpha1.SaveContent{{SourceDir: "d", DestDir: ".", Paths: []string{"*"}}}},
	}})
	if s.code != ExitSuccess {
		t.Fatalf("exit code %d", s.code)
	}
	log := s.out.bytes()
	want := demux(t, log, t.TempDir())
	sameFiles(t, "demuxed", want, reported(t, s.dir))

	lines := strings.SplitAfter(string(log), "\n")
	lines = lines[:len(lines)-1] // after the last newline
	junk := []string{
		"time=2025-01-01T00:00:00Z level=INFO msg=\"step finished\" step=0\n",
		FramePrefix + "{not json\n",
		FramePrefix + `{"t":"log","d":"eA=="}` + "\n",
		FramePrefix + `{"t":"log","i":0,"d":"not base64!"}` + "\n",
		FramePrefix + `{"t":"result","i":0,"r":"nope"}` + "\n",
		FramePrefix + `{"t":"teleport","i":0}` + "\n",
		" " + FramePrefix + `{"t":"log","i":0,"d":"eA=="}` + "\n",
		strings.Repeat("long line ", 300000) + "\n",
		"\n",
	}
	var mixed strings.Builder
	for j, l := range lines {
		mixed.WriteString(junk[j%len(junk)])
		mixed.WriteString(l)
	}
	sameFiles(t, "with other lines", demux(t, []byte(mixed.String()), t.TempDir()), want)

	// A last line without its newline may be cut anywhere: it is ignored.
	withPartial := string(log) + FramePrefix + `{"t":"log","i":0,"d":"eHh4`
	sameFiles(t, "with a partial last frame", demux(t, []byte(withPartial), t.TempDir()), want)
	last := lines[len(lines)-1]
	upToLast := strings.Join(lines[:len(lines)-1], "")
	sameFiles(t, "cut in the last frame",
		demux(t, []byte(upToLast+last[:len(last)/2]), t.TempDir()),
		demux(t, []byte(upToLast), t.TempDir()))
}

func TestDemuxArchives(t *testing.T) {
	t.Parallel()
	line := func(f string) string { return FramePrefix + f + "\n" }
	tests := []struct {
		name    string
		log     string
		archive string // "" for none
	}{
		{"complete", line(`{"t":"archive","i":2,"d":"YWI="}`) + line(`{"t":"archive","i":2,"d":"Yw=="}`) + line(`{"t":"archive-end","i":2,"n":3}`), "abc"},
		{"size mismatch", line(`{"t":"archive","i":2,"d":"YWI="}`) + line(`{"t":"archive-end","i":2,"n":3}`), ""},
		{"no end", line(`{"t":"archive","i":2,"d":"YWI="}`), ""},
		{"end without chunks", line(`{"t":"archive-end","i":2,"n":0}`), ""},
		{"empty", line(`{"t":"archive-end","i":2}`), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			got := demux(t, []byte(tt.log), dir)
			want := map[string]string{}
			if tt.archive != "" {
				want[ArchivesDir+"/2.tar"] = tt.archive
			}
			sameFiles(t, "archives", got, want)
		})
	}
}

func TestTerminationMessage(t *testing.T) {
	t.Parallel()
	start := time.Date(2025, 6, 1, 12, 0, 0, 123456789, time.UTC)
	result := func(phase v1alpha1.StepPhase, msg string) *StepResult {
		c := int32(0)
		return &StepResult{Phase: phase, ExitCode: &c, StartTime: start, EndTime: start.Add(time.Second), Message: msg}
	}
	long := strings.Repeat("a long message ", 20)

	few := []*StepResult{result(v1alpha1.StepPhaseSuccess, ""), result(v1alpha1.StepPhaseFailed, long), nil}
	many := make([]*StepResult, 60)
	for i := range many {
		many[i] = result(v1alpha1.StepPhaseSuccess, long)
	}
	many[59] = nil
	tests := []struct {
		name         string
		results      []*StepResult
		wantAll      bool // every entry, messages included
		wantMessages bool
	}{
		{"nothing run", nil, true, true},
		{"fits", few, true, true},
		{"60 steps with long messages", many, false, false},
	}
	for _, tt := range tests {
		msg := terminationMessage(tt.results)
		if len(msg) > MaxTerminationMessage || !json.Valid(msg) {
			t.Errorf("%s: %d bytes, valid JSON %v", tt.name, len(msg), json.Valid(msg))
		}
		got, err := ParseTermination(string(msg))
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if tt.wantAll && len(got) != len(tt.results) || len(got) > len(tt.results) || len(tt.results) > 0 && len(got) == 0 {
			t.Errorf("%s: %d entries of %d", tt.name, len(got), len(tt.results))
		}
		for i, g := range got {
			w := tt.results[i]
			if w != nil && !tt.wantMessages {
				c := *w
				c.Message = ""
				w = &c
			}
			if (g == nil) != (w == nil) || g != nil && (g.Phase != w.Phase || g.Message != w.Message ||
				!g.StartTime.Equal(w.StartTime) || !g.EndTime.Equal(w.EndTime) || *g.ExitCode != *w.ExitCode) {
				t.Errorf("%s: entry %d: got %+v, want %+v", tt.name, i, g, w)
			}
		}
	}
	// 60 steps without messages do not fit either: the message is cut after as many as fit.
	if got, _ := ParseTermination(string(terminationMessage(many))); len(got) < 25 {
		t.Errorf("only %d of 60 entries kept", len(got))
	}

	for _, bad := range []string{"", "panic: oops", "null", "{}", `{"steps":{}}`} {
		if _, err := ParseTermination(bad); err == nil {
			t.Errorf("ParseTermination(%q): no error", bad)
		}
	}
}

func TestStreamSetupError(t *testing.T) {
	t.Parallel()
	term := filepath.Join(t.TempDir(), "termination-log")
	rec := &recorder{}
	code := Run(t.Context(), t.TempDir(), WithTaskFile(filepath.Join(t.TempDir(), "missing.json")), WithStream(rec), WithTerminationLog(term))
	if code != ExitSetup {
		t.Errorf("exit code %d, want %d", code, ExitSetup)
	}
	msg, err := os.ReadFile(term)
	if err != nil || string(msg) != `{"steps":[]}` {
		t.Errorf("termination message %q, %v", msg, err)
	}
	if out := rec.bytes(); len(out) != 0 {
		t.Errorf("stdout %q", out)
	}
}

func TestStreamStop(t *testing.T) {
	t.Parallel()
	files := t.TempDir()
	taskPath := filepath.Join(files, "task.json")
	data, _ := json.Marshal(TaskFile{Steps: []Step{run("sleep", "echo sleeping; sleep 30"), run("never", "true")}})
	if err := os.WriteFile(taskPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	dir, rec := t.TempDir(), &recorder{}
	ctx, cancel := context30s(t)
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- Run(ctx, dir, WithTaskFile(taskPath), WithStream(rec)) }()
	eventually(t, 10*time.Second, "the step's output on the stream", func() bool {
		var log strings.Builder
		for _, pf := range frames(t, rec) {
			if pf.f.T == FrameLog && *pf.f.I == 0 {
				log.Write(pf.f.D)
			}
		}
		return log.String() == "sleeping\n"
	})
	cancel() // SIGTERM
	if code := <-done; code != ExitStopped {
		t.Errorf("exit code %d, want %d", code, ExitStopped)
	}
	got := demux(t, rec.bytes(), t.TempDir())
	sameFiles(t, "demuxed", got, reported(t, dir))
	if _, err := os.Stat(StepResultPath(dir, 1)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("step 1 started: %v", err)
	}
	var res StepResult
	if err := json.Unmarshal([]byte(got[StepsDir+"/0.json"]), &res); err != nil || res.Phase != v1alpha1.StepPhaseStopped {
		t.Errorf("step 0: %+v, %v", res, err)
	}
}

// A task can write frames to the toolbox's stdout itself: what the executor writes for them into
// its own directory is bounded, and what is dropped fails the task (a RefusedError) instead of
// going missing silently. The rest of the log is demuxed all the same.
func TestDemuxRefuses(t *testing.T) {
	t.Parallel()
	line := func(f string) string { return FramePrefix + f + "\n" }
	result := line(`{"t":"result","i":1,"r":{"phase":"Success","startTime":"2026-01-01T00:00:00Z"}}`)
	tests := []struct {
		name   string
		log    string
		lim    Limits
		want   map[string]string // files besides steps/1.log and steps/1.json
		reason string
	}{
		{"a step past the task's", line(`{"t":"log","i":2,"d":"eA=="}`) + line(`{"t":"result","i":2,"r":{"phase":"Success"}}`),
			Limits{}, nil, "a frame for step 2 in the log of a task of 2 steps; refused"},
		{"a step far out of range", line(`{"t":"archive","i":1099511627776,"d":"eA=="}`),
			Limits{}, nil, "a frame for step 1099511627776 in the log of a task of 2 steps; refused"},
		{"a log past its bound", line(`{"t":"log","i":0,"d":"MDEyMzQ1"}`) + line(`{"t":"log","i":0,"d":"Njc4OQ=="}`) + line(`{"t":"log","i":0,"d":"eHh4"}`),
			Limits{Log: 8}, map[string]string{StepsDir + "/0.log": "01234567"}, "steps/0.log: is larger than the executor's limit of 8; refused"},
		{"an archive past its bound", line(`{"t":"archive","i":0,"d":"YWI="}`) + line(`{"t":"archive","i":0,"d":"Y2Q="}`) + line(`{"t":"archive-end","i":0,"n":4}`),
			Limits{Archive: 3}, nil, "archives/0.tar: is larger than the executor's limit of 3; refused"},
		{"a frame line too long", FramePrefix + `{"t":"log","i":0,"d":"` + strings.Repeat("eHh4", maxFrameLine/4) + `"}` + "\n",
			Limits{}, nil, "a frame longer than 1Mi bytes in the task's log; refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			err := Demux(strings.NewReader(tt.log+result), dir, 2, tt.lim)
			var re *RefusedError
			if !errors.As(err, &re) || err.Error() != tt.reason {
				t.Fatalf("Demux: %v, want the refusal %q", err, tt.reason)
			}
			got := reported(t, dir)
			if got[StepsDir+"/1.json"] == "" {
				t.Errorf("the frames after the refused one were not demuxed: %v", got)
			}
			delete(got, StepsDir+"/1.json")
			delete(got, StepsDir+"/1.log")
			if len(got) != len(tt.want) {
				t.Errorf("files %v, want %v", got, tt.want)
			}
			for name, w := range tt.want {
				if got[name] != w {
					t.Errorf("%s: %q, want %q", name, got[name], w)
				}
			}
		})
	}
}

// A frame line of 256 MiB is skipped as it streams by, never held whole.
func TestDemuxHugeFrameLineIsNotBuffered(t *testing.T) {
	huge := io.MultiReader(
		strings.NewReader(FramePrefix+`{"t":"log","i":0,"d":"`),
		io.LimitReader(repeatReader('x'), 256<<20),
		strings.NewReader("\"}\n"+FramePrefix+`{"t":"log","i":0,"d":"b2s="}`+"\n"),
	)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	dir := t.TempDir()
	err := Demux(huge, dir, 1, Limits{})
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("Demux: %v", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("Demux allocated %d MiB for a frame line it skips", grew>>20)
	}
	if got := reported(t, dir)[StepsDir+"/0.log"]; got != "ok" {
		t.Errorf("the frame after the huge one: %q", got)
	}
}

type repeatReader byte

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}
