package docker

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

func TestLimits(t *testing.T) {
	for name, tc := range map[string]struct {
		res          *rsv1.ContainerResources
		memory, nano int64
	}{
		"none":          {},
		"requests only": {res: &rsv1.ContainerResources{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")}}},
		"cpu and memory": {
			res:    &rsv1.ContainerResources{Limits: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("64Mi")}},
			memory: 64 << 20, nano: 500_000_000,
		},
	} {
		t.Run(name, func(t *testing.T) {
			got := limits(&rsv1.Container{Resources: tc.res})
			if got.Memory != tc.memory || got.NanoCPUs != tc.nano {
				t.Fatalf("memory %d nanoCPUs %d, want %d %d", got.Memory, got.NanoCPUs, tc.memory, tc.nano)
			}
		})
	}
}
