package index

import "github.com/cockroachdb/pebble/v2"

// SetFormatVersion marks ix as written in another format version.
func SetFormatVersion(ix *Index, v string) error {
	return ix.db.Set(keyVersion, []byte(v), pebble.Sync)
}
