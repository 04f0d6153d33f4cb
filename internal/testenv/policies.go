package testenv

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/manager"
)

// PolicyFiles are the files of config/crd that are not CRDs: the admission policies that belong to
// the API (an ExecutorTask's spec is immutable), applied wherever the CRDs are.
var PolicyFiles = []string{"executortask_policy.yaml"}

// InstallPolicies applies (server-side) the admission policies of PolicyFiles under root's
// config/crd. They take effect a moment later (Start waits for it).
func InstallPolicies(ctx context.Context, cfg *rest.Config, root string) error {
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		return err
	}
	for _, name := range PolicyFiles {
		objs, err := decodeAll(filepath.Join(root, "config", "crd", name))
		if err != nil {
			return err
		}
		for _, o := range objs {
			u := o.(*unstructured.Unstructured)
			if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("runservice-testenv"), client.ForceOwnership); err != nil {
				return fmt.Errorf("applying %s %s from %s: %w", u.GetKind(), u.GetName(), name, err)
			}
		}
	}
	return nil
}

// waitForPolicies waits until the apiserver enforces the policies: until a dry-run change of an
// ExecutorTask's spec is refused, on a probe ExecutorTask it creates in the default namespace and
// deletes after.
func waitForPolicies(ctx context.Context, cfg *rest.Config) error {
	c, err := client.New(cfg, client.Options{Scheme: manager.Scheme()})
	if err != nil {
		return err
	}
	probe := &rsv1.ExecutorTask{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "policy-probe-", Namespace: corev1.NamespaceDefault},
		Spec: rsv1.ExecutorTaskSpec{RunName: "probe", TaskName: "probe", Executor: "none", ExecutorUID: "none", Task: rsv1.Task{
			Name: "probe", Containers: []rsv1.Container{{Image: "none"}}, Steps: []rsv1.Step{{Run: &rsv1.RunStep{Command: "true"}}},
		}},
	}
	if err := c.Create(ctx, probe); err != nil {
		return fmt.Errorf("creating the policies' probe: %w", err)
	}
	defer func() { _ = c.Delete(context.Background(), probe) }()
	changed := probe.DeepCopy()
	changed.Spec.TaskName = "changed"
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		err := c.Update(ctx, changed.DeepCopy(), client.DryRunAll)
		switch {
		case err == nil:
			return false, nil // not enforced yet
		case apierrors.IsInvalid(err) && strings.Contains(err.Error(), "only stop can change"):
			return true, nil
		default:
			return false, err
		}
	})
	if err != nil {
		return fmt.Errorf("waiting for the ExecutorTask policy to be enforced: %w", err)
	}
	return nil
}
