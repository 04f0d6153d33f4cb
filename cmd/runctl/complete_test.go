package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestCompletionGivesUpOnAHangingAPIServer: tab completion asks the apiserver for names; one that
// accepts the connection and never answers (a network that drops the answers) must not hang the
// user's shell: completion gives up after its timeout and completes nothing (directive error).
func TestCompletionGivesUpOnAHangingAPIServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	for _, args := range [][]string{{"describe", ""}, {"approve", "release", ""}, {"logs", "diamond", "test", ""}, {"get", "--changegroup", ""}, {"get", "-n", ""}} {
		done := make(chan string, 1)
		go func() {
			var out, errOut bytes.Buffer
			run(context.Background(), append([]string{"--server", "http://" + ln.Addr().String(), "--kubeconfig", kubeconfig, "-n", "default", "__complete"}, args...), &out, &errOut)
			done <- out.String()
		}()
		select {
		case out := <-done:
			if got := strings.SplitN(out, "Completion ended", 2)[0]; got != ":1\n" {
				t.Errorf("__complete %q against a hanging apiserver: %q, want the error directive :1", args, got)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("__complete %q still waits for the apiserver after 30s: the user's shell hangs", args)
		}
	}
}
