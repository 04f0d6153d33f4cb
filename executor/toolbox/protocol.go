package toolbox

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"runservice.dev/runservice/api/v1alpha1"
)

// DefaultDir is where the executor mounts the shared directory in the main container.
const DefaultDir = "/.runservice"

// DefaultTerminationLog is where Kubernetes reads a container's termination message from.
const DefaultTerminationLog = "/dev/termination-log"

// DefaultShell runs a run step that names no shell.
const DefaultShell = "/bin/sh -e"

// Exit codes of the toolbox.
const (
	ExitSuccess = 0
	ExitFailed  = 1
	ExitStopped = 2
	ExitSetup   = 3
)

// Kinds of Step.
const (
	StepKindRun              = "run"
	StepKindSaveToWorkspace  = "saveToWorkspace"
	StepKindRestoreWorkspace = "restoreWorkspace"
)

// Files and directories under the shared directory.
const (
	TaskFileName = "task.json"
	StartFile    = "start"
	StopFile     = "stop"
	StepsDir     = "steps"
	ArchivesDir  = "archives"
	WorkspaceDir = "workspace"
)

// TaskFile is what the executor tells the toolbox to do.
type TaskFile struct {
	// Steps run in order.
	Steps []Step `json:"steps"`
	// WorkspaceSources are the ExecutorTasks, parents first, whose archives the executor put under
	// workspace/<source>/; a restoreWorkspace step extracts them in this order, later ones
	// overwriting earlier ones.
	WorkspaceSources []string `json:"workspaceSources,omitempty"`
	// WorkingDir of the steps, created when missing; "" is the container's working directory.
	// Relative sourceDir and destDir of workspace steps are relative to it too.
	WorkingDir string `json:"workingDir,omitempty"`
}

// Step is one step of a task, flattened from the API's one-of.
type Step struct {
	Name string `json:"name,omitempty"`
	Kind string `json:"kind"`

	// run
	Command string            `json:"command,omitempty"`
	Shell   string            `json:"shell,omitempty"` // "" is DefaultShell
	Env     []v1alpha1.EnvVar `json:"env,omitempty"`

	// saveToWorkspace
	Contents []v1alpha1.SaveContent `json:"contents,omitempty"`

	// restoreWorkspace
	DestDir string `json:"destDir,omitempty"`
}

// StepResult is what the toolbox reports of a step in steps/<i>.json.
type StepResult struct {
	// Phase is Running, then Success, Failed or Stopped.
	Phase v1alpha1.StepPhase `json:"phase"`
	// ExitCode of a run step's shell once it exited; 128+n when killed by signal n, 127 when the
	// shell is not in the image. Unset for workspace steps.
	ExitCode  *int32    `json:"exitCode,omitempty"`
	StartTime time.Time `json:"startTime"`
	EndTime   time.Time `json:"endTime,omitzero"`
	// Message says why a step failed when the exit code does not.
	Message string `json:"message,omitempty"`
}

// StepsFromTask flattens the API steps of a task. A run step without a name is named after the
// first non-blank line of its command, cut to 40 characters ("run-<i>" if there is none); workspace
// steps are named "save-to-workspace" and "restore-workspace".
func StepsFromTask(t *v1alpha1.Task) []Step {
	steps := make([]Step, 0, len(t.Steps))
	for i, s := range t.Steps {
		switch {
		case s.Run != nil:
			st := Step{Kind: StepKindRun, Command: s.Run.Command, Env: s.Run.Env}
			if s.Run.Name != nil && *s.Run.Name != "" {
				st.Name = *s.Run.Name
			} else {
				st.Name = runStepName(s.Run.Command, i)
			}
			if s.Run.Shell != nil {
				st.Shell = *s.Run.Shell
			}
			steps = append(steps, st)
		case s.SaveToWorkspace != nil:
			steps = append(steps, Step{Name: "save-to-workspace", Kind: StepKindSaveToWorkspace, Contents: s.SaveToWorkspace.Contents})
		case s.RestoreWorkspace != nil:
			steps = append(steps, Step{Name: "restore-workspace", Kind: StepKindRestoreWorkspace, DestDir: s.RestoreWorkspace.DestDir})
		default:
			// Admission forbids it; keep indexes aligned with the API's steps anyway so the toolbox
			// reports the step as failed instead of shifting the others.
			steps = append(steps, Step{Name: "step-" + strconv.Itoa(i)})
		}
	}
	return steps
}

const maxDefaultNameLen = 40

func runStepName(command string, i int) string {
	for line := range strings.Lines(command) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if utf8.RuneCountInString(line) > maxDefaultNameLen {
			line = string([]rune(line)[:maxDefaultNameLen])
		}
		return line
	}
	return "run-" + strconv.Itoa(i)
}

// StepLogPath is the log of step i.
func StepLogPath(dir string, i int) string {
	return filepath.Join(dir, StepsDir, strconv.Itoa(i)+".log")
}

// StepResultPath is the result of step i.
func StepResultPath(dir string, i int) string {
	return filepath.Join(dir, StepsDir, strconv.Itoa(i)+".json")
}

// ArchivePath is the archive saveToWorkspace step i makes.
func ArchivePath(dir string, i int) string {
	return filepath.Join(dir, ArchivesDir, strconv.Itoa(i)+".tar")
}

// WorkspaceArchivePath is where the executor puts archive i (its step index in the parent) of
// parent task source.
func WorkspaceArchivePath(dir, source string, i int) string {
	return filepath.Join(dir, WorkspaceDir, source, strconv.Itoa(i)+".tar")
}

// WriteTaskFile creates the shared directory's layout and writes task.json; the executor calls it
// before starting the container. The directories must also be writable by the container's user.
func WriteTaskFile(dir string, tf *TaskFile) error {
	for _, d := range []string{StepsDir, ArchivesDir, WorkspaceDir} {
		// World-writable: the container's user (any uid) writes the steps' logs and archives here.
		if err := os.MkdirAll(filepath.Join(dir, d), 0o777); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
		if err := os.Chmod(filepath.Join(dir, d), 0o777); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	data, err := json.Marshal(tf)
	if err != nil {
		return fmt.Errorf("encoding task file: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, TaskFileName), data)
}

// ReadTaskFile reads task.json.
func ReadTaskFile(dir string) (*TaskFile, error) {
	return readTaskFile(filepath.Join(dir, TaskFileName))
}

func readTaskFile(path string) (*TaskFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading task file: %w", err)
	}
	var tf TaskFile
	if err := json.Unmarshal(data, &tf); err != nil {
		return nil, fmt.Errorf("decoding task file: %w", err)
	}
	return &tf, nil
}

// ReadResult reads the result of step i. The error wraps os.ErrNotExist while the step has not
// started, ErrRefused when the file is not one the executor reads (see OpenFile).
func ReadResult(dir string, i int) (*StepResult, error) {
	f, err := OpenFile(dir, StepResultFile(i), i, "result", maxResultSize)
	if err != nil {
		return nil, fmt.Errorf("reading result of step %d: %w", i, err)
	}
	data, err := readAllBounded(f)
	if err != nil {
		return nil, fmt.Errorf("reading result of step %d: %w", i, err)
	}
	var r StepResult
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decoding result of step %d: %w", i, err)
	}
	return &r, nil
}

// Start lets the toolbox in dir start the steps.
func Start(dir string) error { return touchFile(dir, StartFile) }

// Stop asks the toolbox in dir to stop. The task may have planted something at the stop file: a
// RefusedError says so, and nothing was created.
func Stop(dir string) error { return touchFile(dir, StopFile) }

func writeResult(dir string, i int, r *StepResult) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding result of step %d: %w", i, err)
	}
	return writeFileAtomic(StepResultPath(dir, i), data)
}

// writeFileAtomic replaces path so that a reader on the other side of the bind mount never sees a
// partial file.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
