package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/runner/gatefile"
)

// TestDaemonRunnerGate: a daemon with MMSIDECAR_RUNNER_GATE publishes an
// open gate once live, counts the runners that honour it (in /readyz,
// GET /status and mmsidecar_gate_runners), and a SIGTERM closes the gate
// and leaves every entry where it is.
func TestDaemonRunnerGate(t *testing.T) {
	env := clusterEnv(t, "g1", t.TempDir(), "MMSIDECAR_RUNNER_GATE", "true")
	queue := env["MMSIDECAR_QUEUE_DIR"]
	enqueue(t, queue, "in", 5)
	state := filepath.Join(queue, ".mmsidecar")
	// One Mailman runner with the plugin: its record, locked by this test.
	if err := os.MkdirAll(filepath.Join(state, gatefile.RunnersDir), 0o770); err != nil {
		t.Fatal(err)
	}
	rec, err := gatefile.RegisterRunner(filepath.Join(state, gatefile.RunnersDir), gatefile.RunnerInfo{PID: os.Getpid(), Runner: "in:0:1", Queue: "in", BootID: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	d := startDaemon(t, env)
	d.waitReadyz(time.Minute, 200, "1 runners honour it")
	body := d.waitReadyz(time.Minute, 200, "runner gate: open")
	if !strings.Contains(body, "runners guarded by the gate") {
		t.Errorf("/readyz does not say the gate guards the runners:\n%s", body)
	}
	code, status, err := d.get("/status")
	if err != nil || code != 200 {
		t.Fatalf("GET /status: %d %v", code, err)
	}
	var st struct {
		Gate struct {
			Mode         string         `json:"mode"`
			Open         bool           `json:"open"`
			Runners      int            `json:"runners"`
			RunnersQueue map[string]int `json:"runners_by_queue"`
		} `json:"gate"`
	}
	if err := json.Unmarshal([]byte(status), &st); err != nil {
		t.Fatal(err)
	}
	if st.Gate.Mode != "on" || !st.Gate.Open || st.Gate.Runners != 1 || st.Gate.RunnersQueue["in"] != 1 {
		t.Errorf("status gate %+v, want on, open, 1 runner in \"in\"", st.Gate)
	}
	_, metrics, err := d.get("/metrics")
	if err != nil || !strings.Contains(metrics, "mmsidecar_gate_runners 1") || !strings.Contains(metrics, "mmsidecar_gate_open 1") {
		t.Errorf("metrics lack mmsidecar_gate_runners 1 / mmsidecar_gate_open 1 (err %v)", err)
	}
	if code, took := d.stop(30 * time.Second); code != 0 {
		t.Fatalf("stop: exit %d after %s", code, took)
	}
	data, err := os.ReadFile(filepath.Join(state, gatefile.FileName))
	if err != nil {
		t.Fatal(err)
	}
	g, err := gatefile.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if g.Admit != gatefile.AdmitNew || g.Deadline != 0 || g.Reason != "stopped" {
		t.Errorf("gate after SIGTERM: %+v, want closed (stopped)", g)
	}
	if n := countPck(t, queue, "in"); n != 5 {
		t.Errorf("%d entries left in the queue after the stop, want all 5 (the gate is the fence: nothing held)", n)
	}
}
