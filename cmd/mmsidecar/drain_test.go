package main

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDrainControl drives drains of a real two-node cluster (two daemons
// on one embedded store): state-changing requests need the admin token;
// a drain with no live peer refuses at once and moves nothing; a drain
// makes /readyz say so; `mmsidecar drain -cancel` gives the held entries
// back to Mailman (issue 22).
func TestDrainControl(t *testing.T) {
	tokenFile, token := writeToken(t)
	store := filepath.Join(t.TempDir(), "store")
	envA := clusterEnv(t, "a", store, "MMSIDECAR_ADMIN_TOKEN_FILE", tokenFile)
	a := startDaemon(t, envA)
	a.waitReadyz(time.Minute, http.StatusOK, "ready")
	const entries = 40
	enqueue(t, envA["MMSIDECAR_QUEUE_DIR"], "in", entries)
	client := map[string]string{"MMSIDECAR_NODE_ID": "a", "MMSIDECAR_QUEUE_DIR": envA["MMSIDECAR_QUEUE_DIR"],
		"MMSIDECAR_STORE_DIR": store, "MMSIDECAR_LISTEN_ADDR": a.addr, "MMSIDECAR_ADMIN_TOKEN_FILE": tokenFile}

	t.Run("token", func(t *testing.T) {
		for _, tok := range []string{"", "wrong-token-0123456789"} {
			for _, path := range []string{"/drain", "/drain/cancel"} {
				if code, body, err := a.do(http.MethodPost, path, tok); err != nil || code != http.StatusUnauthorized {
					t.Errorf("POST %s with token %q: %d %s %v, want 401", path, tok, code, body, err)
				}
			}
		}
		for _, path := range []string{"/drain", "/status", "/readyz", "/healthz", "/metrics", "/", "/cluster.json"} {
			if code, _, err := a.get(path); err != nil || code >= 400 && path != "/readyz" {
				t.Errorf("GET %s without a token: %d %v, want it open", path, code, err)
			}
		}
		noToken := map[string]string{}
		for k, v := range client {
			noToken[k] = v
		}
		delete(noToken, "MMSIDECAR_ADMIN_TOKEN_FILE")
		if r := runMain(t, noToken, "drain"); r.code != exitConfig || !strings.Contains(r.stderr, "MMSIDECAR_ADMIN_TOKEN_FILE") {
			t.Errorf("drain without the token file:\n%s", r)
		}
	})
	t.Run("no live peer", func(t *testing.T) {
		start := time.Now()
		r := runMain(t, client, "drain")
		if r.code != exitFailed || !strings.Contains(r.stderr, "no live peer") || !strings.Contains(r.stderr, "nothing was moved") {
			t.Fatalf("drain of the only node:\n%s", r)
		}
		t.Logf("refused in %s", time.Since(start).Round(time.Millisecond))
		if n := countPck(t, envA["MMSIDECAR_QUEUE_DIR"], "in"); n != entries {
			t.Errorf("%d of %d entries visible after the refused drain", n, entries)
		}
		a.waitReadyz(10*time.Second, http.StatusOK, "ready")
	})

	envB := clusterEnv(t, "b", store, "MMSIDECAR_ADMIN_TOKEN_FILE", tokenFile)
	b := startDaemon(t, envB)
	b.waitReadyz(time.Minute, http.StatusOK, "ready")
	a.waitFor(time.Minute, "a to see b live", func() bool {
		_, body, err := a.get("/drain")
		return err == nil && strings.Contains(body, `"peers":1`)
	})

	t.Run("cancel", func(t *testing.T) {
		code, body, err := a.do(http.MethodPost, "/drain", token)
		if err != nil || code != http.StatusAccepted {
			t.Fatalf("POST /drain: %d %s %v", code, body, err)
		}
		a.waitReadyz(10*time.Second, http.StatusServiceUnavailable, "draining")
		r := runMain(t, client, "drain", "-cancel")
		if r.code != 0 || !strings.Contains(r.stdout, "drain cancelled") {
			t.Fatalf("drain -cancel:\n%s", r)
		}
		a.waitReadyz(time.Minute, http.StatusOK, "ready")
		// Every entry is on one node, none held: the ones handed off
		// before the cancel on b, the rest back on a.
		a.waitFor(time.Minute, "every entry back in a queue", func() bool {
			na, nb := countPck(t, envA["MMSIDECAR_QUEUE_DIR"], "in"), countPck(t, envB["MMSIDECAR_QUEUE_DIR"], "in")
			return na+nb == entries && held(t, a) == 0 && held(t, b) == 0
		})
		t.Logf("after the cancel: %d entries on a, %d on b", countPck(t, envA["MMSIDECAR_QUEUE_DIR"], "in"), countPck(t, envB["MMSIDECAR_QUEUE_DIR"], "in"))
		if r := runMain(t, client, "drain", "-cancel"); r.code != 0 || !strings.Contains(r.stdout, "no drain was under way") {
			t.Errorf("a second cancel:\n%s", r)
		}
	})
	t.Run("drain", func(t *testing.T) {
		r := runMain(t, client, "drain", "-q")
		if r.code != 0 || !strings.Contains(r.stdout, "drained") {
			t.Fatalf("drain with a live peer:\n%s", r)
		}
		if n := countPck(t, envA["MMSIDECAR_QUEUE_DIR"], "in"); n != 0 || held(t, a) != 0 {
			t.Errorf("a still has %d visible, %d held", n, held(t, a))
		}
		b.waitFor(time.Minute, "every entry on b", func() bool { return countPck(t, envB["MMSIDECAR_QUEUE_DIR"], "in") == entries })
	})
	wantCleanStop(t, a, phaseReady)
	wantCleanStop(t, b, phaseReady)
}

// held is what the daemon holds in its hold area.
func held(t *testing.T, d *daemonProc) int {
	t.Helper()
	n := 0
	for _, q := range statusOfDaemon(t, d).Queues {
		n += q.Held
	}
	return n
}

// statusOfDaemon is the daemon's GET /status.
func statusOfDaemon(t *testing.T, d *daemonProc) localStatus {
	t.Helper()
	_, body, err := d.get("/status")
	if err != nil {
		t.Fatal(err)
	}
	var ls localStatus
	if err := json.Unmarshal([]byte(body), &ls); err != nil {
		t.Fatal(err)
	}
	return ls
}

// localQueueOf is queue q in the daemon's GET /status.
func localQueueOf(t *testing.T, d *daemonProc, q string) localQueue {
	t.Helper()
	return statusOfDaemon(t, d).Queues[q]
}
