package manager_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/shard"
)

// TestOnlyTheManagerChangesAShardLabel: the managers run as a user of their own; a user allowed to
// update and patch runs (alice), and even a cluster admin, is refused any change of
// runservice.dev/shard or runservice.dev/shard-drain on an existing run (added, edited, removed; by
// merge patch, JSON patch, kubectl replace without the label), with the label named; kubectl apply
// of an edited manifest that never carried the label (client-side and server-side) is admitted and
// keeps it; and the managers' own relabelling (the sharder's drain and move, the old owner's
// acknowledgement) passes.
func TestOnlyTheManagerChangesAShardLabel(t *testing.T) {
	ring, ns := newNamespace(t, "ring"), newNamespace(t, "labels")
	ctx := context.Background()
	mgrUser, err := env.AddUser(envtest.User{Name: "runservice-manager", Groups: []string{"system:masters"}}, env.Config)
	if err != nil {
		t.Fatal(err)
	}
	stopA, err := env.StartManagerAs(mgrUser.Config(), sharded(ring, "replica-a", true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopA)
	dropRunsAtEnd(t, ns)
	alice := kubectlAs(t, "alice", ns, rbacv1.PolicyRule{
		APIGroups: []string{rsv1.GroupVersion.Group}, Resources: []string{"runs"},
		Verbs: []string{"get", "list", "create", "update", "patch"},
	})

	// alice creates her run with kubectl apply: it is labelled by the webhook, not by her manifest.
	manifest := filepath.Join(t.TempDir(), "run.yaml")
	writeRunManifest(t, manifest, ns, "mine", "")
	alice.ok(t, "apply", "-f", manifest)
	run := &rsv1.Run{}
	key := types.NamespacedName{Namespace: ns, Name: "mine"}
	if err := k8s.Get(ctx, key, run); err != nil {
		t.Fatal(err)
	}
	if run.Labels[rsv1.LabelShard] != "replica-a" {
		t.Fatalf("the run is labelled %q, not with its owner replica-a", run.Labels[rsv1.LabelShard])
	}

	shardField := fmt.Sprintf("metadata.labels[%s]", rsv1.LabelShard)
	drainField := fmt.Sprintf("metadata.labels[%s]", rsv1.LabelShardDrain)
	refusals := []struct {
		name, field string
		args        []string
	}{
		{"merge patch edits the shard", shardField, []string{"patch", "run", "mine", "--type=merge", "-p", fmt.Sprintf(`{"metadata":{"labels":{%q:"replica-x"}}}`, rsv1.LabelShard)}},
		{"merge patch removes the shard", shardField, []string{"patch", "run", "mine", "--type=merge", "-p", fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, rsv1.LabelShard)}},
		{"JSON patch removes the shard", shardField, []string{"patch", "run", "mine", "--type=json", "-p", `[{"op":"remove","path":"/metadata/labels/runservice.dev~1shard"}]`}},
		{"kubectl label adds a drain", drainField, []string{"label", "run", "mine", rsv1.LabelShardDrain + "=replica-x"}},
		{"kubectl label --overwrite", shardField, []string{"label", "--overwrite", "run", "mine", rsv1.LabelShard + "=replica-x"}},
	}
	for _, r := range refusals {
		out := alice.refused(t, r.args...)
		if !strings.Contains(out, r.field) || !strings.Contains(out, "runservice-manager") {
			t.Errorf("%s: refused without naming %s and who may change it: %s", r.name, r.field, out)
		}
	}
	// kubectl replace of the run as stored, without the label (read anew after a conflict with the
	// manager's status writes).
	for attempt := 0; ; attempt++ {
		out := alice.refused(t, "replace", "-f", strippedRun(t, key, rsv1.LabelShard))
		if strings.Contains(out, "(Conflict)") && attempt < 5 {
			continue
		}
		if !strings.Contains(out, shardField) || !strings.Contains(out, "runservice-manager") {
			t.Errorf("kubectl replace without the label: refused without naming %s and who may change it: %s", shardField, out)
		}
		break
	}
	// A cluster admin is no manager either.
	err = k8s.Patch(ctx, run, client.RawPatch(types.MergePatchType, fmt.Appendf(nil, `{"metadata":{"labels":{%q:"replica-x"}}}`, rsv1.LabelShardDrain)))
	if err == nil || !strings.Contains(err.Error(), drainField) {
		t.Errorf("a cluster admin's drain label: %v, want a refusal naming %s", err, drainField)
	}

	// An edited manifest that never carried the label applies, and the label stays.
	writeRunManifest(t, manifest, ns, "mine", "edited")
	alice.ok(t, "apply", "-f", manifest)
	writeRunManifest(t, manifest, ns, "mine", "edited-again")
	alice.ok(t, "apply", "--server-side", "--force-conflicts", "-f", manifest)
	if err := k8s.Get(ctx, key, run); err != nil {
		t.Fatal(err)
	}
	if run.Labels[rsv1.LabelShard] != "replica-a" || run.Annotations["note"] != "edited-again" {
		t.Fatalf("after the applies: labels %v, annotations %v", run.Labels, run.Annotations)
	}

	// The managers' own writes pass: a second replica joins, runs are drained, acknowledged, moved.
	for i := range 8 {
		if err := k8s.Create(ctx, twoTaskRun(ns, fmt.Sprintf("run-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	stopB, err := env.StartManagerAs(mgrUser.Config(), sharded(ring, "replica-b", false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopB)
	both := shard.NewRing("replica-a", "replica-b")
	eventually(t, 30*time.Second, "runs moved to replica-b by the managers", func() (bool, error) {
		_, placed, err := owners(ns, both)
		return placed, err
	})
	count, _, _ := owners(ns, both)
	if count["replica-b"] == 0 {
		t.Fatalf("runs by shard %v: none moved, the managers' relabelling proves nothing", count)
	}
}

// kubectl runs the control plane's kubectl as a user.
type kubectl struct{ kubeconfig, ns string }

// kubectlAs adds user, allowed rule in ns, and returns its kubectl.
func kubectlAs(t *testing.T, user, ns string, rule rbacv1.PolicyRule) kubectl {
	t.Helper()
	u, err := env.AddUser(envtest.User{Name: user}, env.Config)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := u.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), user+".kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: ns}, Rules: []rbacv1.PolicyRule{rule}}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: user}},
	}
	if err := k8s.Create(ctx, role); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, binding); err != nil {
		t.Fatal(err)
	}
	return kubectl{kubeconfig: path, ns: ns}
}

func (k kubectl) run(args ...string) (string, error) {
	cmd := exec.Command(env.Kubectl(), append([]string{"--kubeconfig", k.kubeconfig, "-n", k.ns}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (k kubectl) ok(t *testing.T, args ...string) {
	t.Helper()
	if out, err := k.run(args...); err != nil {
		t.Fatalf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (k kubectl) refused(t *testing.T, args ...string) string {
	t.Helper()
	out, err := k.run(args...)
	if err == nil {
		t.Errorf("kubectl %s was admitted: %s", strings.Join(args, " "), out)
	}
	return out
}

// writeRunManifest writes a one-task run without any label; note, when set, is an annotation.
func writeRunManifest(t *testing.T, path, ns, name, note string) {
	t.Helper()
	annotations := ""
	if note != "" {
		annotations = fmt.Sprintf("\n  annotations:\n    note: %q", note)
	}
	y := fmt.Sprintf(`apiVersion: runservice.dev/v1alpha1
kind: Run
metadata:
  name: %s
  namespace: %s%s
spec:
  tasks:
  - name: only
    containers: [{image: "busybox:1.36"}]
    steps: [{run: {command: "true"}}]
`, name, ns, annotations)
	if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
}

// strippedRun writes the run at key, as stored but without label, where kubectl replace reads it.
func strippedRun(t *testing.T, key types.NamespacedName, label string) string {
	t.Helper()
	run := &rsv1.Run{}
	if err := k8s.Get(context.Background(), key, run); err != nil {
		t.Fatal(err)
	}
	delete(run.Labels, label)
	run.ManagedFields = nil
	run.APIVersion, run.Kind = rsv1.GroupVersion.String(), "Run"
	b, err := json.Marshal(run)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "replaced.json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
