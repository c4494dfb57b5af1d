package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// daemonProc is a `mmsidecar run` started by a test: the test binary
// re-executed as the command (TestMain), with only the given MMSIDECAR_
// variables and JSON logs.
type daemonProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string
	logs   *lockedBuffer
	done   chan struct{}
	result error
}

// freeAddr returns a 127.0.0.1 address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startDaemon starts `mmsidecar run` with env (MMSIDECAR_LISTEN_ADDR and
// the log format are filled in) plus extra raw variables; it is killed at
// the end of the test if still running.
func startDaemon(t *testing.T, env map[string]string, extra ...string) *daemonProc {
	t.Helper()
	e := map[string]string{"MMSIDECAR_LISTEN_ADDR": freeAddr(t), "MMSIDECAR_LOG_FORMAT": "json"}
	for k, v := range env {
		e[k] = v
	}
	d := &daemonProc{t: t, addr: e["MMSIDECAR_LISTEN_ADDR"], logs: &lockedBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(os.Args[0], "run")
	d.cmd.Env = append(childEnv(), reexecEnv+"=1")
	d.cmd.Env = append(append(d.cmd.Env, envList(e)...), extra...)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.result = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("log of the daemon at %s:\n%s", d.addr, d.logs.String())
		}
	})
	return d
}

// childEnv is the test's environment without MMSIDECAR_ variables, and
// with the race detector's exit sleep off.
func childEnv() []string {
	gorace := "atexit_sleep_ms=0"
	var env []string
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "MMSIDECAR_"), strings.HasPrefix(kv, "NOTIFY_SOCKET="), strings.HasPrefix(kv, "WATCHDOG_"):
		case strings.HasPrefix(kv, "GORACE="):
			gorace = strings.TrimPrefix(kv, "GORACE=") + " " + gorace
		default:
			env = append(env, kv)
		}
	}
	return append(env, "GORACE="+gorace)
}

// get sends GET path to the daemon; err when nothing answers.
func (d *daemonProc) get(path string) (int, string, error) {
	return d.do(http.MethodGet, path, "")
}

// do sends one request, with the admin token when given.
func (d *daemonProc) do(method, path, token string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+d.addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// waitFor polls cond every 50 ms until it holds, failing the test after
// timeout or when the daemon exits first.
func (d *daemonProc) waitFor(timeout time.Duration, what string, cond func() bool) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case <-d.done:
			d.t.Fatalf("the daemon exited (%v) while waiting for %s", d.result, what)
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("no %s after %s", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitReadyz waits until /readyz answers code with a body containing
// want.
func (d *daemonProc) waitReadyz(timeout time.Duration, code int, want string) string {
	d.t.Helper()
	var body string
	d.waitFor(timeout, fmt.Sprintf("/readyz %d %q", code, want), func() bool {
		c, b, err := d.get("/readyz")
		body = b
		return err == nil && c == code && strings.Contains(b, want)
	})
	return body
}

// stop sends SIGTERM and waits up to timeout for the exit; it returns
// the exit code and how long the stop took.
func (d *daemonProc) stop(timeout time.Duration) (int, time.Duration) {
	d.t.Helper()
	start := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(timeout):
		d.t.Fatalf("one SIGTERM did not stop the daemon within %s", timeout)
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(d.result, &ee) {
		code = ee.ExitCode()
	}
	return code, time.Since(start)
}

// logLine is one JSON log record.
type logLine struct {
	Level string `json:"level"`
	Msg   string `json:"msg"`
	Raw   string `json:"-"`
}

// logLines parses the daemon's JSON log.
func (d *daemonProc) logLines() []logLine {
	var out []logLine
	sc := bufio.NewScanner(strings.NewReader(d.logs.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg != "" {
			l.Raw = sc.Text()
			out = append(out, l)
		}
	}
	return out
}

// clusterEnv is the environment of a cluster node on the embedded store
// in storeDir, with a fresh queue directory holding the queue "in".
func clusterEnv(t *testing.T, node, storeDir string, kv ...string) map[string]string {
	t.Helper()
	queue := t.TempDir()
	if err := os.Mkdir(filepath.Join(queue, "in"), 0o770); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"MMSIDECAR_NODE_ID": node, "MMSIDECAR_QUEUE_DIR": queue, "MMSIDECAR_STORE_DIR": storeDir,
		"MMSIDECAR_LEASE_TTL": "3s", "MMSIDECAR_LEASE_GRACE": "1s", "MMSIDECAR_LEASE_MARGIN": "600ms",
		"MMSIDECAR_RESCAN_INTERVAL": "2s", "MMSIDECAR_SHUTDOWN_TIMEOUT": "10s",
	}
	for i := 0; i+1 < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	return env
}

// enqueue writes n Mailman-shaped entries into queue q of queueDir, the
// way Mailman does (temp file, rename).
func enqueue(t *testing.T, queueDir, q string, n int) {
	t.Helper()
	for i := range n {
		var sum [20]byte
		rand.Read(sum[:]) // unique, as Mailman's sha1 of the message is
		base := fmt.Sprintf("%d.%06d+%x", time.Now().Unix(), i, sum)
		tmp := filepath.Join(queueDir, q, base+".pck.tmp")
		if err := os.WriteFile(tmp, []byte(fmt.Sprintf("entry %d", i)), 0o660); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(queueDir, q, base+".pck")); err != nil {
			t.Fatal(err)
		}
	}
}

// countPck counts the .pck files in queue q of queueDir.
func countPck(t *testing.T, queueDir, q string) int {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(queueDir, q, "*.pck"))
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}

// writeToken writes an admin token file and returns its path and value.
func writeToken(t *testing.T) (path, token string) {
	t.Helper()
	token = "test-admin-token-0123456789abcdef"
	path = filepath.Join(t.TempDir(), "admin-token")
	if err := os.WriteFile(path, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, token
}
