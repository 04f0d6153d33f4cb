package executor

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	rsv1 "runservice.dev/runservice/api/v1alpha1"
)

// Who may read what on an executor's endpoint:
//
//   - the namespace's token (the Secret runservice-executor-token, read by the manager and runctl)
//     reads every task's logs and archives, and no task's workspace: no pod needs it, so no task
//     Secret carries it;
//   - a task's credential reads its own ExecutorTask's workspace (its parents' archives) and
//     nothing else. It is an HMAC of the ExecutorTask's uid under the Secret's task-key, which only
//     executors use: any executor of the namespace can check it, after a restart too, without
//     storing one per task, and a credential leaked from a pod (its Secret, its environment) opens
//     that one workspace only, of that one ExecutorTask (a recreated task has a new uid).
//
// Both are re-read from the Secret when a request's does not match (at most once a second), so
// a rotated token works at once on every executor and the manager, without restarts. The old token
// is not accepted afterwards: both sides read the same Secret and the manager retries once with a
// re-read token on a 401, so no overlap is needed, and a rotated-out (leaked) token stops working.

// taskCredentialPrefix marks task credentials, so that one presented for a log is refused as
// forbidden rather than unknown.
const taskCredentialPrefix = "task."

// rereadEvery bounds how often a mismatching request makes the executor re-read the Secret: a
// client sending wrong tokens cannot turn into a stream of reads of the apiserver.
const rereadEvery = time.Second

// credentials holds the namespace token and the task key, as last read from the Secret.
type credentials struct {
	reader client.Reader
	key    types.NamespacedName

	mu      sync.Mutex
	token   []byte
	taskKey []byte
	readAt  time.Time
}

func newCredentials(reader client.Reader, namespace string) *credentials {
	return &credentials{reader: reader, key: types.NamespacedName{Namespace: namespace, Name: rsv1.ExecutorTokenSecret}}
}

// load reads the Secret; the caller holds mu.
func (c *credentials) load(ctx context.Context) error {
	s := &corev1.Secret{}
	if err := c.reader.Get(ctx, c.key, s); err != nil {
		return fmt.Errorf("reading the executor token secret %s: %w", c.key, err)
	}
	c.readAt = time.Now()
	tok, key := s.Data[rsv1.ExecutorTokenKey], s.Data[rsv1.ExecutorTaskKeyKey]
	if len(tok) == 0 || len(key) == 0 {
		return fmt.Errorf("secret %s lacks the %q or the %q key", c.key, rsv1.ExecutorTokenKey, rsv1.ExecutorTaskKeyKey)
	}
	c.token, c.taskKey = tok, key
	return nil
}

// check says whether ok accepts the current credentials, re-reading them once when it does not
// and they were not read within rereadEvery.
func (c *credentials) check(ctx context.Context, ok func(token, taskKey []byte) bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token != nil && ok(c.token, c.taskKey) {
		return true
	}
	if time.Since(c.readAt) < rereadEvery || c.load(ctx) != nil {
		return false
	}
	return ok(c.token, c.taskKey)
}

// isToken says whether bearer is the namespace's token.
func (c *credentials) isToken(ctx context.Context, bearer string) bool {
	return c.check(ctx, func(token, _ []byte) bool { return subtle.ConstantTimeCompare([]byte(bearer), token) == 1 })
}

// isTaskCredential says whether bearer is the credential of the ExecutorTask uid.
func (c *credentials) isTaskCredential(ctx context.Context, bearer string, uid types.UID) bool {
	return c.check(ctx, func(_, key []byte) bool {
		return subtle.ConstantTimeCompare([]byte(bearer), []byte(taskCredential(key, uid))) == 1
	})
}

// taskCredential is what a task's pod presents for its own workspace.
func (c *credentials) taskCredential(ctx context.Context, uid types.UID) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.taskKey == nil {
		if err := c.load(ctx); err != nil {
			return "", err
		}
	}
	return taskCredential(c.taskKey, uid), nil
}

func taskCredential(key []byte, uid types.UID) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("runservice workspace\x00" + string(uid)))
	return taskCredentialPrefix + hex.EncodeToString(m.Sum(nil))
}

func isTaskCredential(bearer string) bool { return strings.HasPrefix(bearer, taskCredentialPrefix) }

// EnsureToken makes sure the Secret holding the bearer token that guards executors' HTTP endpoints
// in the namespace exists, creating it (and the task key) when it does not exist, and adding a task
// key to a Secret of an older version that has none.
func EnsureToken(ctx context.Context, reader client.Reader, c client.Client, namespace string) error {
	key := types.NamespacedName{Namespace: namespace, Name: rsv1.ExecutorTokenSecret}
	s := &corev1.Secret{}
	err := reader.Get(ctx, key, s)
	if apierrors.IsNotFound(err) {
		s = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: namespace},
			StringData: map[string]string{rsv1.ExecutorTokenKey: randomToken(), rsv1.ExecutorTaskKeyKey: randomToken()},
		}
		if err = c.Create(ctx, s); err == nil || apierrors.IsAlreadyExists(err) {
			err = reader.Get(ctx, key, s)
		}
	}
	if err == nil && len(s.Data[rsv1.ExecutorTaskKeyKey]) == 0 {
		// A Secret of an older version: the key is added, the token left as it is. The patch is
		// conditional on the version read, so two executors doing this at once agree on one key.
		patch := fmt.Appendf(nil, `{"metadata":{"resourceVersion":%q},"stringData":{%q:%q}}`, s.ResourceVersion, rsv1.ExecutorTaskKeyKey, randomToken())
		if err = c.Patch(ctx, s, client.RawPatch(types.MergePatchType, patch)); err == nil || apierrors.IsConflict(err) {
			err = reader.Get(ctx, key, s)
		}
	}
	if err != nil {
		return fmt.Errorf("reading the executor token secret %s: %w", key, err)
	}
	if len(s.Data[rsv1.ExecutorTokenKey]) == 0 {
		return fmt.Errorf("secret %s has no %q key", key, rsv1.ExecutorTokenKey)
	}
	return nil
}
