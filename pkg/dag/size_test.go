package dag

import (
	"fmt"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/objectstore"
)

// sizedRun is a run of n tasks of steps steps each, with long names.
func sizedRun(n, steps int, opts ...func(*v1alpha1.Run)) *v1alpha1.Run {
	run := &v1alpha1.Run{ObjectMeta: metav1.ObjectMeta{Name: "sized", Namespace: "ns"}}
	for i := range n {
		t := task(fmt.Sprintf("task-%03d-%s", i, strings.Repeat("x", 50)))
		t.Steps = nil
		for j := range steps {
			t.Steps = append(t.Steps, v1alpha1.Step{Run: &v1alpha1.RunStep{Name: ptr(fmt.Sprintf("step-%d", j)), Command: "make"}})
		}
		run.Spec.Tasks = append(run.Spec.Tasks, t)
	}
	for _, o := range opts {
		o(run)
	}
	return run
}

func TestValidateSize(t *testing.T) {
	tests := []struct {
		name string
		run  *v1alpha1.Run
		want []wantErr
	}{
		{name: "a usual run", run: sizedRun(20, 10)},
		{name: "many tasks with few steps", run: sizedRun(256, 3)},
		{name: "few tasks with many steps", run: sizedRun(16, 64)},
		{
			name: "many tasks with many steps",
			run:  sizedRun(256, 64),
			want: []wantErr{{typ: field.ErrorTypeInvalid, field: "spec.tasks", detail: "the run is too large"}},
		},
		{
			name: "a kubectl apply annotation counts",
			run: sizedRun(200, 3, func(r *v1alpha1.Run) {
				r.Annotations = map[string]string{"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("a", 900<<10)}
			}),
			want: []wantErr{{typ: field.ErrorTypeInvalid, field: "spec.tasks", detail: "metadata and spec"}},
		},
		{
			name: "managedFields do not count",
			run: sizedRun(200, 3, func(r *v1alpha1.Run) {
				r.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: strings.Repeat("m", 600<<10)}}
			}),
		},
		{
			name: "an environment too large to copy into every task",
			run: sizedRun(2, 1, func(r *v1alpha1.Run) {
				for i := range 17 {
					r.Spec.Environment = append(r.Spec.Environment, v1alpha1.EnvVar{Name: fmt.Sprintf("V%d", i), Value: strings.Repeat("v", 4000)})
				}
			}),
			want: []wantErr{{typ: field.ErrorTypeTooLong, field: "spec.environment"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := ValidateSize(tt.run)
			if len(errs) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(tt.want), errs.ToAggregate())
			}
			for i, w := range tt.want {
				if e := errs[i]; e.Type != w.typ || e.Field != w.field || !strings.Contains(e.Detail, w.detail) {
					t.Errorf("error %d = %q, want type %q field %q detail containing %q", i, e.Error(), w.typ, w.field, w.detail)
				}
			}
		})
	}
}

// TestStatusBoundCoversNamesAndKeys: the lengths StatusBound counts for an ExecutorTask's name and a
// step's log key are those the manager writes, whatever the run's uid, for short names and for
// names long enough to be cut.
func TestStatusBoundCoversNamesAndKeys(t *testing.T) {
	uid := types.UID("6f1c1b8e-3a52-4d4c-9b3e-0d6a1f0e7c21")
	for _, c := range []struct{ ns, run, task string }{
		{"ns", "r", "t"},
		{"team-a", "build-42", "compile"},
		{strings.Repeat("n", 63), strings.Repeat("r", 253), strings.Repeat("t", 63)},
		{"ns", strings.Repeat("r", 230) + ".x", "task"},
	} {
		name := v1alpha1.ExecutorTaskName(c.run, uid, c.task)
		if got := ExecutorTaskNameBound(c.run, c.task); got != len(name) {
			t.Errorf("run %.20s… task %s: name bound %d, the name has %d", c.run, c.task, got, len(name))
		}
		key := objectstore.Task{Namespace: c.ns, Run: c.run, RunUID: string(uid), ExecutorTask: name}.LogKey(63)
		if got := LogKeyBound(c.ns, c.run, len(name)); got < len(key) {
			t.Errorf("run %.20s… task %s: log key bound %d, the key %s has %d", c.run, c.task, got, key, len(key))
		}
	}
}
