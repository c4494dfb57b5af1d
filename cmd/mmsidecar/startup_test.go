package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// wantCleanStop sends one SIGTERM and checks that the daemon exits 0
// within MMSIDECAR_SHUTDOWN_TIMEOUT (20s here), logging "stopped" at INFO
// and nothing at WARN or above after the signal (issues 21 and 22: a
// sidecar waiting for its store ignored the first SIGTERM, and a second
// one ended it with exit 1).
func wantCleanStop(t *testing.T, d *daemonProc, during string) {
	t.Helper()
	before := len(d.logLines())
	code, took := d.stop(20 * time.Second)
	if code != 0 {
		t.Errorf("exit %d after one SIGTERM %s, want 0", code, during)
	}
	lines := d.logLines()
	stopped := false
	for _, l := range lines[min(before, len(lines)):] {
		if l.Level == "WARN" || l.Level == "ERROR" {
			t.Errorf("a clean stop logged at %s: %s", l.Level, l.Raw)
		}
		if l.Msg == "stopped" {
			stopped = l.Level == "INFO"
			if !strings.Contains(l.Raw, during) {
				t.Errorf("the stop does not say it came %s: %s", during, l.Raw)
			}
		}
	}
	if !stopped {
		t.Errorf("no INFO \"stopped\" log line after the signal")
	}
	t.Logf("stopped %s in %s", during, took.Round(time.Millisecond))
}

// TestListenFirstAndStopWhileStoreUnreachable: with the store away at
// start, /healthz, /metrics and `mmsidecar health -live` answer, /readyz
// says what the daemon waits for, and one SIGTERM stops it with exit 0.
func TestListenFirstAndStopWhileStoreUnreachable(t *testing.T) {
	closed := freeAddr(t)
	env := clusterEnv(t, "n1", filepath.Join(t.TempDir(), "store"), "MMSIDECAR_S3_ENDPOINT", closed,
		"MMSIDECAR_S3_ACCESS_KEY", "a", "MMSIDECAR_S3_SECRET_KEY", "b", "MMSIDECAR_S3_REQUEST_TIMEOUT", "1s",
		"MMSIDECAR_SHUTDOWN_TIMEOUT", "20s")
	d := startDaemon(t, env)
	// It says what it waits for, and why.
	d.waitReadyz(30*time.Second, http.StatusServiceUnavailable, phaseStore+" (for ")
	d.waitReadyz(30*time.Second, http.StatusServiceUnavailable, "unreachable for")
	if code, _, err := d.get("/healthz"); err != nil || code != http.StatusOK {
		t.Errorf("/healthz while the store is away: %d %v", code, err)
	}
	if code, body, err := d.get("/metrics"); err != nil || code != http.StatusOK || !strings.Contains(body, "mmsidecar_build_info{") {
		t.Errorf("/metrics while the store is away: %d %v (build info shown: %v)", code, err, strings.Contains(body, "mmsidecar_build_info"))
	}
	client := map[string]string{"MMSIDECAR_LISTEN_ADDR": d.addr, "MMSIDECAR_QUEUE_DIR": env["MMSIDECAR_QUEUE_DIR"], "MMSIDECAR_NODE_ID": "n1"}
	if r := runMain(t, client, "health", "-live"); r.code != 0 {
		t.Errorf("health -live while the store is away:\n%s", r)
	}
	if r := runMain(t, client, "health"); r.code != 1 || !strings.Contains(r.stderr, phaseStore) {
		t.Errorf("health while the store is away, want exit 1 saying why:\n%s", r)
	}
	wantCleanStop(t, d, phaseStore)
}

// TestStopWhileWaitingForTheLease: a node whose lease the store lost
// waits TTL + grace before it starts above its recorded epoch; one
// SIGTERM during that wait stops it, exit 0.
func TestStopWhileWaitingForTheLease(t *testing.T) {
	env := clusterEnv(t, "n1", filepath.Join(t.TempDir(), "store"), "MMSIDECAR_LEASE_TTL", "30s", "MMSIDECAR_LEASE_GRACE", "30s",
		"MMSIDECAR_LEASE_MARGIN", "3s", "MMSIDECAR_SHUTDOWN_TIMEOUT", "20s")
	state := filepath.Join(env["MMSIDECAR_QUEUE_DIR"], ".mmsidecar")
	if err := os.MkdirAll(state, 0o750); err != nil {
		t.Fatal(err)
	}
	// An earlier run of n1 tried epoch 5; its lease is not in the store.
	if err := os.WriteFile(filepath.Join(state, "epoch"), []byte("n1 5\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, env)
	d.waitReadyz(30*time.Second, http.StatusServiceUnavailable, phaseLease)
	wantCleanStop(t, d, phaseLease)
}

// TestStopWhenReady: the ordinary stop of a ready node: exit 0, INFO.
func TestStopWhenReady(t *testing.T) {
	env := clusterEnv(t, "n1", filepath.Join(t.TempDir(), "store"), "MMSIDECAR_MODE", "mirror")
	d := startDaemon(t, env)
	d.waitReadyz(30*time.Second, http.StatusOK, "ready")
	wantCleanStop(t, d, phaseReady)
}
