package runops

import (
	"strings"
	"testing"
)

// TestGenerateName: a restart's name is its original's and a dash, cut so that the generated name
// (5 more characters) stays a valid label value, and so that restarts of restarts do not grow it.
func TestGenerateName(t *testing.T) {
	long := strings.Repeat("a", 60) + "-bc"
	for _, c := range []struct{ name, want string }{
		{"nightly", "nightly-"},
		{long, strings.Repeat("a", 57) + "-"},
		{strings.Repeat("a", 56) + "-b", strings.Repeat("a", 56) + "-"},
		{strings.Repeat("a", 56) + "-b-xxxxx", strings.Repeat("a", 56) + "-"},
	} {
		if got := generateName(c.name); got != c.want || len(got)+5 > 63 {
			t.Errorf("generateName(%q) = %q, want %q", c.name, got, c.want)
		}
	}
}
