package v1alpha1

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestTruncateMessage(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  string
	}{
		{"short", "step failed"},
		{"at the limit", strings.Repeat("a", MaxMessageLength)},
		{"one over", strings.Repeat("a", MaxMessageLength+1)},
		{"multi-byte runes across the cut", strings.Repeat("é", MaxMessageLength)},
		{"huge", strings.Repeat("x", 10<<20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := TruncateMessage(tc.msg)
			switch {
			case len(got) > MaxMessageLength:
				t.Fatalf("%d bytes, want at most %d", len(got), MaxMessageLength)
			case !utf8.ValidString(got):
				t.Fatalf("not valid UTF-8 after the cut")
			case len(tc.msg) <= MaxMessageLength && got != tc.msg:
				t.Fatalf("a message that fits was changed")
			case len(tc.msg) > MaxMessageLength && !strings.HasSuffix(got, "(truncated)"):
				t.Fatalf("a cut message does not say so: %q", got[len(got)-20:])
			}
		})
	}
}
