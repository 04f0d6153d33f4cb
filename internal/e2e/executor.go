package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// Executor is an executor process started from the built binary, as a user would run it.
type Executor struct {
	t    *testing.T
	h    *Harness
	bin  string
	args []string
	Name string
	NS   string

	mu  sync.Mutex
	out *bytes.Buffer
	cmd *exec.Cmd
}

// StartExecutor starts the executor binary bin as --name name --namespace ns with args, and waits
// until its Executor is Ready. The test's cleanup kills it, and shows the tail of its log if the
// test failed.
func (h *Harness) StartExecutor(t *testing.T, bin, ns, name string, args ...string) *Executor {
	t.Helper()
	e := h.NewExecutor(t, bin, ns, name, args...)
	e.Start()
	return e
}

// NewExecutor is StartExecutor without the start: call Start, or Launch for a process that is not
// expected to become Ready.
func (h *Harness) NewExecutor(t *testing.T, bin, ns, name string, args ...string) *Executor {
	t.Helper()
	e := &Executor{t: t, h: h, bin: bin, Name: name, NS: ns, args: append([]string{"--name", name, "--namespace", ns}, args...), out: &bytes.Buffer{}}
	t.Cleanup(func() {
		e.Kill()
		e.checkRaces(e.Output())
		if t.Failed() {
			s := e.out.String()
			if len(s) > 6000 {
				s = s[len(s)-6000:]
			}
			t.Logf("executor %s log (tail):\n%s", name, s)
		}
	})
	return e
}

// Output is what the process wrote to stdout and stderr; call it once it exited (Exited, Kill, Stop).
func (e *Executor) Output() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.out.String()
}

// Start (re)starts the process and waits until its Executor is Ready.
func (e *Executor) Start() {
	e.t.Helper()
	e.Launch()
	e.h.Eventually(e.t, "executor "+e.Name+" ready", func() bool {
		ex := &rsv1.Executor{}
		if err := e.h.Client.Get(context.Background(), client.ObjectKey{Namespace: e.NS, Name: e.Name}, ex); err != nil || ex.DeletionTimestamp != nil {
			return false
		}
		for _, c := range ex.Status.Conditions {
			if c.Type == rsv1.ConditionReady && c.Status == metav1.ConditionTrue {
				return true
			}
		}
		return false
	})
}

// Launch (re)starts the process without waiting for anything.
func (e *Executor) Launch() {
	e.t.Helper()
	e.mu.Lock()
	if e.cmd == nil {
		// The previous process (if any) exited: what it wrote is whole.
		e.checkRaces(e.out.String())
	}
	e.out = &bytes.Buffer{}
	e.cmd = exec.Command(e.bin, e.args...)
	e.cmd.Env = append(os.Environ(), "KUBECONFIG="+e.h.Kubeconfig)
	e.cmd.Stdout, e.cmd.Stderr = e.out, e.out
	err := e.cmd.Start()
	e.mu.Unlock()
	if err != nil {
		e.t.Fatal(err)
	}
}

// raceReport opens what the race detector writes of each data race it finds.
const raceReport = "WARNING: DATA RACE"

// checkRaces fails the test when out, the output of one of the process's runs, holds a race
// detector's report (the binary was built with -race, see Build): a data race is a defect even
// when the scenario passed.
func (e *Executor) checkRaces(out string) {
	i := strings.Index(out, raceReport)
	if i < 0 {
		return
	}
	report := out[i:]
	if end := strings.Index(report, "=================="); end > 0 {
		report = report[:end]
	}
	if len(report) > 8000 {
		report = report[:8000]
	}
	e.t.Errorf("executor %s: the race detector found %d data race(s); the first:\n%s", e.Name, strings.Count(out, raceReport), report)
}

// Exited waits up to timeout for the process to exit by itself, and returns its error (nil: exit
// status 0).
func (e *Executor) Exited(timeout time.Duration) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		return errors.New("not running")
	}
	done := make(chan error, 1)
	go func() { done <- e.cmd.Wait() }()
	select {
	case err := <-done:
		e.cmd = nil
		return err
	case <-time.After(timeout):
		_ = e.cmd.Process.Signal(syscall.SIGKILL)
		<-done
		e.cmd = nil
		return fmt.Errorf("executor %s still running after %v", e.Name, timeout)
	}
}

// Kill kills the process with SIGKILL, as a crash would.
func (e *Executor) Kill() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd != nil && e.cmd.Process != nil {
		_ = e.cmd.Process.Signal(syscall.SIGKILL)
		_ = e.cmd.Wait()
		e.cmd = nil
	}
}

// Stop stops the process with SIGTERM, as a pod's deletion would, and waits until it exited.
func (e *Executor) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd != nil && e.cmd.Process != nil {
		_ = e.cmd.Process.Signal(syscall.SIGTERM)
		if err := e.cmd.Wait(); err != nil {
			e.t.Errorf("executor %s exited with %v after SIGTERM", e.Name, err)
		}
		e.cmd = nil
	}
}

// FreeAddr returns host:port of a free TCP port on host.
func FreeAddr(t *testing.T, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
