package v1alpha1

import "unicode/utf8"

// Limits that keep a Run and its ExecutorTasks within what etcd stores (1.5 MiB an object by
// default): the schema bounds each field, and admission bounds the sums (pkg/dag.ValidateSize).
const (
	// MaxRunBytes bounds a run's metadata and spec (as JSON) plus the largest status it can grow
	// to: an admitted run can always record every task's and step's end, and so always finish. Of
	// etcd's 1.5 MiB, 256 KiB stay for managedFields.
	MaxRunBytes = 1280 << 10
	// MaxEnvironmentBytes bounds spec.environment (names and values), which every ExecutorTask of the
	// run carries.
	MaxEnvironmentBytes = 64 << 10
	// MaxMessageLength bounds a message in a status (a task's, a condition's): longer ones are cut.
	MaxMessageLength = 1024
)

// TruncateMessage cuts msg to MaxMessageLength bytes, on a rune boundary, saying so at its end.
func TruncateMessage(msg string) string {
	if len(msg) <= MaxMessageLength {
		return msg
	}
	const mark = "… (truncated)"
	cut := MaxMessageLength - len(mark)
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + mark
}
