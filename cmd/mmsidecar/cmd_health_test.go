package main

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
)

// TestHealth runs `mmsidecar health` against the daemon's real HTTP
// listener, before and after it is ready, and against a closed port.
func TestHealth(t *testing.T) {
	var ready atomic.Bool
	s, err := newHTTPServer("127.0.0.1:0", newRegistry(), func() error {
		if !ready.Load() {
			return errors.New("first reconcile not done")
		}
		return nil
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	execute, interrupt := s.Actor()
	served := make(chan error, 1)
	go func() { served <- execute() }()
	t.Cleanup(func() { interrupt(nil); <-served })

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()

	// The health command reads the whole configuration: give it a queue
	// directory that exists on any machine, not Mailman's default path.
	queue := t.TempDir()
	env := func(addr string) map[string]string {
		return map[string]string{"MMSIDECAR_LISTEN_ADDR": addr, "MMSIDECAR_QUEUE_DIR": queue}
	}
	tests := []struct {
		name     string
		addr     string
		ready    bool
		args     []string
		wantCode int
		wantOut  string
	}{
		{"not ready", s.Addr(), false, nil, exitFailed, "first reconcile not done"},
		{"live while not ready", s.Addr(), false, []string{"-live"}, exitOK, "ok"},
		{"ready", s.Addr(), true, nil, exitOK, "ready"},
		{"nobody listens", closed, true, nil, exitFailed, "MMSIDECAR_LISTEN_ADDR=" + closed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ready.Store(tc.ready)
			r := runMain(t, env(tc.addr), append([]string{"health"}, tc.args...)...)
			if r.code != tc.wantCode {
				t.Fatalf("exit %d, want %d (stdout %q, stderr %q)", r.code, tc.wantCode, r.stdout, r.stderr)
			}
			if out := r.stdout + r.stderr; !strings.Contains(out, tc.wantOut) {
				t.Fatalf("output %q lacks %q", out, tc.wantOut)
			}
		})
	}
}
