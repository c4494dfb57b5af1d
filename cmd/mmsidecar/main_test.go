package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// reexecEnv makes the test binary act as mmsidecar: TestMain runs
// realMain on its arguments instead of the tests.
const reexecEnv = "MMSIDECAR_TEST_REEXEC_MAIN"

func TestMain(m *testing.M) {
	// Whether the machine running the tests is a container must not
	// change what they see (TestContainerNeedsNodeID sets its own signs).
	containerSigns = nil
	if os.Getenv(signalsChildEnv) == "1" {
		signalChild()
	}
	if os.Getenv(reexecEnv) == "1" {
		// The harness's own variable is not one the command reads.
		os.Unsetenv(reexecEnv)
		os.Exit(realMain(context.Background(), os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}

// result is one run of the command.
type result struct {
	code           int
	stdout, stderr string
}

// runMain runs the test binary as `mmsidecar args...` with only the given
// MMSIDECAR_* variables (none inherited from the caller's environment).
func runMain(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	return runBinary(t, os.Args[0], append([]string{reexecEnv + "=1"}, envList(env)...), args...)
}

func envList(env map[string]string) []string {
	var out []string
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

func runBinary(t *testing.T, bin string, extraEnv []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	// A race-enabled binary sleeps 1s at a clean exit unless told not to.
	gorace := "atexit_sleep_ms=0"
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "MMSIDECAR_"):
		case strings.HasPrefix(kv, "GORACE="):
			gorace = strings.TrimPrefix(kv, "GORACE=") + " " + gorace
		default:
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "GORACE="+gorace)
	cmd.Env = append(cmd.Env, extraEnv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %s %v: %v", bin, args, err)
	}
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

func TestExitCodes(t *testing.T) {
	queueDir := t.TempDir()
	base := map[string]string{"MMSIDECAR_NODE_ID": "n1", "MMSIDECAR_QUEUE_DIR": queueDir, "MMSIDECAR_STORE_DIR": filepath.Join(t.TempDir(), "store")}
	with := func(kv ...string) map[string]string {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return env
	}
	tests := []struct {
		name       string
		env        map[string]string
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr []string
		notStderr  []string
	}{
		{name: "no command", args: nil, wantCode: 2, wantStderr: []string{"usage:", "mmsidecar config"}},
		{name: "help", args: []string{"-h"}, wantCode: 0, wantStderr: []string{"run ", "status ", "check ", "drain ", "version ", "config ", "mmsidecar config", "exit codes"}},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: 2, wantStderr: []string{`unknown command "frobnicate"`, "usage:"}},
		{name: "version", args: []string{"version"}, wantCode: 0, wantStdout: []string{"mmsidecar dev", runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH}},
		{name: "version help", args: []string{"version", "-h"}, wantCode: 0, wantStderr: []string{"usage: mmsidecar version"}},
		{name: "bad flag", args: []string{"version", "-bogus"}, wantCode: 2, wantStderr: []string{"-bogus"}},
		{name: "stray argument", args: []string{"version", "extra"}, wantCode: 2, wantStderr: []string{`unexpected argument "extra"`}},
		{name: "check bad duration", env: with("MMSIDECAR_LEASE_TTL", "fifteen"), args: []string{"check"}, wantCode: 2,
			wantStderr: []string{"configuration error", `MMSIDECAR_LEASE_TTL="fifteen"`, "duration"}},
		{name: "check timing rule", env: with("MMSIDECAR_LEASE_MARGIN", "9s"), args: []string{"check"}, wantCode: 2,
			wantStderr: []string{`MMSIDECAR_LEASE_MARGIN="9s"`, "less than half"}},
		{name: "check secret both set", env: with("MMSIDECAR_S3_ENDPOINT", "127.0.0.1:9", "MMSIDECAR_S3_ACCESS_KEY", "a",
			"MMSIDECAR_S3_SECRET_KEY", "do-not-print-me", "MMSIDECAR_S3_SECRET_KEY_FILE", "/nonexistent"), args: []string{"check"}, wantCode: 2,
			wantStderr: []string{"MMSIDECAR_S3_SECRET_KEY=\"(redacted)\""}, notStderr: []string{"do-not-print-me"}},
		{name: "check missing queue dir", env: map[string]string{"MMSIDECAR_NODE_ID": "n1", "MMSIDECAR_QUEUE_DIR": filepath.Join(queueDir, "nope")},
			args: []string{"check"}, wantCode: 2, wantStderr: []string{"MMSIDECAR_QUEUE_DIR="}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runMain(t, tt.env, tt.args...)
			if r.code != tt.wantCode {
				t.Errorf("exit code %d, want %d\n%s", r.code, tt.wantCode, r)
			}
			for _, s := range tt.wantStdout {
				if !strings.Contains(r.stdout, s) {
					t.Errorf("stdout lacks %q\n%s", s, r)
				}
			}
			for _, s := range tt.wantStderr {
				if !strings.Contains(r.stderr, s) {
					t.Errorf("stderr lacks %q\n%s", s, r)
				}
			}
			for _, s := range tt.notStderr {
				if strings.Contains(r.stderr+r.stdout, s) {
					t.Errorf("output shows %q\n%s", s, r)
				}
			}
		})
	}
}

func TestExitCodeMapping(t *testing.T) {
	ce := newConfigError("MMSIDECAR_MODE", "x", "bad")
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, exitOK},
		{"help", flag.ErrHelp, exitOK},
		{"usage", &usageError{errors.New("flag provided but not defined")}, exitConfig},
		{"config", ce, exitConfig},
		{"wrapped config", fmt.Errorf("load: %w", ce), exitConfig},
		{"joined config", errors.Join(ce, newConfigError("MMSIDECAR_LOG_LEVEL", "y", "bad")), exitConfig},
		{"other", errors.New("store unreachable"), exitFailed},
		{"context", context.DeadlineExceeded, exitFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if got := exitCode(&buf, "x", tt.err); got != tt.want {
				t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

// TestVersionLdflags builds the real binary with a version stamped in, as
// a release build does.
func TestVersionLdflags(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "mmsidecar")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=v9.8.7-test", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	r := runBinary(t, bin, nil, "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "mmsidecar v9.8.7-test (commit ") || !strings.Contains(r.stdout, runtime.Version()) {
		t.Errorf("version output:\n%s", r)
	}
}

func TestSignalContexts(t *testing.T) {
	t.Run("first drains, second aborts", func(t *testing.T) {
		sigs := make(chan os.Signal)
		drain, abort, stop := contextsFromSignals(context.Background(), sigs)
		defer stop()
		sigs <- syscall.SIGTERM
		<-drain.Done()
		if abort.Err() != nil {
			t.Fatal("first signal aborted")
		}
		var se signalError
		if !errors.As(context.Cause(drain), &se) || se.sig != syscall.SIGTERM {
			t.Errorf("drain cause %v", context.Cause(drain))
		}
		sigs <- os.Interrupt
		<-abort.Done()
		if !errors.As(context.Cause(abort), &se) || se.sig != os.Interrupt {
			t.Errorf("abort cause %v", context.Cause(abort))
		}
	})
	t.Run("parent cancel", func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		drain, abort, stop := contextsFromSignals(parent, make(chan os.Signal))
		defer stop()
		cancel()
		<-drain.Done()
		<-abort.Done()
	})
	t.Run("stop", func(t *testing.T) {
		drain, abort, stop := contextsFromSignals(context.Background(), make(chan os.Signal))
		if drain.Err() != nil || abort.Err() != nil {
			t.Fatal("canceled before any signal")
		}
		stop()
		if drain.Err() == nil || abort.Err() == nil {
			t.Error("stop did not release the contexts")
		}
	})
}

// signalsChildEnv makes the test binary run signalChild.
const signalsChildEnv = "MMSIDECAR_TEST_SIGNALS_CHILD"

// signalChild reports on stdout as signalContexts' contexts end, then
// waits to be killed.
func signalChild() {
	drain, abort, stop := signalContexts(context.Background())
	defer stop()
	fmt.Println("ready")
	<-drain.Done()
	fmt.Println("drain:", context.Cause(drain))
	<-abort.Done()
	fmt.Println("abort:", context.Cause(abort))
	select {}
}

// TestSignalsEndToEnd sends real signals to a child process: SIGTERM
// drains, SIGINT aborts, a third signal kills.
func TestSignalsEndToEnd(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), signalsChildEnv+"=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(stdout)
	expect := func(want string) {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("child ended before %q: %v", want, lines.Err())
		}
		if got := lines.Text(); got != want {
			t.Fatalf("child said %q, want %q", got, want)
		}
	}
	expect("ready")
	cmd.Process.Signal(syscall.SIGTERM)
	expect("drain: received terminated")
	cmd.Process.Signal(syscall.SIGINT)
	expect("abort: received interrupt")
	// The handler is released after the abort; the next signal kills.
	// Signal until the child dies (the release races with our send).
	done := make(chan error, 1)
	go func() { io.Copy(io.Discard, stdout); done <- cmd.Wait() }()
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("child exit: %v", err)
			}
			ws, ok := ee.Sys().(syscall.WaitStatus)
			if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
				t.Errorf("child ended with %v, want killed by SIGTERM", err)
			}
			return
		case <-deadline:
			t.Fatal("third signal did not kill the child")
		case <-tick.C:
		}
	}
}
