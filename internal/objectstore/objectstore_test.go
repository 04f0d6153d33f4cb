package objectstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"

	"runservice.dev/runservice/internal/objectstore"
	"runservice.dev/runservice/internal/testenv"
)

// TestBackends runs the same checks against the embedded default (a directory) and a real S3 server.
func TestBackends(t *testing.T) {
	for name, store := range testenv.Stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			task := objectstore.Task{Namespace: "ns", Run: "run", RunUID: "uid-1", ExecutorTask: "run-task-0123456789"}
			big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
			for i := range 3 {
				if err := store.Put(ctx, task.LogKey(i), bytes.NewReader(append([]byte(fmt.Sprint(i)), big...))); err != nil {
					t.Fatal(err)
				}
			}
			if err := store.Put(ctx, task.ArchiveKey(1), strings.NewReader("tar")); err != nil {
				t.Fatal(err)
			}
			rc, err := store.Get(ctx, task.LogKey(2))
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(got, append([]byte("2"), big...)) {
				t.Fatalf("read back %d bytes, not what was written", len(got))
			}
			// A run of the same name with another uid, and an ExecutorTask from before run uids were
			// recorded, keep their data apart.
			again := task
			again.RunUID = "uid-2"
			legacy := task
			legacy.RunUID = ""
			for _, other := range []objectstore.Task{again, legacy} {
				if err := store.Put(ctx, other.LogKey(0), strings.NewReader("other")); err != nil {
					t.Fatal(err)
				}
			}
			keys, err := store.List(ctx, task.Prefix()+"steps/")
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"runs/ns/run/uid-1/tasks/run-task-0123456789/steps/0.log", "runs/ns/run/uid-1/tasks/run-task-0123456789/steps/1.log", "runs/ns/run/uid-1/tasks/run-task-0123456789/steps/2.log"}
			if !slices.Equal(keys, want) {
				t.Fatalf("keys %v, want %v", keys, want)
			}
			if got := legacy.LogKey(0); got != "runs/ns/run/tasks/run-task-0123456789/steps/0.log" {
				t.Fatalf("legacy key %s", got)
			}
			if _, err := store.Get(ctx, "runs/ns/run/tasks/nope/steps/0.log"); !errors.Is(err, objectstore.ErrNotFound) {
				t.Fatalf("missing key: %v, want ErrNotFound", err)
			}
		})
	}
}

func TestMain(m *testing.M) { os.Exit(m.Run()) }
