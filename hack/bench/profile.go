package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
)

// profiler writes the process's CPU, mutex and block profiles over the service benchmark into a
// directory (-profile), to look at with `go tool pprof`. The manager runs in this process, so its
// lock contention (the scheduler's lock, the workqueues) shows there.
type profiler struct {
	dir string
	cpu *os.File
}

func startProfile(dir string) (*profiler, error) {
	if dir == "" {
		return nil, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("profile directory: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, "cpu.pprof"))
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	runtime.SetMutexProfileFraction(5)
	runtime.SetBlockProfileRate(int(1e6)) // one sample per ms blocked
	return &profiler{dir: dir, cpu: f}, nil
}

func (p *profiler) stop() error {
	if p == nil {
		return nil
	}
	pprof.StopCPUProfile()
	err := p.cpu.Close()
	for _, name := range []string{"mutex", "block", "goroutine"} {
		f, ferr := os.Create(filepath.Join(p.dir, name+".pprof"))
		if ferr != nil {
			err = ferr
			continue
		}
		if werr := pprof.Lookup(name).WriteTo(f, 0); werr != nil {
			err = werr
		}
		if cerr := f.Close(); cerr != nil {
			err = cerr
		}
	}
	runtime.SetMutexProfileFraction(0)
	runtime.SetBlockProfileRate(0)
	if err != nil {
		return fmt.Errorf("writing profiles: %w", err)
	}
	return nil
}
