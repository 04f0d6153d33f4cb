// Package sharded_test runs three sharded managers in one process against one control plane, each
// owning the runs the ring gives it (runs are created already labelled with their owner: assignment
// is the webhook's and the sharder's, tested with them). Its tests are about what looks across
// runs: change groups whose runs are on several shards, and executors that take tasks from several.
package sharded_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
	"runservice.dev/runservice/internal/manager"
	"runservice.dev/runservice/internal/shard"
	"runservice.dev/runservice/internal/testenv"
)

var (
	env       *testenv.Env
	k8s       client.Client
	members   = []string{"shard-a", "shard-b", "shard-c"}
	ring      = shard.NewRing(members...)
	nsCounter atomic.Int64
)

// phantomGrace is the managers' PhantomGrace: short, for the phantom tests.
const phantomGrace = 2 * time.Second

func TestMain(m *testing.M) {
	level := zapcore.ErrorLevel
	if os.Getenv("TEST_LOG") != "" {
		level = zapcore.DebugLevel
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(level)))
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if env, err = testenv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	if k8s, err = client.New(env.Config, client.Options{Scheme: manager.Scheme()}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for i, me := range members {
		stop, err := startShard(me, i == 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, "starting", me+":", err)
			return 1
		}
		defer stop()
	}
	return m.Run()
}

// startShard starts the manager of member me; the first one serves the webhook.
func startShard(me string, webhook bool) (func(), error) {
	change := func(o *manager.Options) {
		o.Controllers.Shard = shard.NewStatic(me, members...)
		o.Controllers.PhantomGrace = phantomGrace
		o.Controllers.NoExecutorRetry = 300 * time.Millisecond
	}
	if webhook {
		return env.StartManager(change)
	}
	opts := env.ManagerOptions()
	opts.WebhookPort = 0
	change(&opts)
	ctx, cancel := context.WithCancel(context.Background())
	mgr, err := manager.New(ctx, env.Config, opts)
	if err != nil {
		cancel()
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	synced, cancelSync := context.WithTimeout(ctx, 30*time.Second)
	defer cancelSync()
	if !mgr.GetCache().WaitForCacheSync(synced) {
		cancel()
		return nil, fmt.Errorf("the manager's cache did not sync: %w", <-done)
	}
	return func() { cancel(); <-done }, nil
}

func newNamespace(t *testing.T) string {
	t.Helper()
	ns := fmt.Sprintf("sharded-%d", nsCounter.Add(1))
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	return ns
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	var last error
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		ok, err := cond()
		last = err
		return ok, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v (last: %v)", what, err, last)
	}
}

// newRun is a run of one task in group, labelled with the shard the ring gives it.
func newRun(ns, name, group string, suspend bool) *rsv1.Run {
	run := &rsv1.Run{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{rsv1.LabelShard: ring.Owner(shard.Key(ns, name))}},
		Spec: rsv1.RunSpec{Tasks: []rsv1.Task{{
			Name:       "only",
			Containers: []rsv1.Container{{Image: "busybox:1.36"}},
			Steps:      []rsv1.Step{{Run: &rsv1.RunStep{Command: "true"}}},
		}}},
	}
	if group != "" {
		run.Spec.ChangeGroups = []string{group}
	}
	if suspend {
		run.Spec.Suspend = ptr.To(true)
	}
	return run
}

func createRun(t *testing.T, run *rsv1.Run) {
	t.Helper()
	if err := k8s.Create(context.Background(), run); err != nil {
		t.Fatalf("creating run %s: %v", run.Name, err)
	}
}

// namesOn returns n run names of the form prefix-i that the ring gives to member, in order.
func namesOn(ns, prefix, member string, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		name := fmt.Sprintf("%s-%d", prefix, i)
		if ring.Owner(shard.Key(ns, name)) == member {
			out = append(out, name)
		}
	}
	return out
}

// groupOwnedBy returns a group name of the form prefix-i whose owner on the ring is member.
func groupOwnedBy(ns, prefix, member string) string {
	for i := 0; ; i++ {
		if g := fmt.Sprintf("%s-%d", prefix, i); ring.Owner(shard.Key(ns, g)) == member {
			return g
		}
	}
}

func getGroup(t *testing.T, ns, name string) *rsv1.ChangeGroup {
	t.Helper()
	cg := &rsv1.ChangeGroup{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, cg); err != nil {
		t.Fatalf("reading change group %s: %v", name, err)
	}
	return cg
}

// autoExecutor registers an executor (its Lease renewed) that ends every task it gets with
// Success after a while, as a real one would report.
func autoExecutor(t *testing.T, ns, name string, after time.Duration) {
	t.Helper()
	testenv.StartFakeExecutor(t, k8s, ns, name)
	testenv.FinishTasks(t, k8s, ns, name, after)
}
