package main

import (
	"encoding/json"
	"errors"
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

// TestReadOnlyCommandsCreateNothing: status, check, health, drain and
// config, run as whoever, create neither the state directory nor the
// embedded store (issue 22: run as root they created them, and the daemon
// then failed to start as Mailman's user).
func TestReadOnlyCommandsCreateNothing(t *testing.T) {
	env := clusterEnv(t, "n1", filepath.Join(t.TempDir(), "store"))
	tokenFile, _ := writeToken(t)
	env["MMSIDECAR_ADMIN_TOKEN_FILE"] = tokenFile
	env["MMSIDECAR_LISTEN_ADDR"] = freeAddr(t)
	for _, args := range [][]string{{"status"}, {"status", "-json"}, {"check"}, {"check", "-json"}, {"health"}, {"drain"}, {"drain", "-cancel"}, {"config"}} {
		runMain(t, env, args...)
	}
	for _, dir := range []string{filepath.Join(env["MMSIDECAR_QUEUE_DIR"], ".mmsidecar"), env["MMSIDECAR_STORE_DIR"]} {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a read-only command created %s (%v)", dir, err)
		}
	}
	// status on a store that exists creates nothing in it either.
	d := startDaemon(t, env)
	d.waitReadyz(time.Minute, http.StatusOK, "ready")
	wantCleanStop(t, d, phaseReady)
	before := treeOf(t, env["MMSIDECAR_STORE_DIR"])
	if r := runMain(t, env, "status"); r.code != 0 {
		t.Fatalf("status:\n%s", r)
	}
	if after := treeOf(t, env["MMSIDECAR_STORE_DIR"]); strings.Join(before, "\n") != strings.Join(after, "\n") {
		t.Errorf("status changed the store directory:\nbefore %v\nafter  %v", before, after)
	}
}

func treeOf(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		out = append(out, p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUnwritableStateDirNamed: a state directory that the daemon's user
// cannot write (created by root) makes run exit 2, naming the directory,
// its owner and the chown that fixes it, instead of exit 1 "mkdir ...:
// permission denied" and a restart loop (issue 22). It needs root, to run
// the daemon as another user.
func TestUnwritableStateDirNamed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it creates a root-owned directory and runs the daemon as nobody")
	}
	const uid, gid = 65534, 65534
	// The test binary must be reachable by nobody.
	dir, err := os.MkdirTemp("", "mmsidecar-owner-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "mmsidecar.test")
	copyFile(t, os.Args[0], bin, 0o755)
	queue := filepath.Join(dir, "queue")
	state := filepath.Join(queue, ".mmsidecar")
	for _, d := range []string{filepath.Join(queue, "in"), filepath.Join(state, "hold")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{queue, filepath.Join(queue, "in")} {
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	// state and state/hold stay root's, as `sudo mmsidecar status` left
	// them before the fix.
	cmd := exec.Command(bin, "run")
	cmd.Env = append(childEnv(), reexecEnv+"=1", "MMSIDECAR_NODE_ID=n1", "MMSIDECAR_QUEUE_DIR="+queue, "MMSIDECAR_MODE=mirror",
		"MMSIDECAR_STORE_DIR="+filepath.Join(dir, "store"), "MMSIDECAR_LISTEN_ADDR="+freeAddr(t), "HOME=/")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitConfig {
		t.Fatalf("run as nobody on a root-owned state dir: %v, want exit 2\n%s", err, out)
	}
	for _, want := range []string{"MMSIDECAR_STATE_DIR", state, "owned by root", "chown -R nobody:", state} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the error lacks %q:\n%s", want, out)
		}
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestNodeIDChangeRefused: a disk that has been node old's refuses to
// start as node new (exit 2), says how to hand it over on purpose, and
// keeps its marker (issue 22: the marker was overwritten and old's
// entries were taken over by chance).
func TestNodeIDChangeRefused(t *testing.T) {
	store := filepath.Join(t.TempDir(), "store")
	env := clusterEnv(t, "old", store)
	d := startDaemon(t, env)
	d.waitReadyz(time.Minute, http.StatusOK, "ready")
	wantCleanStop(t, d, phaseReady)
	marker := filepath.Join(env["MMSIDECAR_QUEUE_DIR"], ".mmsidecar", "node-id")
	env["MMSIDECAR_NODE_ID"] = "new"
	r := runMain(t, env, "run")
	if r.code != exitConfig {
		t.Fatalf("run as new on old's disk: want exit 2\n%s", r)
	}
	for _, want := range []string{`belongs to node "old"`, "MMSIDECAR_NODE_ID=old", "mmsidecar drain", marker} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the error lacks %q:\n%s", want, r)
		}
	}
	if data, err := os.ReadFile(marker); err != nil || strings.TrimSpace(string(data)) != "old" {
		t.Errorf("marker now %q (%v), want old", data, err)
	}
	// The hand-over the message describes works: remove the records,
	// start as new.
	for _, f := range []string{marker, filepath.Join(env["MMSIDECAR_QUEUE_DIR"], ".mmsidecar", "epoch")} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	d = startDaemon(t, env)
	d.waitReadyz(time.Minute, http.StatusOK, "ready")
	wantCleanStop(t, d, phaseReady)
}

// TestStatusWithoutDaemon: status says there is no daemon, where it
// looked, and shows no zero times nor hour counts in the thousands
// (issue 22).
func TestStatusWithoutDaemon(t *testing.T) {
	env := clusterEnv(t, "n1", filepath.Join(t.TempDir(), "store"))
	env["MMSIDECAR_LISTEN_ADDR"] = freeAddr(t)
	r := runMain(t, env, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "no daemon at "+env["MMSIDECAR_LISTEN_ADDR"]) {
		t.Errorf("status without a daemon:\n%s", r)
	}
	if !strings.Contains(r.stdout, "WARNING: SINGLE-HOST STORE") {
		t.Errorf("status does not warn about cluster mode on the embedded store:\n%s", r)
	}
	r = runMain(t, env, "status", "-json")
	var out statusOutput
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || out.Local != nil || !strings.Contains(out.LocalError, "no daemon at") || len(out.Warnings) != 1 {
		t.Errorf("status -json without a daemon (%v):\n%s", err, r)
	}
}

// TestStatusAges: a queue without entries shows no zero time, and ages
// read as days, hours and minutes.
func TestStatusAges(t *testing.T) {
	now := time.Now()
	out := statusOutput{Taken: now, Nodes: []statusNode{{Node: "a", State: "live", Epoch: 2, LeaseAgeSeconds: 3.2, Entries: 1,
		Queues: []statusQueue{{Queue: "in", Entries: 1, Oldest: now.Add(-730*24*time.Hour - 13*time.Minute)}}}},
		Local: &localStatus{Node: "a", State: "live", Ready: true, Queues: map[string]localQueue{
			"in": {Pck: 1, Oldest: now.Add(-17 * time.Minute), LastMirror: now.Add(-2 * time.Second)}, "out": {}}}}
	var b strings.Builder
	printStatus(&b, out)
	text := b.String()
	for _, bad := range []string{"0001-01-01", "17520h", "h13m"} {
		if strings.Contains(text, bad) {
			t.Errorf("status shows %q:\n%s", bad, text)
		}
	}
	for _, want := range []string{"730d0h ago", "3.2s", "17m0s ago"} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}
	js, err := json.Marshal(out.Local.Queues["out"])
	if err != nil || strings.Contains(string(js), "0001-01-01") || strings.Contains(string(js), "oldest") {
		t.Errorf("an empty queue's JSON shows a zero time: %s", js)
	}
	for d, want := range map[time.Duration]string{0: "0s", 1500 * time.Millisecond: "1.5s", 90 * time.Second: "1m30s",
		5 * time.Hour: "5h00m", 49 * time.Hour: "2d1h"} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// TestSDNotify: under systemd (NOTIFY_SOCKET, WATCHDOG_USEC) the daemon
// reports its phases, READY=1 once ready, pings the watchdog and says
// STOPPING=1 on SIGTERM.
func TestSDNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	env := clusterEnv(t, "n1", filepath.Join(t.TempDir(), "store"), "MMSIDECAR_MODE", "mirror")
	d := startDaemon(t, env, "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000")
	var seen []string
	expect := func(want string) {
		t.Helper()
		deadline := time.After(time.Minute)
		for {
			select {
			case m := <-msgs:
				seen = append(seen, m)
				if strings.Contains(m, want) {
					return
				}
			case <-deadline:
				t.Fatalf("no %q from the daemon; got %q", want, seen)
			}
		}
	}
	expect("STATUS=" + phaseStore)
	expect("READY=1")
	expect("WATCHDOG=1")
	expect("WATCHDOG=1")
	if code, _ := d.stop(30 * time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
	expect("STOPPING=1")
}
