package kubernetes

import (
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSlimPodKeepsWhatTheDriverReads: the informer's copy of a pod keeps what the driver reads of
// it (its state, whether it mounts its Secret, its node, its log's end) and drops its containers'
// specs, the bulk of a pod.
func TestSlimPodKeepsWhatTheDriverReads(t *testing.T) {
	d := &Driver{opts: Options{UnschedulableAfter: time.Minute}}
	spec := corev1.PodSpec{
		NodeName: "node-1",
		Volumes: []corev1.Volume{
			{Name: "runservice", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: "task", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "rs-1"}}},
		},
		InitContainers: []corev1.Container{{Name: "toolbox", Image: "toolbox", Command: []string{"/toolbox", "install"}}},
		Containers: []corev1.Container{{Name: mainName, Image: "busybox", Command: []string{toolboxBin, "run"},
			Env: []corev1.EnvVar{{Name: "RUNSERVICE_RUN", Value: "r"}}, VolumeMounts: []corev1.VolumeMount{{Name: "runservice", MountPath: sharedDir}}}},
		Tolerations: []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists}},
	}
	statuses := map[string]corev1.PodStatus{
		"pending": {Phase: corev1.PodPending},
		"running": {Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{Name: mainName, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}},
		"exited": {Phase: corev1.PodFailed, ContainerStatuses: []corev1.ContainerStatus{{Name: mainName, State: corev1.ContainerState{
			Terminated: &corev1.ContainerStateTerminated{ExitCode: 3, Message: `[{"phase":"Failed"}]`}}}}},
		"cannot pull": {Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{{Name: mainName, Image: "busybox", State: corev1.ContainerState{
			Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: "not found"}}}}},
		"unschedulable": {Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Reason: corev1.PodReasonUnschedulable, Message: "0/5 nodes are available"}}},
	}
	for name, status := range statuses {
		full := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "rs-1", Namespace: "ns", CreationTimestamp: metav1.NewTime(time.Now().Add(-time.Hour)),
				Annotations: map[string]string{annotationTask: "{}"}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
			Spec:   *spec.DeepCopy(),
			Status: status,
		}
		obj, err := slimPod(full.DeepCopy())
		if err != nil {
			t.Fatal(err)
		}
		slim := obj.(*corev1.Pod)
		if got, want := d.state(slim), d.state(full); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: state %+v from the slim pod, %+v from the pod", name, got, want)
		}
		if hasSecret(slim) != hasSecret(full) || mainStarted(slim) != mainStarted(full) || slim.Spec.NodeName != full.Spec.NodeName ||
			!reflect.DeepEqual(terminationMessage(slim), terminationMessage(full)) || podEnded(slim) != podEnded(full) {
			t.Errorf("%s: the slim pod reads otherwise than the pod", name)
		}
		if len(slim.Spec.Containers)+len(slim.Spec.InitContainers)+len(slim.Spec.Tolerations) != 0 || slim.ManagedFields != nil || slim.Annotations[annotationTask] != "" {
			t.Errorf("%s: the slim pod keeps %d containers, %d init containers, %d tolerations, %d managed fields, task file %q",
				name, len(slim.Spec.Containers), len(slim.Spec.InitContainers), len(slim.Spec.Tolerations), len(slim.ManagedFields), slim.Annotations[annotationTask])
		}
	}
}
