package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// executorTaskHashLen is how many hex digits of the hash end an ExecutorTask's name: 40 bits.
const executorTaskHashLen = 10

// ExecutorTaskName is the name of the ExecutorTask of a run's task: <run>-<task>-<hash>, where hash
// is of the run's uid and the task's name. The same run and task always give the same name, so that
// creating it stays the lock that schedules a task at most once, across manager restarts. Another
// run's task never gives it: not one whose name reads the same (run deploy-prod's task api and run
// deploy's task prod-api), and not a run deleted and created again under the same name, which has
// another uid. The readable part is cut to keep the name within 253 characters; the hash keeps
// tasks of one run apart when their names are cut alike. The hash makes a collision improbable, not
// impossible: the run controller adopts an existing ExecutorTask only when it is this run's (owner
// uid) and this task's, and the object store keys by the run's full uid.
func ExecutorTaskName(run string, runUID types.UID, task string) string {
	sum := sha256.Sum256([]byte(string(runUID) + "/" + task))
	suffix := "-" + hex.EncodeToString(sum[:])[:executorTaskHashLen]
	readable := run + "-" + task
	if limit := 253 - len(suffix); len(readable) > limit {
		// A name's parts must end in a letter or digit: no "-" or "." before the suffix's "-".
		readable = strings.TrimRight(readable[:limit], "-.")
	}
	return readable + suffix
}

// LabelValue fits a name into a label value (63 characters): longer names keep their first 46
// characters and a hash of the whole. LabelRun and LabelRestartedFrom hold run names this way.
func LabelValue(s string) string {
	if len(s) <= 63 {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return s[:46] + "-" + hex.EncodeToString(sum[:8])
}
