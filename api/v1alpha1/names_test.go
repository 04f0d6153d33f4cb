package v1alpha1

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestExecutorTaskName(t *testing.T) {
	const uid, other = types.UID("0b6c3f43-8f0c-4c55-9a43-3f6e3e0b9e11"), types.UID("9d1f2f8e-6a3c-4b1e-8a0e-2f7b5c4d3e21")
	long := strings.Repeat("r", 241) + ".x" // cut at its "."
	tests := []struct {
		name       string
		a, b       [3]string // run, uid, task
		wantSame   bool
		wantPrefix string
	}{
		{name: "the same run and task give the same name", a: [3]string{"build", string(uid), "test"}, b: [3]string{"build", string(uid), "test"}, wantSame: true, wantPrefix: "build-test-"},
		{name: "names that read the same in two runs", a: [3]string{"deploy-prod", string(uid), "api"}, b: [3]string{"deploy", string(other), "prod-api"}, wantPrefix: "deploy-prod-api-"},
		{name: "a run created again under the same name", a: [3]string{"again", string(uid), "a"}, b: [3]string{"again", string(other), "a"}, wantPrefix: "again-a-"},
		{name: "tasks of one run whose cut names read the same", a: [3]string{long, string(uid), "task-1"}, b: [3]string{long, string(uid), "task-2"}, wantPrefix: strings.Repeat("r", 241) + "-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := ExecutorTaskName(tt.a[0], types.UID(tt.a[1]), tt.a[2])
			b := ExecutorTaskName(tt.b[0], types.UID(tt.b[1]), tt.b[2])
			if (a == b) != tt.wantSame {
				t.Errorf("%q and %q: same %v, want %v", a, b, a == b, tt.wantSame)
			}
			for _, n := range []string{a, b} {
				if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
					t.Errorf("%q is not a valid name: %v", n, errs)
				}
				if !strings.HasPrefix(n, tt.wantPrefix) || len(n) > 253 {
					t.Errorf("%q (%d characters): want it to start %q and fit 253", n, len(n), tt.wantPrefix)
				}
			}
		})
	}
}
