package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"runservice.dev/runservice/internal/testenv"
)

// proc is a component of the cluster scenario running as a process of its own, so that its CPU
// time and memory are its own: the manager, an executor, kube-scheduler, kwok, or the control
// plane's kube-apiserver and etcd (started by envtest, found among this process's children).
type proc struct {
	component string // what the figures are summed under: manager, executors, scheduler...
	name      string
	pid       int
	cmd       *exec.Cmd // nil for the control plane's, which envtest stops
	exited    chan struct{}
	err       error // why it exited, once exited is closed
}

// startProc starts bin with args, its output in dir/name.log.
func startProc(dir, component, name string, env []string, bin string, args ...string) (*proc, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	// A bench killed outright takes its processes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{component: component, name: name, pid: cmd.Process.Pid, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = logf.Close()
		close(p.exited)
	}()
	return p, nil
}

// procDir is a scenario's directory for its processes: the manager and the executor built into
// bins, the admin kubeconfig, their logs.
type procDir struct{ dir, bins, kubeconfig string }

// newProcDir makes the directory under parent ("": the system's temporary directory).
func newProcDir(env *testenv.Env, parent, prefix string) (*procDir, error) {
	if parent != "" {
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp(parent, prefix)
	if err != nil {
		return nil, err
	}
	d := &procDir{dir: dir, kubeconfig: filepath.Join(dir, "kubeconfig")}
	if d.bins, err = buildBinaries(env.Root, dir); err == nil {
		err = os.WriteFile(d.kubeconfig, env.Kubeconfig, 0o600)
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return d, nil
}

// finish removes the directory after a scenario that succeeded; a failed one's *err names it, for
// the logs.
func (d *procDir) finish(err *error) {
	if *err == nil {
		_ = os.RemoveAll(d.dir)
	} else {
		*err = fmt.Errorf("%w (the processes' logs are in %s)", *err, d.dir)
	}
}

// stop asks the process to stop (SIGTERM), and kills it after grace.
func (p *proc) stop(grace time.Duration) {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// childProcs finds this process's children named comm (kube-apiserver, etcd).
func childProcs(component, comm string) []*proc {
	entries, _ := os.ReadDir("/proc")
	var out []*proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		name, fields, ok := parseStat(b)
		if !ok || name != comm || len(fields) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(fields[1]); ppid == os.Getpid() {
			out = append(out, &proc{component: component, name: comm, pid: pid})
		}
	}
	return out
}

// parseStat splits /proc/<pid>/stat into the command name and the fields after it (state first).
func parseStat(b []byte) (string, []string, bool) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return "", nil, false
	}
	return string(b[open+1 : end]), strings.Fields(string(b[end+1:])), true
}

// clockTicks is USER_HZ, what /proc/<pid>/stat counts CPU time in: 100 on Linux everywhere.
const clockTicks = 100

// cpu is the process's user + system CPU time so far.
func (p *proc) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		return 0
	}
	_, f, ok := parseStat(b)
	if !ok || len(f) < 13 {
		return 0
	}
	// utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// peakRSS is the process's peak resident set (VmHWM) since it started or since resetPeak.
func (p *proc) peakRSS() int64 { return p.status("VmHWM:") }

// rss is the process's resident set now (VmRSS).
func (p *proc) rss() int64 { return p.status("VmRSS:") }

// status reads a size in kB from /proc/<pid>/status, in bytes; 0 if the process is gone.
func (p *proc) status(field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// resetPeak starts the peak resident set over from the current one (clear_refs 5; root only).
func (p *proc) resetPeak() bool {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p.pid), []byte("5"), 0) == nil
}

// usage is what the components used over a phase: CPU time summed per component, and the largest
// peak resident set of a process of each; and the same per process.
type usage struct {
	cpu      map[string]time.Duration
	peak     map[string]int64
	procCPU  map[*proc]time.Duration
	procPeak map[*proc]int64
}

// procSet is every process of the scenario, with the CPU times at the start of a phase.
type procSet struct {
	procs  []*proc
	start  map[*proc]time.Duration
	resets bool // whether the peaks were reset at the start of the phase
}

func (s *procSet) begin() {
	s.start = map[*proc]time.Duration{}
	s.resets = true
	for _, p := range s.procs {
		s.start[p] = p.cpu()
		if !p.resetPeak() {
			s.resets = false
		}
	}
}

func (s *procSet) end() usage {
	u := usage{cpu: map[string]time.Duration{}, peak: map[string]int64{}, procCPU: map[*proc]time.Duration{}, procPeak: map[*proc]int64{}}
	for _, p := range s.procs {
		u.procCPU[p], u.procPeak[p] = p.cpu()-s.start[p], p.peakRSS()
		u.cpu[p.component] += u.procCPU[p]
		u.peak[p.component] = max(u.peak[p.component], u.procPeak[p])
	}
	return u
}

// exited returns the first of the scenario's own processes that exited, if one did.
func (s *procSet) exited() *proc {
	for _, p := range s.procs {
		if p.cmd == nil {
			continue
		}
		select {
		case <-p.exited:
			return p
		default:
		}
	}
	return nil
}

// observedManager is the manager binary as a process of its own (startManagerProc's options, its
// object store under the scenario's directory) with its metrics and Go profiles served on
// loopback, and the control plane's processes beside it: what the soak and the live scenario read
// memory from.
type observedManager struct {
	*proc
	metrics         string // its metrics URL
	pprof           string // where it serves /debug/pprof/
	etcd, apiserver *proc
}

func startObservedManager(env *testenv.Env, pd *procDir, args ...string) (*observedManager, error) {
	return startObservedReplica(env, pd, "manager", args...)
}

// startObservedReplica is startObservedManager for a process named name (its log is name.log in
// pd's directory): one of several replicas.
func startObservedReplica(env *testenv.Env, pd *procDir, name string, args ...string) (*observedManager, error) {
	etcd, apiserver := childProcs("etcd", "etcd"), childProcs("apiserver", "kube-apiserver")
	if len(etcd) != 1 || len(apiserver) != 1 {
		return nil, fmt.Errorf("found %d etcd and %d kube-apiserver processes among this one's children, want one each", len(etcd), len(apiserver))
	}
	metricsPort, err := freePort()
	if err != nil {
		return nil, err
	}
	pprofPort, err := freePort()
	if err != nil {
		return nil, err
	}
	metricsAddr, pprofAddr := fmt.Sprintf("127.0.0.1:%d", metricsPort), fmt.Sprintf("127.0.0.1:%d", pprofPort)
	args = append([]string{"--metrics-bind-address", metricsAddr, "--pprof-bind-address", pprofAddr}, args...)
	p, err := startNamedManagerProc(env, pd.dir, name, pd.bins, pd.kubeconfig, "file://"+filepath.Join(pd.dir, "store"), nil, args...)
	if err != nil {
		return nil, err
	}
	return &observedManager{proc: p, metrics: "http://" + metricsAddr + "/metrics", pprof: "http://" + pprofAddr, etcd: etcd[0], apiserver: apiserver[0]}, nil
}
