package v1alpha1_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/testenv"
)

// TestStatusWritesEvaluateNoValidationRule: the status of a run and of an ExecutorTask is written
// several times per task, and the apiserver evaluates every CEL rule of a custom resource's schema
// on every write of it, status included (a rule on the spec too, though the status subresource
// cannot change the spec). So the rules on their specs are kept out of the schemas (the webhook
// validates a run; an admission policy on the main resource keeps an ExecutorTask's spec as
// scheduled): a status write evaluates none. The apiserver's count of CEL evaluations says it.
// And each status has one writer, which owns it whole: its managed fields are one field.
func TestStatusWritesEvaluateNoValidationRule(t *testing.T) {
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, rsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// No manager serves the Run webhook here: the objects are written as they are stored.
	for _, o := range []client.Object{
		&admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "validating-webhook-configuration"}},
		&admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "mutating-webhook-configuration"}},
	} {
		if err := c.Delete(ctx, o); err != nil {
			t.Fatalf("deleting %s: %v", o.GetName(), err)
		}
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cost"}}); err != nil {
		t.Fatal(err)
	}
	task := rsv1.Task{
		Name:       "a",
		Containers: []rsv1.Container{{Image: "busybox:1.36"}},
		Steps:      []rsv1.Step{{Run: &rsv1.RunStep{Command: "true"}}},
	}
	run := &rsv1.Run{ObjectMeta: metav1.ObjectMeta{Name: "r", Namespace: "cost"}, Spec: rsv1.RunSpec{Tasks: []rsv1.Task{task}}}
	et := &rsv1.ExecutorTask{
		ObjectMeta: metav1.ObjectMeta{Name: "r-a", Namespace: "cost"},
		Spec:       rsv1.ExecutorTaskSpec{RunName: "r", TaskName: "a", Executor: "e", ExecutorUID: "00000000-0000-0000-0000-000000000000", Task: task},
	}
	for _, o := range []client.Object{run, et} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatalf("creating %s: %v", o.GetName(), err)
		}
	}

	before := celEvaluations(t, env.Config)
	const writes = 10
	for i := range writes {
		now := metav1.NewTime(time.Now())
		et.Status = rsv1.ExecutorTaskStatus{Phase: rsv1.TaskPhaseRunning, StartTime: &now, Message: strconv.Itoa(i)}
		if err := c.Status().Update(ctx, et); err != nil {
			t.Fatalf("writing the ExecutorTask's status: %v", err)
		}
		base := run.DeepCopy()
		run.Status.Phase = rsv1.RunPhaseRunning
		run.Status.Progress = strconv.Itoa(i) + "/1"
		if err := c.Status().Patch(ctx, run, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
			t.Fatalf("writing the run's status: %v", err)
		}
	}
	if got := celEvaluations(t, env.Config) - before; got != 0 {
		t.Errorf("%d status writes of a run and of an ExecutorTask evaluated CEL rules %d times, want none", 2*writes, got)
	}

	// Their only writers own each status whole: the managed fields the apiserver stores with the
	// object and recomputes at every write say "status", not each field of each task and step.
	// So is an ExecutorTask's spec, which only the manager writes, and a run's tasks.
	for _, o := range []client.Object{run, et} {
		if err := c.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
			t.Fatal(err)
		}
		statuses := 0
		for _, m := range o.GetManagedFields() {
			var fields map[string]json.RawMessage
			if err := json.Unmarshal(m.FieldsV1.Raw, &fields); err != nil {
				t.Fatal(err)
			}
			if m.Subresource == "status" {
				statuses++
				if string(m.FieldsV1.Raw) != `{"f:status":{}}` {
					t.Errorf("%T %s: the status writer's managed fields are %s, want the status as one field", o, o.GetName(), m.FieldsV1.Raw)
				}
			}
			if spec, ok := fields["f:spec"]; ok && o == client.Object(et) && string(spec) != `{}` {
				t.Errorf("ExecutorTask %s: the creator's managed fields are %s, want the spec as one field", o.GetName(), m.FieldsV1.Raw)
			}
			// A run's tasks are immutable: its submitter owns them as one field, not each task's.
			if spec, ok := fields["f:spec"]; ok && o == client.Object(run) && string(spec) != `{".":{},"f:tasks":{}}` {
				t.Errorf("Run %s: the submitter's managed fields are %s, want the tasks as one field", o.GetName(), m.FieldsV1.Raw)
			}
		}
		if statuses != 1 {
			t.Errorf("%T %s has %d managed-fields entries of its status writer, want 1", o, o.GetName(), statuses)
		}
	}

	// The count is the right one: an Executor's schema has a rule (its endpoint's), evaluated at its write.
	before = celEvaluations(t, env.Config)
	ex := &rsv1.Executor{ObjectMeta: metav1.ObjectMeta{Name: "e", Namespace: "cost"}, Spec: rsv1.ExecutorSpec{Driver: rsv1.DriverKubernetes, Endpoint: "http://10.0.0.7:8090"}}
	if err := c.Create(ctx, ex); err != nil {
		t.Fatalf("creating an Executor: %v", err)
	}
	if celEvaluations(t, env.Config) == before {
		t.Errorf("an Executor's write evaluated no CEL rule: the apiserver's count is not the one read here")
	}
}

// celEvaluations is the apiserver's count of CEL validations of custom resources
// (apiserver_cel_evaluation_duration_seconds_count): one per write of a resource whose schema has
// a rule.
func celEvaluations(t *testing.T, cfg *rest.Config) int {
	t.Helper()
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	body, err := kube.RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatalf("reading the apiserver's metrics: %v", err)
	}
	n := 0
	for sc := bufio.NewScanner(bytes.NewReader(body)); sc.Scan(); {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || (name != "apiserver_cel_evaluation_duration_seconds_count" && !strings.HasPrefix(name, "apiserver_cel_evaluation_duration_seconds_count{")) {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			t.Fatalf("parsing %q: %v", sc.Text(), err)
		}
		n += int(v)
	}
	return n
}
