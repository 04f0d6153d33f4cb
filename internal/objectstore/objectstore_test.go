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
	"testing/iotest"

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

// TestAPutThatFailsMidwayLeavesNothing: a reader that fails after half of an object (an executor
// that drops the connection mid-body, an encoder that fails) stores nothing at the key, on either
// backend: neither a new object cut short nor a change to the one written before.
func TestAPutThatFailsMidwayLeavesNothing(t *testing.T) {
	for name, store := range testenv.Stores(t) {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			broken := errors.New("the connection dropped")
			half := func(n int) io.Reader {
				return io.MultiReader(bytes.NewReader(bytes.Repeat([]byte("x"), n)), iotest.ErrReader(broken))
			}
			for _, n := range []int{10, 6 << 20} { // one request, and a multipart upload on S3
				key := fmt.Sprintf("half/new-%d", n)
				if err := store.Put(ctx, key, half(n)); !errors.Is(err, broken) {
					t.Fatalf("put of %d bytes then an error: %v, want the reader's error", n, err)
				}
				if ok, err := store.Exists(ctx, key); err != nil || ok {
					t.Fatalf("after a put that failed after %d bytes, the key exists: %v (%v)", n, ok, err)
				}
			}
			if err := store.Put(ctx, "half/old", strings.NewReader("whole")); err != nil {
				t.Fatal(err)
			}
			if err := store.Put(ctx, "half/old", half(3)); !errors.Is(err, broken) {
				t.Fatalf("overwrite that fails: %v", err)
			}
			rc, err := store.Get(ctx, "half/old")
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			if got, err := io.ReadAll(rc); err != nil || string(got) != "whole" {
				t.Fatalf("the object a failed put would have replaced reads %q (%v), want it whole", got, err)
			}
		})
	}
}

func TestMain(m *testing.M) { os.Exit(m.Run()) }
