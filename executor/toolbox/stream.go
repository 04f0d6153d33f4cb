package toolbox

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
)

// FramePrefix starts every line the toolbox writes to its stdout when it streams; what follows is
// one frame as compact JSON, up to the end of the line.
const FramePrefix = "@@runservice@@ "

// Kinds of frame, in the "t" field. "i" is always the step's index.
const (
	// FrameLog carries in "d" the next bytes of steps/<i>.log, and in "o" the offset in that log
	// of the first of them: a reader that already has them (it followed the pod's log before)
	// skips them, and one that resumes after some were rotated away knows where the rest go.
	FrameLog = "log"
	// FrameResult carries in "r" the StepResult just written to steps/<i>.json.
	FrameResult = "result"
	// FrameArchive carries in "d" the next bytes of archives/<i>.tar.
	FrameArchive = "archive"
	// FrameArchiveEnd ends archive i; "n" is its size in bytes.
	FrameArchiveEnd = "archive-end"
)

// frame is one line of the stream. "d" is base64, as encoding/json writes a []byte.
type frame struct {
	T string          `json:"t"`
	I *int            `json:"i"`
	D []byte          `json:"d,omitempty"`
	R json.RawMessage `json:"r,omitempty"`
	N *int64          `json:"n,omitempty"`
	O *int64          `json:"o,omitempty"`
}

const (
	// maxChunk bounds the data of a log or archive frame. A line of the container log longer than
	// 16 KiB is split by the runtime (containerd's and Docker's default), and a line of stderr can
	// then land between the pieces; 11 KiB is 15,020 bytes of base64, so a whole frame stays
	// under that.
	maxChunk = 11 << 10
	// streamInterval is how often the step logs are read for new output: a line written by a step
	// reaches the stream within it.
	streamInterval = 100 * time.Millisecond
	// maxFrameLine is the longest frame Demux reads; longer lines are not frames.
	maxFrameLine = 1 << 20
)

// frameWriter writes whole frames, one Write each, from any goroutine.
type frameWriter struct {
	mu     sync.Mutex
	w      io.Writer
	log    *slog.Logger
	closed bool
	failed bool
}

// write writes f; a nil frameWriter writes nothing. A failed write is logged once: nothing more
// can go out, but the steps still run and the files are still written.
func (fw *frameWriter) write(f frame) {
	if fw == nil {
		return
	}
	data, err := json.Marshal(f)
	if err != nil {
		fw.log.Error("encoding a frame", "kind", f.T, "err", err)
		return
	}
	line := make([]byte, 0, len(FramePrefix)+len(data)+1)
	line = append(append(append(line, FramePrefix...), data...), '\n')
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.closed || fw.failed {
		return
	}
	if _, err := fw.w.Write(line); err != nil {
		fw.failed = true
		fw.log.Error("writing frames", "err", err)
	}
}

// close makes later writes do nothing: Run's writer is no longer its own once it returned.
func (fw *frameWriter) close() {
	fw.mu.Lock()
	fw.closed = true
	fw.mu.Unlock()
}

// tailer streams the step logs as they grow. A step's shell writes straight into its log file, as
// when the toolbox does not stream, so the log file is the one source of truth and the stream
// repeats it. Logs stay followed until Run returns: processes a step left behind can still write.
type tailer struct {
	frames *frameWriter
	mu     sync.Mutex
	logs   map[int]*os.File
	offs   map[int]int64 // what of each log was streamed
	order  []int
	buf    []byte
	stop   chan struct{}
	done   chan struct{}
}

func newTailer(fw *frameWriter) *tailer {
	t := &tailer{
		frames: fw,
		logs:   make(map[int]*os.File),
		offs:   make(map[int]int64),
		buf:    make([]byte, maxChunk),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	go t.loop()
	return t
}

func (t *tailer) loop() {
	defer close(t.done)
	tick := time.NewTicker(streamInterval)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			t.drainAll()
		}
	}
}

// add follows the log of step i, from its start; a nil tailer does nothing.
func (t *tailer) add(i int, path string) error {
	if t == nil {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if old := t.logs[i]; old != nil {
		_ = old.Close()
	} else {
		t.order = append(t.order, i)
	}
	t.logs[i], t.offs[i] = f, 0
	return nil
}

// drain streams what step i's log has that was not streamed yet.
func (t *tailer) drain(i int) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.drainLocked(i)
}

func (t *tailer) drainAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, i := range t.order {
		t.drainLocked(i)
	}
}

func (t *tailer) drainLocked(i int) {
	f := t.logs[i]
	if f == nil {
		return
	}
	for {
		n, err := f.Read(t.buf)
		if n > 0 {
			off := t.offs[i]
			t.frames.write(frame{T: FrameLog, I: &i, O: &off, D: t.buf[:n]})
			t.offs[i] += int64(n)
		}
		if err != nil || n == 0 {
			// io.EOF until the step writes more; another error is not worth stopping the steps for.
			return
		}
	}
}

// close streams the logs' last bytes and stops following them.
func (t *tailer) close() {
	close(t.stop)
	<-t.done
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, i := range t.order {
		t.drainLocked(i)
		_ = t.logs[i].Close()
	}
	t.logs, t.order = nil, nil
}

// streamArchive writes archives/<i>.tar as frames.
func (r *runner) streamArchive(i int) error {
	f, err := os.Open(ArchivePath(r.dir, i))
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, maxChunk)
	var size int64
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			r.frames.write(frame{T: FrameArchive, I: &i, D: buf[:n]})
			size += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return err
		}
	}
	r.frames.write(frame{T: FrameArchiveEnd, I: &i, N: &size})
	return nil
}

// Demux reads the log of a streaming toolbox (its stdout, mixed with other lines) and writes into
// dir what the toolbox wrote into its own shared directory: steps/<i>.log, appended to as the
// output arrives; steps/<i>.json, replaced atomically; archives/<i>.tar, written to
// archives/<i>.tar.tmp and renamed into place when complete. It returns nil at the end of r,
// ignoring a last line without a newline, which the toolbox may not have finished writing.
//
// After an interruption Demux is called again, into the same dir, with what the log still has:
// from its start, or only a tail once the kubelet rotated the container's log. A step log is never
// truncated: each log frame says at which offset its bytes go, and only the bytes the copy does not
// have yet are appended; bytes rotated away before any call read them are replaced by as many
// saying they were lost, so that what follows lands at its offset. (Frames of a toolbox that
// wrote no offsets count from the start of r.) An archive is written whole by one call or not at
// all: a call that sees only its end leaves the archive an earlier call wrote. Lines that are not
// frames, and frames that cannot be decoded, are skipped; so is an archive whose size does not
// match its end frame.
//
// What a task can put in its log is bounded: a frame for a step past the task's steps, a frame
// line longer than maxFrameLine (never buffered whole), a log past lim.Log (cut at the bound) and an
// archive past lim.Archive (dropped) are refused. Demux reads on to the end of r all the same, so
// the rest of the task's reports arrive, and then returns the first refusal, a RefusedError.
func Demux(r io.Reader, dir string, steps int, lim Limits) (err error) {
	for _, d := range []string{StepsDir, ArchivesDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	d := &demuxer{dir: dir, steps: steps, lim: lim.WithDefaults(), logs: make(map[int]*partLog), archives: make(map[int]*partArchive)}
	defer func() {
		if cerr := d.close(); err == nil {
			err = cerr
		}
		if err == nil && d.refused != nil {
			err = d.refused
		}
	}()
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	// A line's first chunk is the whole line or a full buffer, more than the prefix: whether a
	// line too long to keep is a frame is known from it.
	tooLong, frameLine, lineStart := false, false, true
	for {
		chunk, rerr := br.ReadSlice('\n')
		if lineStart && len(chunk) > 0 {
			frameLine, lineStart = bytes.HasPrefix(chunk, []byte(FramePrefix)), false
		}
		if !tooLong && len(line)+len(chunk) <= maxFrameLine {
			line = append(line, chunk...)
		} else {
			tooLong, line = true, line[:0]
		}
		switch {
		case errors.Is(rerr, bufio.ErrBufferFull):
			continue
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			return fmt.Errorf("reading the toolbox's log: %w", rerr)
		}
		if !tooLong {
			if err := d.line(line[:len(line)-1]); err != nil {
				return err
			}
		} else if frameLine {
			d.refuse(&RefusedError{Step: -1, Reason: "a frame longer than " + resource.NewQuantity(maxFrameLine, resource.BinarySI).String() + " bytes in the task's log"})
		}
		line, tooLong, lineStart = line[:0], false, true
	}
}

type demuxer struct {
	dir      string
	steps    int
	lim      Limits
	logs     map[int]*partLog
	archives map[int]*partArchive
	refused  error // the first refusal
}

type partLog struct {
	f    *os.File
	size int64 // of the copy: the offset in the toolbox's log of the next byte to append
	seen int64 // bytes of this call's frames without an offset
	full bool  // cut at the bound: later frames of the log are dropped
}

type partArchive struct {
	f       *os.File
	size    int64
	dropped bool // past the bound: later frames of the archive are ignored
}

func (d *demuxer) refuse(e *RefusedError) {
	if d.refused == nil {
		d.refused = e
	}
}

func (d *demuxer) line(line []byte) error {
	payload, ok := bytes.CutPrefix(line, []byte(FramePrefix))
	if !ok {
		return nil
	}
	var f frame
	if err := json.Unmarshal(payload, &f); err != nil || f.I == nil {
		return nil
	}
	i := *f.I
	if i < 0 || i >= d.steps {
		// Nothing is written for it: a task cannot make the executor create files at will.
		d.refuse(&RefusedError{Step: -1, Reason: fmt.Sprintf("a frame for step %d in the log of a task of %d steps", i, d.steps)})
		return nil
	}
	switch f.T {
	case FrameLog:
		l, err := d.log(i)
		if err != nil {
			return err
		}
		off := l.seen // a toolbox that writes no offsets streams each log from its start
		if f.O != nil {
			off = *f.O
		}
		l.seen = off + int64(len(f.D))
		return d.appendLog(i, l, off, f.D)
	case FrameResult:
		var res StepResult
		if len(f.R) == 0 || json.Unmarshal(f.R, &res) != nil {
			return nil
		}
		// The toolbox creates the log when a step starts, so a step with no output has an empty one.
		if _, err := d.log(i); err != nil {
			return err
		}
		if err := writeResult(d.dir, i, &res); err != nil {
			return fmt.Errorf("writing the result of step %d: %w", i, err)
		}
	case FrameArchive:
		a := d.archives[i]
		if a == nil {
			tmp, err := os.Create(ArchivePath(d.dir, i) + ".tmp")
			if err != nil {
				return fmt.Errorf("creating the archive of step %d: %w", i, err)
			}
			a = &partArchive{f: tmp}
			d.archives[i] = a
		}
		if a.dropped {
			return nil
		}
		if a.size+int64(len(f.D)) > d.lim.Archive {
			// A cut archive is no archive: drop what came, keep nothing of the rest.
			a.dropped = true
			_ = a.f.Close()
			d.refuse(&RefusedError{Step: i, Kind: "archive", Path: ArchiveFile(i), Reason: overLimit(d.lim.Archive)})
			return os.Remove(a.f.Name())
		}
		n, err := a.f.Write(f.D)
		a.size += int64(n)
		if err != nil {
			return fmt.Errorf("writing the archive of step %d: %w", i, err)
		}
	case FrameArchiveEnd:
		a := d.archives[i]
		if a == nil {
			return nil // its chunks were not in this log
		}
		delete(d.archives, i)
		if a.dropped {
			return nil
		}
		tmp := a.f.Name()
		if err := a.f.Close(); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("writing the archive of step %d: %w", i, err)
		}
		if f.N == nil || *f.N != a.size {
			// Chunks went missing: no archive is better than a corrupt one.
			_ = os.Remove(tmp)
			return nil
		}
		if err := os.Rename(tmp, ArchivePath(d.dir, i)); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("writing the archive of step %d: %w", i, err)
		}
	}
	return nil
}

// appendLog appends to step i's copy what of data, which the toolbox wrote at offset off of its
// log, the copy does not have yet.
func (d *demuxer) appendLog(i int, l *partLog, off int64, data []byte) error {
	if off < 0 || off <= l.size-int64(len(data)) {
		return nil // not the toolbox's, or mirrored already
	}
	if gap := off - l.size; gap > 0 {
		if err := d.fillLost(i, l, gap); err != nil {
			return err
		}
	} else {
		data = data[-gap:]
	}
	return d.writeLog(i, l, data)
}

// spaces pad the notice of lost bytes.
var spaces = bytes.Repeat([]byte{' '}, 4<<10)

// fillLost appends n bytes to step i's copy in place of n bytes of the toolbox's log that the
// kubelet rotated away before any follow read them: a line saying so, padded with spaces. Keeping
// the copy's size equal to the toolbox's offset is what lets a later follow write nothing twice.
func (d *demuxer) fillLost(i int, l *partLog, n int64) error {
	notice := fmt.Sprintf("\n[runservice: %d bytes of this log were lost: the node rotated the container's log before the executor read them]", n)
	if n <= int64(len(notice))+1 {
		return d.writeLog(i, l, []byte(notice + "\n")[:n])
	}
	if err := d.writeLog(i, l, []byte(notice)); err != nil {
		return err
	}
	for pad := n - int64(len(notice)) - 1; pad > 0 && !l.full; {
		chunk := spaces[:min(pad, int64(len(spaces)))]
		if err := d.writeLog(i, l, chunk); err != nil {
			return err
		}
		pad -= int64(len(chunk))
	}
	return d.writeLog(i, l, []byte("\n"))
}

// writeLog appends data to step i's copy, up to the bound.
func (d *demuxer) writeLog(i int, l *partLog, data []byte) error {
	if l.full || len(data) == 0 {
		return nil
	}
	if left := d.lim.Log - l.size; int64(len(data)) > left {
		data, l.full = data[:max(left, 0)], true
		d.refuse(&RefusedError{Step: i, Kind: "log", Path: StepLogFile(i), Reason: overLimit(d.lim.Log)})
	}
	n, err := l.f.Write(data)
	l.size += int64(n)
	if err != nil {
		return fmt.Errorf("writing the log of step %d: %w", i, err)
	}
	return nil
}

// log is step i's copy, opened for appending: what an earlier call mirrored stays.
func (d *demuxer) log(i int) (*partLog, error) {
	if l := d.logs[i]; l != nil {
		return l, nil
	}
	f, err := os.OpenFile(StepLogPath(d.dir, i), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating the log of step %d: %w", i, err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("reading the log of step %d: %w", i, err)
	}
	l := &partLog{f: f, size: st.Size()}
	d.logs[i] = l
	return l, nil
}

// close closes the logs and drops the archives the log did not finish.
func (d *demuxer) close() error {
	var errs []error
	for i, l := range d.logs {
		if err := l.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("writing the log of step %d: %w", i, err))
		}
	}
	for _, a := range d.archives {
		if a.dropped {
			continue
		}
		_ = a.f.Close()
		if err := os.Remove(a.f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
