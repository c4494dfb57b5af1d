package deploytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeSidecar answers like the sidecar's /readyz and /drain, and records
// every request (plus the fake Mailman's /child-start and /child-term) in
// order.
type fakeSidecar struct {
	*httptest.Server
	mu        sync.Mutex
	events    []string
	notReady  int      // /readyz answers 503 this many times, then 200
	states    []string // POST /drain gets states[0], each GET the next (the last repeats)
	postCode  int      // POST /drain status; 0 = 202
	drainGets int
}

func newFakeSidecar(t *testing.T, notReady, postCode int, states ...string) *fakeSidecar {
	t.Helper()
	f := &fakeSidecar{notReady: notReady, postCode: postCode, states: states}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeSidecar) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ev := r.Method + " " + r.URL.Path
	switch r.URL.Path {
	case "/readyz":
		if f.notReady > 0 {
			f.notReady--
			ev += " 503"
			w.WriteHeader(http.StatusServiceUnavailable)
		} else {
			ev += " 200"
		}
	case "/drain":
		if r.Method == http.MethodPost && r.Header.Get("Authorization") != "Bearer "+hookToken {
			ev += " 401"
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintln(w, `{"draining":false,"done":false,"pck":0,"bak":0,"held":0,"waiting":0,"peers":0,"error":"missing or wrong admin token"}`)
			break
		}
		reply := f.states[0]
		code := http.StatusAccepted
		if r.Method == http.MethodGet {
			reply = f.states[min(1+f.drainGets, len(f.states)-1)]
			f.drainGets++
			code = http.StatusOK
		} else if f.postCode != 0 {
			code = f.postCode
		}
		if strings.Contains(reply, `"done":true`) {
			ev += " done"
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprintln(w, reply)
	}
	f.events = append(f.events, ev)
}

func (f *fakeSidecar) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.events...)
}

// indexOf returns the first event with prefix, or -1.
func indexOf(events []string, prefix string) int {
	for i, e := range events {
		if strings.HasPrefix(e, prefix) {
			return i
		}
	}
	return -1
}

// hookToken is the admin secret the fake sidecar wants and the token
// file runHook hands the hooks (DRAIN_HOOK_TOKEN_FILE).
const hookToken = "hook-test-admin-token-0123456789"

// hookTokenFile writes hookToken into a file and returns its path.
func hookTokenFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(p, []byte(hookToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// drainReply is what the sidecar's GET /drain returns (cmd/mmsidecar
// drainReply, encoded by encoding/json).
func drainReply(done bool, pck, bak, peers int) string {
	return fmt.Sprintf(`{"draining":true,"done":%v,"pck":%d,"bak":%d,"held":0,"waiting":0,"peers":%d}`, done, pck, bak, peers)
}

// runHook runs a script from deploy/hooks with sh and extra environment.
func runHook(t *testing.T, env []string, args ...string) (stderr string, code int, took time.Duration) {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatalf("sh: %v", err)
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatalf("the hooks need curl (the mailman-core image has it): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, sh, args...)
	// A short default deadline, so that a hook that never sees "done"
	// fails in seconds; a test's own env comes later and wins.
	cmd.Env = append(append(os.Environ(), "DRAIN_HOOK_DEADLINE=20", "DRAIN_HOOK_TOKEN_FILE="+hookTokenFile(t)), env...)
	inGroup(cmd)
	var buf bytes.Buffer
	cmd.Stderr = &buf
	start := time.Now()
	err = cmd.Run()
	took = time.Since(start)
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("run %v: no exit within a minute; stderr:\n%s", args, buf.String())
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("run %v: %v", args, err)
	}
	return buf.String(), code, took
}

// inGroup runs cmd in its own process group and makes cancellation kill
// the whole group (a script's children too), so that a hung script cannot
// hang the test on its open pipes.
func inGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
}

// TestDrainHook runs deploy/hooks/drain.sh against a fake sidecar.
func TestDrainHook(t *testing.T) {
	script := repoPath(t, "deploy", "hooks", "drain.sh")
	tests := []struct {
		name     string
		states   []string
		postCode int
		env      []string
		wantCode int
		wantErr  string
		check    func(t *testing.T, events []string)
	}{
		{
			name:   "waits until done",
			states: []string{drainReply(false, 3, 1, 1), drainReply(false, 0, 1, 1), drainReply(true, 0, 0, 1)},
			check: func(t *testing.T, ev []string) {
				if len(ev) != 3 || ev[0] != "POST /drain" || ev[2] != "GET /drain done" {
					t.Errorf("requests %v, want POST /drain then GETs until done", ev)
				}
			},
			wantErr: "drained",
		},
		{
			name:     "gives up without a live peer",
			states:   []string{drainReply(false, 3, 0, 0)},
			env:      []string{"DRAIN_HOOK_NO_PEER=2"},
			wantCode: 0,
			wantErr:  "no live peer",
		},
		{
			name:     "peers coming and going reset the no-peer clock",
			states:   []string{drainReply(false, 3, 0, 0), drainReply(false, 3, 0, 1), drainReply(false, 3, 0, 0), drainReply(false, 3, 0, 1), drainReply(true, 0, 0, 1)},
			env:      []string{"DRAIN_HOOK_NO_PEER=2"},
			wantCode: 0,
			wantErr:  "drained",
		},
		{
			name:     "deadline",
			states:   []string{drainReply(false, 1, 1, 1)},
			env:      []string{"DRAIN_HOOK_DEADLINE=2"},
			wantCode: 1,
			wantErr:  "not drained after 2s",
		},
		{
			name:     "refused in mirror mode",
			states:   []string{`{"draining":false,"done":false,"pck":0,"bak":0,"held":0,"waiting":0,"peers":0,"error":"drain needs MMSIDECAR_MODE=cluster"}`},
			postCode: http.StatusConflict,
			wantCode: 1,
			wantErr:  "refused the drain (409)",
		},
		{
			// The sidecar refuses at once and moves nothing: Mailman
			// stops with its backlog, nothing to wait for.
			name:     "no live peer at all",
			states:   []string{`{"draining":false,"done":false,"pck":3,"bak":0,"held":0,"waiting":0,"peers":0,"error":"no live peer to hand entries to: refused, nothing was moved (the entries stay with Mailman on this node)"}`},
			postCode: http.StatusConflict,
			wantCode: 0,
			wantErr:  "nothing was moved",
			check: func(t *testing.T, ev []string) {
				if len(ev) != 1 {
					t.Errorf("requests %v, want the POST alone", ev)
				}
			},
		},
		{
			name:     "wrong secret",
			states:   []string{drainReply(true, 0, 0, 1)},
			env:      []string{"DRAIN_HOOK_TOKEN_FILE=" + writeTemp(t, "wrong-token-0123456789")},
			wantCode: 1,
			wantErr:  "refused the drain (401)",
		},
		{
			name:     "no secret",
			states:   []string{drainReply(true, 0, 0, 1)},
			env:      []string{"DRAIN_HOOK_TOKEN_FILE=/nonexistent/admin-token"},
			wantCode: 1,
			wantErr:  "cannot read the sidecar's admin secret",
			check: func(t *testing.T, ev []string) {
				if len(ev) != 0 {
					t.Errorf("requests %v without a secret", ev)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeSidecar(t, 0, tc.postCode, tc.states...)
			stderr, code, took := runHook(t, append([]string{"DRAIN_HOOK_URL=" + f.URL}, tc.env...), script)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.wantCode, tc.wantErr)
			}
			if took > 20*time.Second {
				t.Errorf("took %s", took)
			}
			if tc.check != nil {
				tc.check(t, f.log())
			}
		})
	}
	t.Run("sidecar unreachable", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		stderr, code, _ := runHook(t, []string{"DRAIN_HOOK_URL=http://" + addr}, script)
		if code != 1 || !strings.Contains(stderr, "cannot reach the sidecar") {
			t.Errorf("exit %d, stderr %q; want 1 and a message", code, stderr)
		}
	})
	t.Run("logs to DRAIN_HOOK_LOG", func(t *testing.T) {
		t.Parallel()
		f := newFakeSidecar(t, 0, 0, drainReply(true, 0, 0, 1))
		logFile := filepath.Join(t.TempDir(), "log")
		stderr, code, _ := runHook(t, []string{"DRAIN_HOOK_URL=" + f.URL, "DRAIN_HOOK_LOG=" + logFile}, script)
		data, _ := os.ReadFile(logFile)
		if code != 0 || stderr != "" || !strings.Contains(string(data), "drained") {
			t.Errorf("exit %d, stderr %q, log %q; want the lines in the log file", code, stderr, data)
		}
	})
}

// writeTemp writes content into a new file and returns its path.
func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeMailman stands in for the mailman-core image's entry point: it
// reports its start and its SIGTERM to the fake sidecar.
const fakeMailman = `#!/bin/sh
trap 'curl -fsS -o /dev/null "$FAKE/child-term"; exit 0' TERM
curl -fsS -o /dev/null "$FAKE/child-start"
while :; do sleep 0.1; done
`

// TestMailmanEntrypoint runs deploy/hooks/mailman-entrypoint.sh with a
// fake Mailman: Mailman starts only once /readyz is 200, and SIGTERM
// drains the sidecar before Mailman gets it.
func TestMailmanEntrypoint(t *testing.T) {
	script := repoPath(t, "deploy", "hooks", "mailman-entrypoint.sh")
	child := filepath.Join(t.TempDir(), "fake-mailman.sh")
	if err := os.WriteFile(child, []byte(fakeMailman), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Run("ready, then drain before stop", func(t *testing.T) {
		t.Parallel()
		f := newFakeSidecar(t, 2, 0, drainReply(false, 2, 1, 1), drainReply(false, 0, 1, 1), drainReply(true, 0, 0, 1))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", script, "sh", child)
		cmd.Env = append(os.Environ(), "DRAIN_HOOK_URL="+f.URL, "FAKE="+f.URL, "DRAIN_HOOK_DEADLINE=20", "DRAIN_HOOK_TOKEN_FILE="+hookTokenFile(t))
		inGroup(cmd)
		t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		waitFor(t, 30*time.Second, func() bool { return indexOf(f.log(), "GET /child-start") >= 0 })
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("wrapper exited with %v; stderr:\n%s", err, stderr.String())
			}
		case <-time.After(30 * time.Second):
			cancel()
			t.Fatalf("wrapper did not exit after SIGTERM; stderr:\n%s", stderr.String())
		}
		ev := f.log()
		start, post, drained, term := indexOf(ev, "GET /child-start"), indexOf(ev, "POST /drain"), indexOf(ev, "GET /drain done"), indexOf(ev, "GET /child-term")
		ready := indexOf(ev, "GET /readyz 200")
		switch {
		case ready < 0 || start < ready:
			t.Errorf("Mailman started before /readyz was 200: %v", ev)
		case indexOf(ev, "GET /readyz 503") > ready:
			t.Errorf("unexpected order %v", ev)
		case !(start < post && post < drained && drained < term):
			t.Errorf("want child-start < POST /drain < drain done < child-term, got %v", ev)
		}
	})
	t.Run("sidecar never ready", func(t *testing.T) {
		t.Parallel()
		f := newFakeSidecar(t, 1000, 0, drainReply(true, 0, 0, 1))
		stderr, code, _ := runHook(t, []string{"DRAIN_HOOK_URL=" + f.URL, "FAKE=" + f.URL, "READY_WAIT=2"}, script, "sh", child)
		if code != 1 || indexOf(f.log(), "GET /child-start") >= 0 || !strings.Contains(stderr, "not ready") {
			t.Errorf("exit %d, events %v, stderr %q; want exit 1 without starting Mailman", code, f.log(), stderr)
		}
	})
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, deadline time.Duration, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("condition not met within %s", deadline)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
