package dag

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"runservice.dev/runservice/api/v1alpha1"
)

// wantErr is one expected validation error; detail, when set, must be part of the error's detail.
type wantErr struct {
	typ    field.ErrorType
	field  string
	detail string
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		spec *v1alpha1.RunSpec
		want []wantErr
	}{
		{
			name: "valid diamond with workspaces and change groups",
			spec: runSpec(tasks(task("a"), task("b", dependsOn("a"), restoreWorkspace), task("c", dependsOn("a", onSuccess, onFailure)),
				task("d", dependsOn("b"), dependsOn("c"), restoreWorkspace)),
				func(s *v1alpha1.RunSpec) { s.ChangeGroups = []string{"main", "deploy"} }),
		},
		{
			name: "nil spec",
		},
		{
			name: "duplicate task name",
			spec: runSpec(tasks(task("a"), task("b"), task("a"))),
			want: []wantErr{{typ: field.ErrorTypeDuplicate, field: "spec.tasks[2].name"}},
		},
		{
			name: "dependency on an unknown task",
			spec: runSpec(tasks(task("a"), task("b", dependsOn("a"), dependsOn("missing")))),
			want: []wantErr{{typ: field.ErrorTypeNotFound, field: "spec.tasks[1].depends[1].task"}},
		},
		{
			name: "self dependency",
			spec: runSpec(tasks(task("a", dependsOn("a")))),
			want: []wantErr{{typ: field.ErrorTypeInvalid, field: "spec.tasks[0].depends[0].task", detail: "itself"}},
		},
		{
			name: "duplicate dependency entry",
			spec: runSpec(tasks(task("a"), task("b", dependsOn("a"), dependsOn("a", onFailure)))),
			want: []wantErr{{typ: field.ErrorTypeDuplicate, field: "spec.tasks[1].depends[1].task"}},
		},
		{
			name: "cycle of three",
			spec: runSpec(tasks(task("x"), task("a", dependsOn("b")), task("b", dependsOn("c")), task("c", dependsOn("a"), dependsOn("x")))),
			want: []wantErr{{typ: field.ErrorTypeInvalid, field: "spec.tasks[1].depends", detail: "a -> b -> c -> a"}},
		},
		{
			name: "two separate cycles",
			spec: runSpec(tasks(task("a", dependsOn("b")), task("b", dependsOn("a")), task("c", dependsOn("d")), task("d", dependsOn("c")))),
			want: []wantErr{
				{typ: field.ErrorTypeInvalid, field: "spec.tasks[0].depends", detail: "a -> b -> a"},
				{typ: field.ErrorTypeInvalid, field: "spec.tasks[2].depends", detail: "c -> d -> c"},
			},
		},
		{
			name: "tangled cycles are reported once, naming the other tasks",
			spec: runSpec(tasks(task("a", dependsOn("b")), task("b", dependsOn("a"), dependsOn("c")), task("c", dependsOn("b")))),
			want: []wantErr{{typ: field.ErrorTypeInvalid, field: "spec.tasks[0].depends", detail: "a -> b -> a (each depends on the next); also on a cycle with them: c"}},
		},
		{
			name: "a task below a cycle is not part of it",
			spec: runSpec(tasks(task("a", dependsOn("b")), task("b", dependsOn("a")), task("c", dependsOn("a")))),
			want: []wantErr{{typ: field.ErrorTypeInvalid, field: "spec.tasks[0].depends", detail: "a -> b -> a (each depends on the next)"}},
		},
		{
			name: "duplicate change group",
			spec: runSpec(tasks(task("a")), func(s *v1alpha1.RunSpec) { s.ChangeGroups = []string{"main", "deploy", "main"} }),
			want: []wantErr{{typ: field.ErrorTypeDuplicate, field: "spec.changeGroups[2]"}},
		},
		{
			name: "restoreWorkspace in a task without parents",
			spec: runSpec(tasks(task("a", restoreWorkspace), task("b", dependsOn("a"), restoreWorkspace))),
			want: []wantErr{{typ: field.ErrorTypeInvalid, field: "spec.tasks[0].steps[1].restoreWorkspace", detail: "no parent workspace"}},
		},
		{
			name: "a step of no kind and one of two",
			spec: runSpec(tasks(task("a", func(t *v1alpha1.Task) {
				t.Steps = append(t.Steps, v1alpha1.Step{}, v1alpha1.Step{
					Run: &v1alpha1.RunStep{Command: "make"}, SaveToWorkspace: &v1alpha1.SaveToWorkspaceStep{},
				})
			}))),
			want: []wantErr{
				{typ: field.ErrorTypeInvalid, field: "spec.tasks[0].steps[1]", detail: "exactly one of run, saveToWorkspace or restoreWorkspace"},
				{typ: field.ErrorTypeInvalid, field: "spec.tasks[0].steps[2]", detail: "exactly one of run, saveToWorkspace or restoreWorkspace"},
			},
		},
		{
			name: "resources other than cpu and memory",
			spec: runSpec(tasks(task("a", func(t *v1alpha1.Task) {
				t.Containers[0].Resources = &v1alpha1.ContainerResources{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), "nvidia.com/gpu": resource.MustParse("1")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi"), corev1.ResourceEphemeralStorage: resource.MustParse("1Gi")},
				}
			}))),
			want: []wantErr{
				{typ: field.ErrorTypeNotSupported, field: "spec.tasks[0].containers[0].resources.requests[nvidia.com/gpu]", detail: `"cpu", "memory"`},
				{typ: field.ErrorTypeNotSupported, field: "spec.tasks[0].containers[0].resources.limits[ephemeral-storage]", detail: `"cpu", "memory"`},
			},
		},
		{
			name: "approvals of tasks that need approval",
			spec: runSpec(tasks(task("a"), task("b", dependsOn("a"), needsApproval), task("c", needsApproval)), approved("c", "b")),
		},
		{
			name: "approval of an unknown task",
			spec: runSpec(tasks(task("a"), task("deploy", dependsOn("a"), needsApproval)), approved("deploy", "deplyo")),
			want: []wantErr{{typ: field.ErrorTypeNotFound, field: "spec.approvedTasks[1]"}},
		},
		{
			name: "approval of a task without needsApproval",
			spec: runSpec(tasks(task("a"), task("deploy", dependsOn("a"), needsApproval)), approved("a")),
			want: []wantErr{{typ: field.ErrorTypeInvalid, field: "spec.approvedTasks[0]", detail: "task a does not have needsApproval"}},
		},
		{
			name: "several errors at once, in field order",
			spec: runSpec(tasks(task("a", dependsOn("a"), dependsOn("a")), task("a", dependsOn("nope")), task("b", restoreWorkspace)),
				func(s *v1alpha1.RunSpec) { s.ChangeGroups = []string{"g", "g"} }, approved("x")),
			want: []wantErr{
				{typ: field.ErrorTypeDuplicate, field: "spec.tasks[1].name"},
				{typ: field.ErrorTypeInvalid, field: "spec.tasks[0].depends[0].task"},
				{typ: field.ErrorTypeDuplicate, field: "spec.tasks[0].depends[1].task"},
				{typ: field.ErrorTypeNotFound, field: "spec.tasks[1].depends[0].task"},
				{typ: field.ErrorTypeInvalid, field: "spec.tasks[2].steps[1].restoreWorkspace"},
				{typ: field.ErrorTypeDuplicate, field: "spec.changeGroups[1]"},
				{typ: field.ErrorTypeNotFound, field: "spec.approvedTasks[0]"},
			},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := Validate(tt.spec, field.NewPath("spec"))
			if len(errs) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(errs), len(tt.want), errs.ToAggregate())
			}
			for i, w := range tt.want {
				e := errs[i]
				if e.Type != w.typ || e.Field != w.field || !strings.Contains(e.Detail, w.detail) {
					t.Errorf("error %d = %q, want type %q field %q detail containing %q", i, e.Error(), w.typ, w.field, w.detail)
				}
				// The message people read names the field.
				if !strings.HasPrefix(e.Error(), w.field+":") {
					t.Errorf("error %d message %q does not start with the field %q", i, e.Error(), w.field)
				}
			}
		})
	}
}

// TestValidateApprovedTasks: on an update only the entries the update adds are judged, so a run
// stored with an approval that no longer passes (an older manager, or the webhook off) can still be
// updated, while each new entry names its index.
func TestValidateApprovedTasks(t *testing.T) {
	spec := func(approvals ...string) *v1alpha1.RunSpec {
		return runSpec(tasks(task("build"), task("deploy", dependsOn("build"), needsApproval)), approved(approvals...))
	}
	tests := []struct {
		name string
		spec *v1alpha1.RunSpec
		old  []string
		want []wantErr
	}{
		{name: "nothing new", spec: spec("deploy"), old: []string{"deploy"}},
		{name: "an old bad entry is not judged again", spec: spec("typo", "deploy"), old: []string{"typo"}},
		{
			name: "a new bad entry after old ones",
			spec: spec("typo", "deploy", "build"),
			old:  []string{"typo", "deploy"},
			want: []wantErr{{typ: field.ErrorTypeInvalid, field: "spec.approvedTasks[2]", detail: "task build does not have needsApproval"}},
		},
		{
			name: "every entry is new at create",
			spec: spec("deplyo"),
			want: []wantErr{{typ: field.ErrorTypeNotFound, field: "spec.approvedTasks[0]"}},
		},
		{name: "nil spec", old: []string{"x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := ValidateApprovedTasks(tt.spec, tt.old, field.NewPath("spec"))
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

func TestAncestors(t *testing.T) {
	diamond := runSpec(tasks(task("d", dependsOn("b"), dependsOn("c")), task("c", dependsOn("a")), task("b", dependsOn("a")),
		task("a"), task("other")))

	tests := []struct {
		name string
		spec *v1alpha1.RunSpec
		task string
		want []string
	}{
		{name: "diamond sink: parents before children, ties by spec order", spec: diamond, task: "d", want: []string{"a", "c", "b"}},
		{name: "diamond branch", spec: diamond, task: "b", want: []string{"a"}},
		{name: "root has none", spec: diamond, task: "a"},
		{name: "unknown task", spec: diamond, task: "nope"},
		{name: "nil spec", task: "a"},
		{
			name: "chain listed backwards",
			spec: runSpec(tasks(task("c", dependsOn("b")), task("b", dependsOn("a")), task("a"))),
			task: "c",
			want: []string{"a", "b"},
		},
		{
			name: "an ancestor reached by two paths is listed once, after all its own ancestors",
			spec: runSpec(tasks(task("t", dependsOn("x"), dependsOn("y")), task("x", dependsOn("y")), task("y", dependsOn("z")), task("z"))),
			task: "t",
			want: []string{"z", "y", "x"},
		},
		{
			name: "unknown and self dependencies are ignored",
			spec: runSpec(tasks(task("a"), task("b", dependsOn("a"), dependsOn("b"), dependsOn("missing")))),
			task: "b",
			want: []string{"a"},
		},
		{
			name: "cycle does not loop and leaves out the task itself",
			spec: runSpec(tasks(task("r"), task("a", dependsOn("b"), dependsOn("r")), task("b", dependsOn("a")))),
			task: "a",
			want: []string{"r", "b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Ancestors(tt.spec, tt.task)
			if !(len(got) == 0 && len(tt.want) == 0) && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Ancestors(%q) = %q, want %q", tt.task, got, tt.want)
			}
		})
	}
}
