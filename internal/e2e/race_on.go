//go:build race

package e2e

// RaceEnabled says the tests run under the race detector (go test -race): the executor binaries
// they start are then built with it too.
const RaceEnabled = true
