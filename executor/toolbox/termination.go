package toolbox

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// MaxTerminationMessage is how much of a termination message Kubernetes keeps.
const MaxTerminationMessage = 4096

// terminationMessage is {"steps":[<StepResult or null>...]}, one entry per step of the task, null
// for the steps not started. It is cut to MaxTerminationMessage: first the messages go, then the
// last entries, so a list shorter than the task's steps means the rest are unknown.
func terminationMessage(results []*StepResult) []byte {
	if data, n := encodeTermination(results); n == len(results) {
		return data
	}
	stripped := make([]*StepResult, len(results))
	for i, r := range results {
		if r != nil {
			c := *r
			c.Message = ""
			stripped[i] = &c
		}
	}
	data, _ := encodeTermination(stripped)
	return data
}

// encodeTermination encodes the first n of results, as many as fit in MaxTerminationMessage.
func encodeTermination(results []*StepResult) (data []byte, n int) {
	const head, tail = `{"steps":[`, `]}`
	var buf bytes.Buffer
	buf.WriteString(head)
	for i, r := range results {
		entry, err := json.Marshal(r) // null for nil
		if err != nil {
			entry = []byte("null") // a StepResult always encodes; keep the indexes right regardless
		}
		sep := 0
		if i > 0 {
			sep = 1
		}
		if buf.Len()+sep+len(entry)+len(tail) > MaxTerminationMessage {
			break
		}
		if sep > 0 {
			buf.WriteByte(',')
		}
		buf.Write(entry)
		n++
	}
	buf.WriteString(tail)
	return buf.Bytes(), n
}

// writeTermination writes the termination message to path. Failing to is only logged: the
// exit code is already decided, and the stream or the shared directory has the results too.
func (r *runner) writeTermination(path string) {
	if err := os.WriteFile(path, terminationMessage(r.results), 0o644); err != nil {
		r.log.Error("writing the termination message", "path", path, "err", err)
	}
}

// ParseTermination decodes the termination message of a toolbox started with a termination log:
// the result of each step, nil for a step that was not started. The list is shorter than the
// task's steps when the message had to be cut to fit: the results of the steps past its end are
// unknown, and Message is empty in all of them.
func ParseTermination(msg string) ([]*StepResult, error) {
	var m struct {
		Steps *[]*StepResult `json:"steps"`
	}
	if err := json.Unmarshal([]byte(msg), &m); err != nil {
		return nil, fmt.Errorf("decoding the termination message: %w", err)
	}
	if m.Steps == nil {
		return nil, errors.New("decoding the termination message: no steps")
	}
	return *m.Steps, nil
}
