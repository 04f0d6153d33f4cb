package e2e

import (
	"fmt"
	"os"
	"os/exec"
)

// Build builds the main packages pkgs of the module at root into the directory bins, static
// (CGO_ENABLED=0): the toolbox runs in images that have no C library. Under `go test -race` the
// executor is built with the race detector instead (which needs cgo): it runs in the test's
// processes, and its goroutines share a task's state, which only the detector checks; a suite's
// Executor fails its test when the detector reported a race (see Executor).
func Build(root, bins string, pkgs ...string) error {
	var static, raced []string
	for _, p := range pkgs {
		if RaceEnabled && p == "./cmd/executor" {
			raced = append(raced, p)
		} else {
			static = append(static, p)
		}
	}
	run := func(env string, flags []string, pkgs []string) error {
		if len(pkgs) == 0 {
			return nil
		}
		args := append(append([]string{"build"}, flags...), append([]string{"-o", bins + "/"}, pkgs...)...)
		cmd := exec.Command("go", args...)
		cmd.Dir, cmd.Env = root, append(os.Environ(), env)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building %v: %w", pkgs, err)
		}
		return nil
	}
	if err := run("CGO_ENABLED=0", nil, static); err != nil {
		return err
	}
	return run("CGO_ENABLED=1", []string{"-race"}, raced)
}
