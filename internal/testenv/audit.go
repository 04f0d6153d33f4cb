package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// AuditEvent is what tests and the benchmark read of an event of the apiserver's audit log
// (WithAuditLog): who sent which request about what, and how it was answered.
type AuditEvent struct {
	Stage     string `json:"stage"`
	Verb      string `json:"verb"`
	UserAgent string `json:"userAgent"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	// StageTimestamp is when the request was answered.
	StageTimestamp time.Time `json:"stageTimestamp"`
}

// ScanAuditLog calls each for every completed request about an object (stage ResponseComplete,
// with an objectRef) that the audit log at path holds from offset from to offset to (a negative to:
// its end). The apiserver writes the log in batches of at most a second: a request is in it within
// about a second of its answer.
func ScanAuditLog(path string, from, to int64, each func(AuditEvent) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading the audit log: %w", err)
	}
	defer f.Close()
	if to < 0 {
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("reading the audit log: %w", err)
		}
		to = fi.Size()
	}
	if to < from {
		return fmt.Errorf("the audit log %s shrank from %d to %d bytes (rotated?)", path, from, to)
	}
	s := bufio.NewScanner(io.NewSectionReader(f, from, to-from))
	s.Buffer(make([]byte, 64<<10), 4<<20)
	for s.Scan() {
		var e AuditEvent
		if err := json.Unmarshal(s.Bytes(), &e); err != nil {
			return fmt.Errorf("reading the audit log: %w", err)
		}
		if e.Stage != "ResponseComplete" || e.ObjectRef == nil {
			continue
		}
		if err := each(e); err != nil {
			return err
		}
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("reading the audit log: %w", err)
	}
	return nil
}
