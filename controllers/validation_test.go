package controllers_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// badRunCase is a manifest a user could apply that the apiserver must refuse as a whole.
type badRunCase struct {
	name     string
	manifest string
	// path is the field path the error must name; phrase is what it must say about it.
	path, phrase string
	// unknownField marks a manifest that is only wrong because of a field the schema does not
	// have. The apiserver drops such fields (with a warning) unless the client asks for strict
	// field validation, as kubectl does by default, so the Go client asks for it too.
	unknownField bool
}

// badRunCases cover the CRD schema (OpenAPI markers and CEL rules) and the webhook's graph checks.
// The cases with changeGroups are not suspended, so a webhook that admitted them before validating
// would create their ChangeGroups.
var badRunCases = []badRunCase{
	{
		name: "cycle of two tasks",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: cycle-of-two
spec:
  changeGroups:
  - cycle-of-two
  tasks:
  - name: a
    containers:
    - image: busybox:1.36
    depends:
    - task: b
    steps:
    - run:
        command: echo a
  - name: b
    containers:
    - image: busybox:1.36
    depends:
    - task: a
    steps:
    - run:
        command: echo b
`,
		path:   "spec.tasks[0].depends",
		phrase: "tasks form a dependency cycle: a -> b -> a",
	},
	{
		name: "cycle of three tasks",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: cycle-of-three
spec:
  changeGroups:
  - cycle-of-three
  tasks:
  - name: checkout
    containers:
    - image: alpine/git:2.45
    steps:
    - run:
        command: git clone https://example.com/repo.git .
  - name: build
    containers:
    - image: golang:1.26
    depends:
    - task: checkout
    - task: package
    steps:
    - run:
        command: go build ./...
  - name: test
    containers:
    - image: golang:1.26
    depends:
    - task: build
    steps:
    - run:
        command: go test ./...
  - name: package
    containers:
    - image: golang:1.26
    depends:
    - task: test
    steps:
    - run:
        command: tar czf app.tgz bin/
`,
		path:   "spec.tasks[1].depends",
		phrase: "tasks form a dependency cycle: build -> package -> test -> build",
	},
	{
		name: "dependency on an unknown task",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: unknown-dependency
spec:
  changeGroups:
  - unknown-dependency
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
  - name: test
    containers:
    - image: golang:1.26
    depends:
    - task: biuld
    steps:
    - run:
        command: go test ./...
`,
		path:   "spec.tasks[1].depends[0].task",
		phrase: `Not found: "biuld"`,
	},
	{
		name: "task depends on itself",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: self-dependency
spec:
  changeGroups:
  - self-dependency
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    depends:
    - task: build
    steps:
    - run:
        command: go build ./...
`,
		path:   "spec.tasks[0].depends[0].task",
		phrase: "a task cannot depend on itself",
	},
	{
		name: "duplicate task names",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: duplicate-tasks
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go vet ./...
`,
		path:   "spec.tasks[1].name",
		phrase: `Duplicate value: "build"`,
	},
	{
		name: "duplicate dependency entry",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: duplicate-dependency
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
  - name: notify
    containers:
    - image: curlimages/curl:8.8.0
    depends:
    - task: build
    - task: build
      conditions:
      - OnFailure
    steps:
    - run:
        command: curl -X POST https://example.com/hook
`,
		path:   "spec.tasks[1].depends[1]",
		phrase: `Duplicate value: {"task":"build"}`,
	},
	{
		name: "dependency without a task name",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: empty-dependency
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
  - name: test
    containers:
    - image: golang:1.26
    depends:
    - task: ""
    steps:
    - run:
        command: go test ./...
`,
		path:   "spec.tasks[1].depends[0].task",
		phrase: "should be at least 1 chars long",
	},
	{
		name: "unknown depend condition",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: bad-condition
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
  - name: cleanup
    containers:
    - image: busybox:1.36
    depends:
    - task: build
      conditions:
      - OnFinished
    steps:
    - run:
        command: rm -rf /tmp/build
`,
		path:   "spec.tasks[1].depends[0].conditions[0]",
		phrase: `Unsupported value: "OnFinished"`,
	},
	{
		name: "step with two kinds",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: step-two-kinds
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build -o bin/app ./cmd/app
      saveToWorkspace:
        contents:
        - sourceDir: bin
          destDir: bin
          paths:
          - app
`,
		path:   "spec.tasks[0].steps[0]",
		phrase: "a step must have exactly one of run, saveToWorkspace or restoreWorkspace",
	},
	{
		name: "step with no kind",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: step-no-kind
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
    - {}
`,
		path:   "spec.tasks[0].steps[1]",
		phrase: "a step must have exactly one of run, saveToWorkspace or restoreWorkspace",
	},
	{
		name: "step with an empty run",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: step-null-run
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
`,
		path:   "spec.tasks[0].steps[0]",
		phrase: "a step must have exactly one of run, saveToWorkspace or restoreWorkspace",
	},
	{
		name: "task without steps",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: no-steps
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps: []
`,
		path:   "spec.tasks[0].steps",
		phrase: "should have at least 1 items",
	},
	{
		name: "run step without command",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: no-command
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        name: compile
`,
		path:   "spec.tasks[0].steps[0].run.command",
		phrase: "Required value",
	},
	{
		name: "restoreWorkspace in a task without parents",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: restore-without-parents
spec:
  changeGroups:
  - restore-without-parents
  tasks:
  - name: test
    containers:
    - image: golang:1.26
    steps:
    - restoreWorkspace:
        destDir: /src
    - run:
        command: go test ./...
`,
		path:   "spec.tasks[0].steps[0].restoreWorkspace",
		phrase: "the task has no depends, so there is no parent workspace to restore",
	},
	{
		name: "empty tasks list",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: empty-tasks
spec:
  tasks: []
`,
		path:   "spec.tasks",
		phrase: "should have at least 1 items",
	},
	{
		name: "missing tasks",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: missing-tasks
spec:
  suspend: true
`,
		path:   "spec.tasks",
		phrase: "Required value",
	},
	{
		name: "missing spec",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: missing-spec
`,
		path:   "spec",
		phrase: "Required value",
	},
	{
		name: "zero timeoutSeconds",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: zero-timeout
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    timeoutSeconds: 0
    steps:
    - run:
        command: go build ./...
`,
		path:   "spec.tasks[0].timeoutSeconds",
		phrase: "should be greater than or equal to 1",
	},
	{
		name: "negative timeoutSeconds",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: negative-timeout
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    timeoutSeconds: -60
    steps:
    - run:
        command: go build ./...
`,
		path:   "spec.tasks[0].timeoutSeconds",
		phrase: "should be greater than or equal to 1",
	},
	{
		name: "timeoutSeconds over a week",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: long-timeout
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    timeoutSeconds: 604801
    steps:
    - run:
        command: go build ./...
`,
		path:   "spec.tasks[0].timeoutSeconds",
		phrase: "should be less than or equal to 604800",
	},
	{
		name: "unknown arch",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: bad-arch
spec:
  tasks:
  - name: build
    arch: x86_64
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
`,
		path:   "spec.tasks[0].arch",
		phrase: `Unsupported value: "x86_64"`,
	},
	{
		name: "task without containers",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: no-containers
spec:
  tasks:
  - name: build
    steps:
    - run:
        command: go build ./...
`,
		path:   "spec.tasks[0].containers",
		phrase: "Required value",
	},
	{
		name: "empty image",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: empty-image
spec:
  tasks:
  - name: build
    containers:
    - image: ""
    steps:
    - run:
        command: go build ./...
`,
		path:   "spec.tasks[0].containers[0].image",
		phrase: "should be at least 1 chars long",
	},
	{
		name: "task name with uppercase letters",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: uppercase-task
spec:
  tasks:
  - name: Build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
`,
		path:   "spec.tasks[0].name",
		phrase: "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
	},
	{
		name: "task name with an underscore",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: underscore-task
spec:
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
  - name: unit_tests
    containers:
    - image: golang:1.26
    depends:
    - task: build
    steps:
    - run:
        command: go test ./...
`,
		path:   "spec.tasks[1].name",
		phrase: "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
	},
	{
		name: "too many change groups",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: too-many-groups
spec:
  changeGroups:
  - group-1
  - group-2
  - group-3
  - group-4
  - group-5
  - group-6
  - group-7
  - group-8
  - group-9
  tasks:
  - name: deploy
    containers:
    - image: busybox:1.36
    steps:
    - run:
        command: ./deploy.sh
`,
		path:   "spec.changeGroups",
		phrase: "must have at most 8 items",
	},
	{
		name: "change group name with invalid characters",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: bad-group-name
spec:
  changeGroups:
  - prod_deploy
  tasks:
  - name: deploy
    containers:
    - image: busybox:1.36
    steps:
    - run:
        command: ./deploy.sh
`,
		path:   "spec.changeGroups[0]",
		phrase: "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
	},
	{
		name: "duplicate change group",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: duplicate-group
spec:
  changeGroups:
  - duplicate-group
  - duplicate-group
  tasks:
  - name: deploy
    containers:
    - image: busybox:1.36
    steps:
    - run:
        command: ./deploy.sh
`,
		path:   "spec.changeGroups[1]",
		phrase: `Duplicate value: "duplicate-group"`,
	},
	{
		name: "approval of a task that does not exist",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: approve-typo
spec:
  changeGroups:
  - approve-typo
  approvedTasks:
  - deploy
  - deplyo
  tasks:
  - name: deploy
    needsApproval: true
    containers:
    - image: busybox:1.36
    steps:
    - run:
        command: ./deploy.sh
`,
		path:   "spec.approvedTasks[1]",
		phrase: `Not found: "deplyo"`,
	},
	{
		name: "approval of a task that needs none",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: approve-unneeded
spec:
  changeGroups:
  - approve-unneeded
  approvedTasks:
  - build
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
  - name: deploy
    needsApproval: true
    depends:
    - task: build
    containers:
    - image: busybox:1.36
    steps:
    - run:
        command: ./deploy.sh
`,
		path:   "spec.approvedTasks[0]",
		phrase: "task build does not have needsApproval",
	},
	{
		// The manager names ExecutorTasks <run>-<task>, and a task name may have 63 characters.
		name: "run name too long for its task names",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: ` + strings.Repeat("long-run-name-", 14) + `x
spec:
  changeGroups:
  - long-name
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
`,
		path:   "metadata.name",
		phrase: "Too long",
	},
	{
		name: "image set on the task instead of a container",
		manifest: `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: unknown-field
spec:
  tasks:
  - name: build
    image: golang:1.26
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
`,
		path:         "spec.tasks[0].image",
		phrase:       "unknown field",
		unknownField: true,
	},
}

func TestBadInputIsRejected(t *testing.T) {
	kubectl := newValidationKubectl(t)
	goNS, kubectlNS := newNamespace(t), newNamespace(t)

	t.Run("cases", func(t *testing.T) {
		for _, tc := range badRunCases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				t.Run("go client", func(t *testing.T) {
					obj := decodeRunManifest(t, tc.manifest)
					obj.SetNamespace(goNS)
					var opts []client.CreateOption
					if tc.unknownField {
						opts = append(opts, client.FieldValidation(metav1.FieldValidationStrict))
					}
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					err := k8s.Create(ctx, obj, opts...)
					if err == nil {
						_ = k8s.Delete(ctx, obj)
						t.Fatalf("creating run %s succeeded, want it rejected", obj.GetName())
					}
					wantReason := metav1.StatusReasonInvalid
					if tc.unknownField {
						wantReason = metav1.StatusReasonBadRequest
					}
					if got := apierrors.ReasonForError(err); got != wantReason {
						t.Errorf("reason %q, want %q (error: %v)", got, wantReason, err)
					}
					expectFieldError(t, err.Error(), tc.path, tc.phrase)
					expectNothingCreated(t, goNS, obj)
				})
				t.Run("kubectl", func(t *testing.T) {
					obj := decodeRunManifest(t, tc.manifest)
					out, err := kubectl.apply(t, kubectlNS, tc.manifest)
					if err == nil {
						obj.SetNamespace(kubectlNS)
						_ = k8s.Delete(context.Background(), obj)
						t.Fatalf("kubectl apply succeeded, want it rejected; output:\n%s", out)
					}
					expectFieldError(t, out, tc.path, tc.phrase)
					expectNothingCreated(t, kubectlNS, obj)
				})
			})
		}
	})

	for _, ns := range []string{goNS, kubectlNS} {
		var groups rsv1.ChangeGroupList
		if err := k8s.List(context.Background(), &groups, client.InNamespace(ns)); err != nil {
			t.Fatalf("listing change groups: %v", err)
		}
		for _, g := range groups.Items {
			t.Errorf("change group %s/%s exists, though every run was rejected", ns, g.Name)
		}
	}
}

// immutableCase changes a created run in a way the apiserver must refuse.
type immutableCase struct {
	name string
	// withoutGroups creates the run without changeGroups.
	withoutGroups bool
	// before is an allowed change made first, if any.
	before func(*unstructured.Unstructured)
	change func(*unstructured.Unstructured)
	// path is the field path the error must name; phrase is what it must say about it.
	path, phrase string
	// absentGroups are change groups only the rejected change names; they must not exist after it.
	absentGroups []string
}

// immutableRun is suspended, so that no task is scheduled and the webhook does not admit it into its
// change group. (The run controller still creates the group, release, on first use.)
const immutableRun = `
apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: release
spec:
  suspend: true
  changeGroups:
  - release
  tasks:
  - name: build
    containers:
    - image: golang:1.26
    steps:
    - run:
        command: go build ./...
  - name: test
    containers:
    - image: golang:1.26
    depends:
    - task: build
    steps:
    - run:
        command: go test ./...
`

func TestImmutableFieldsOnUpdate(t *testing.T) {
	kubectl := newValidationKubectl(t)
	ns := newNamespace(t)

	setGroups := func(groups ...string) func(*unstructured.Unstructured) {
		return func(u *unstructured.Unstructured) {
			if err := unstructured.SetNestedStringSlice(u.Object, groups, "spec", "changeGroups"); err != nil {
				panic(err)
			}
		}
	}
	setStop := func(stop bool) func(*unstructured.Unstructured) {
		return func(u *unstructured.Unstructured) {
			if err := unstructured.SetNestedField(u.Object, stop, "spec", "stop"); err != nil {
				panic(err)
			}
		}
	}
	changeTasks := func(change func(tasks []any) []any) func(*unstructured.Unstructured) {
		return func(u *unstructured.Unstructured) {
			tasks, _, err := unstructured.NestedSlice(u.Object, "spec", "tasks")
			if err != nil {
				panic(err)
			}
			if err := unstructured.SetNestedSlice(u.Object, change(tasks), "spec", "tasks"); err != nil {
				panic(err)
			}
		}
	}

	cases := []immutableCase{
		{
			name:         "add a change group",
			change:       setGroups("release", "hotfix"),
			path:         "spec.changeGroups",
			phrase:       "changeGroups is immutable",
			absentGroups: []string{"hotfix"},
		},
		{
			name:         "replace the change group",
			change:       setGroups("staging"),
			path:         "spec.changeGroups",
			phrase:       "changeGroups is immutable",
			absentGroups: []string{"staging"},
		},
		{
			name:   "remove the change groups",
			change: func(u *unstructured.Unstructured) { unstructured.RemoveNestedField(u.Object, "spec", "changeGroups") },
			path:   "spec.changeGroups",
			phrase: "changeGroups is immutable",
		},
		{
			name:          "set change groups on a run without",
			withoutGroups: true,
			change:        setGroups("added-later"),
			path:          "spec.changeGroups",
			phrase:        "changeGroups is immutable",
			absentGroups:  []string{"added-later"},
		},
		{
			name: "change a task's command",
			change: changeTasks(func(tasks []any) []any {
				if err := unstructured.SetNestedField(tasks[1].(map[string]any), []any{
					map[string]any{"run": map[string]any{"command": "go test -race ./..."}},
				}, "steps"); err != nil {
					panic(err)
				}
				return tasks
			}),
			path:   "spec.tasks",
			phrase: "tasks are immutable once the run is created",
		},
		{
			name: "add a task",
			change: changeTasks(func(tasks []any) []any {
				return append(tasks, map[string]any{
					"name":       "lint",
					"containers": []any{map[string]any{"image": "golangci/golangci-lint:v2.1"}},
					"steps":      []any{map[string]any{"run": map[string]any{"command": "golangci-lint run"}}},
				})
			}),
			path:   "spec.tasks",
			phrase: "tasks are immutable once the run is created",
		},
		{
			name:   "remove a task",
			change: changeTasks(func(tasks []any) []any { return tasks[:1] }),
			path:   "spec.tasks",
			phrase: "tasks are immutable once the run is created",
		},
		{
			name:   "set stop back to false",
			before: setStop(true),
			change: setStop(false),
			path:   "spec.stop",
			phrase: "stop cannot be undone",
		},
		{
			name:   "remove stop after it was true",
			before: setStop(true),
			change: func(u *unstructured.Unstructured) { unstructured.RemoveNestedField(u.Object, "spec", "stop") },
			path:   "spec.stop",
			phrase: "stop cannot be undone",
		},
	}

	t.Run("cases", func(t *testing.T) {
		for i, tc := range cases {
			manifest := func(name string) *unstructured.Unstructured {
				u := decodeRunManifest(t, immutableRun)
				u.SetName(name)
				u.SetNamespace(ns)
				if tc.withoutGroups {
					unstructured.RemoveNestedField(u.Object, "spec", "changeGroups")
				}
				return u
			}
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				t.Run("go client", func(t *testing.T) {
					u := manifest(fmt.Sprintf("immutable-%d-go", i))
					ctx := context.Background()
					if err := k8s.Create(ctx, u); err != nil {
						t.Fatalf("creating run %s: %v", u.GetName(), err)
					}
					if tc.before != nil {
						if err := updateUnstructuredRun(ctx, u, tc.before); err != nil {
							t.Fatalf("preparing run %s: %v", u.GetName(), err)
						}
					}
					stored := getRun(t, ns, u.GetName())
					err := updateUnstructuredRun(ctx, u, tc.change)
					if err == nil {
						t.Fatalf("updating run %s succeeded, want it rejected", u.GetName())
					}
					if !apierrors.IsInvalid(err) {
						t.Errorf("reason %q, want Invalid (error: %v)", apierrors.ReasonForError(err), err)
					}
					expectFieldError(t, err.Error(), tc.path, tc.phrase)
					expectRunUnchanged(t, stored)
					expectNoChangeGroups(t, ns, tc.absentGroups)
				})
				t.Run("kubectl", func(t *testing.T) {
					u := manifest(fmt.Sprintf("immutable-%d-kubectl", i))
					if out, err := kubectl.applyObject(t, u); err != nil {
						t.Fatalf("creating run %s with kubectl apply: %v\n%s", u.GetName(), err, out)
					}
					if tc.before != nil {
						tc.before(u)
						if out, err := kubectl.applyObject(t, u); err != nil {
							t.Fatalf("preparing run %s with kubectl apply: %v\n%s", u.GetName(), err, out)
						}
					}
					stored := getRun(t, ns, u.GetName())
					tc.change(u)
					out, err := kubectl.applyObject(t, u)
					if err == nil {
						t.Fatalf("kubectl apply succeeded, want it rejected; output:\n%s", out)
					}
					expectFieldError(t, out, tc.path, tc.phrase)
					expectRunUnchanged(t, stored)
					expectNoChangeGroups(t, ns, tc.absentGroups)
				})
			})
		}
	})
}

// TestBadApprovalsOnPatch: a patch of approvedTasks naming a task that does not exist or needs no
// approval is refused with the entry named, through the Go client and kubectl patch, and the run
// keeps its approvals; entries approved before are not judged again.
func TestBadApprovalsOnPatch(t *testing.T) {
	kubectl := newValidationKubectl(t)
	ns := newNamespace(t)
	createRun(t, newRun(ns, "gated", task("build"), task("deploy", dependsOn("build"), needsApproval()),
		task("notify", dependsOn("deploy"), needsApproval())))
	cases := []struct {
		name, patch, path, phrase string
	}{
		{name: "unknown task", patch: `{"spec":{"approvedTasks":["deplyo"]}}`, path: "spec.approvedTasks[0]", phrase: `Not found: "deplyo"`},
		{name: "task without needsApproval", patch: `{"spec":{"approvedTasks":["deploy","build"]}}`, path: "spec.approvedTasks[1]", phrase: "task build does not have needsApproval"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Run("go client", func(t *testing.T) {
				before := getRun(t, ns, "gated")
				err := k8s.Patch(context.Background(), before.DeepCopy(), client.RawPatch(types.MergePatchType, []byte(tc.patch)))
				if !apierrors.IsInvalid(err) {
					t.Fatalf("got %v, want 422 Invalid", err)
				}
				expectFieldError(t, err.Error(), tc.path, tc.phrase)
				expectRunUnchanged(t, before)
			})
			t.Run("kubectl", func(t *testing.T) {
				before := getRun(t, ns, "gated")
				out, err := kubectl.run(t, "--namespace", ns, "patch", "run", "gated", "--type=merge", "-p", tc.patch)
				if err == nil {
					t.Fatalf("kubectl patch succeeded, want it rejected; output:\n%s", out)
				}
				expectFieldError(t, out, tc.path, tc.phrase)
				expectRunUnchanged(t, before)
			})
		})
	}
	// A valid approval is accepted, and adding another one later judges only the new entry.
	for _, approved := range []string{`["deploy"]`, `["deploy","notify"]`} {
		if out, err := kubectl.run(t, "--namespace", ns, "patch", "run", "gated", "--type=merge", "-p", `{"spec":{"approvedTasks":`+approved+`}}`); err != nil {
			t.Fatalf("approving %s: %v\n%s", approved, err, out)
		}
	}
}

// updateUnstructuredRun applies change to the live run and updates it, retrying when the manager's
// status writes got in between.
func updateUnstructuredRun(ctx context.Context, u *unstructured.Unstructured, change func(*unstructured.Unstructured)) error {
	return retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		live := &unstructured.Unstructured{}
		live.SetGroupVersionKind(rsv1.GroupVersion.WithKind("Run"))
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(u), live); err != nil {
			return err
		}
		change(live)
		return k8s.Update(ctx, live)
	})
}

// expectRunUnchanged checks that the stored run has the spec, generation and annotations it had.
func expectRunUnchanged(t *testing.T, before *rsv1.Run) {
	t.Helper()
	after := getRun(t, before.Namespace, before.Name)
	if after.Generation != before.Generation {
		t.Errorf("run %s generation %d, want %d", before.Name, after.Generation, before.Generation)
	}
	if !apiequality.Semantic.DeepEqual(after.Spec, before.Spec) {
		t.Errorf("run %s spec changed:\nbefore %+v\nafter  %+v", before.Name, before.Spec, after.Spec)
	}
	if !apiequality.Semantic.DeepEqual(after.Annotations, before.Annotations) {
		t.Errorf("run %s annotations changed:\nbefore %v\nafter  %v", before.Name, before.Annotations, after.Annotations)
	}
}

// expectFieldError checks that msg names the field path itself (not only a field under it) and
// says phrase.
func expectFieldError(t *testing.T, msg, path, phrase string) {
	t.Helper()
	t.Logf("rejected: %s", strings.TrimSpace(msg))
	if !namesFieldPath(msg, path) {
		t.Errorf("error does not name field %s:\n%s", path, msg)
	}
	if !strings.Contains(msg, phrase) {
		t.Errorf("error does not say %q:\n%s", phrase, msg)
	}
}

func namesFieldPath(msg, path string) bool {
	for rest := msg; ; {
		i := strings.Index(rest, path)
		if i < 0 {
			return false
		}
		rest = rest[i+len(path):]
		if rest == "" || (rest[0] != '.' && rest[0] != '[') {
			return true
		}
	}
}

// expectNothingCreated checks that neither the run nor any of its change groups exists.
func expectNothingCreated(t *testing.T, ns string, obj *unstructured.Unstructured) {
	t.Helper()
	ctx := context.Background()
	err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: obj.GetName()}, &rsv1.Run{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("run %s/%s exists after its creation was rejected (err %v)", ns, obj.GetName(), err)
	}
	groups, _, _ := unstructured.NestedStringSlice(obj.Object, "spec", "changeGroups")
	expectNoChangeGroups(t, ns, groups)
}

// expectNoChangeGroups checks that none of the groups exists in ns.
func expectNoChangeGroups(t *testing.T, ns string, groups []string) {
	t.Helper()
	for _, g := range groups {
		err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: g}, &rsv1.ChangeGroup{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("change group %s/%s exists after a rejected request named it (err %v)", ns, g, err)
		}
	}
}

func decodeRunManifest(t *testing.T, manifest string) *unstructured.Unstructured {
	t.Helper()
	data, err := yaml.ToJSON([]byte(manifest))
	if err != nil {
		t.Fatalf("converting manifest to JSON: %v", err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		t.Fatalf("decoding manifest: %v", err)
	}
	return u
}

// validationKubectl runs the kubectl built with the control plane as an admin.
type validationKubectl struct {
	kubeconfig string
	cacheDir   string
}

func newValidationKubectl(t *testing.T) *validationKubectl {
	t.Helper()
	dir := t.TempDir()
	k := &validationKubectl{kubeconfig: filepath.Join(dir, "kubeconfig"), cacheDir: filepath.Join(dir, "cache")}
	if err := os.WriteFile(k.kubeconfig, env.Kubeconfig, 0o600); err != nil {
		t.Fatalf("writing kubeconfig: %v", err)
	}
	return k
}

// apply runs kubectl apply -f on the manifest in namespace ns and returns its combined output.
func (k *validationKubectl) apply(t *testing.T, ns, manifest string) (string, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "run.yaml")
	if err := os.WriteFile(file, []byte(manifest), 0o600); err != nil {
		t.Fatalf("writing manifest: %v", err)
	}
	return k.run(t, "--namespace", ns, "apply", "-f", file)
}

// run runs kubectl with args and returns its combined output.
func (k *validationKubectl) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.Kubectl(), append([]string{"--kubeconfig", k.kubeconfig, "--cache-dir", k.cacheDir}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// applyObject runs kubectl apply on obj, in obj's namespace.
func (k *validationKubectl) applyObject(t *testing.T, obj *unstructured.Unstructured) (string, error) {
	t.Helper()
	data, err := obj.MarshalJSON()
	if err != nil {
		t.Fatalf("encoding %s: %v", obj.GetName(), err)
	}
	return k.apply(t, obj.GetNamespace(), string(data))
}

// TestExecutorEndpointMustBeHTTPURL: spec.endpoint is where the manager connects, so anything but
// an http(s) URL with a host is refused at apply time, naming the field.
func TestExecutorEndpointMustBeHTTPURL(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	executor := func(name, endpoint string) *rsv1.Executor {
		return &rsv1.Executor{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec:       rsv1.ExecutorSpec{Driver: rsv1.DriverDocker, Endpoint: endpoint},
		}
	}
	for i, bad := range []string{"file:///etc/passwd", "gopher://10.0.0.1:70/", "http://", "10.0.0.1:8090", "not a url", "http://10.0.0.1:8090/?a=b", "http://10.0.0.1:8090/#x", "http://10.0.0.1:8090/secret?"} {
		err := k8s.Create(ctx, executor(fmt.Sprintf("bad-%d", i), bad))
		if err == nil {
			t.Errorf("endpoint %q was accepted, want it refused", bad)
			continue
		}
		if !apierrors.IsInvalid(err) {
			t.Errorf("endpoint %q: error %v, want Invalid", bad, err)
		}
		expectFieldError(t, err.Error(), "spec.endpoint", "http or https URL")
	}
	for i, good := range []string{"http://10.0.0.1:8090", "https://executor-0.executors.ns.svc:8443", "http://[fd00::1]:8090/prefix", ""} {
		if err := k8s.Create(ctx, executor(fmt.Sprintf("good-%d", i), good)); err != nil {
			t.Errorf("endpoint %q refused: %v", good, err)
		}
	}
}
