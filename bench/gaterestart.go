package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/mmsidecar/mmsidecar/runner/gatefile"
)

// gateRestart times a graceful restart of a node holding n entries with
// the runner gate as the fence (MMSIDECAR_RUNNER_GATE=true): SIGTERM
// closes the gate and moves nothing, and the next start, finding its
// lease still its own, opens the gate at once. Mailman's runners are back
// to work when the gate opens; compare the hold-and-settle restart.
func gateRestart(ctx context.Context, e *env, c config, t *table) error {
	n := c.scaleEntries
	label := fmt.Sprintf("5 scale %d entries", n)
	if e.inproc {
		t.add(row{Workload: label, Figure: "restart after graceful stop, runner gate on", Sidecar: "n/a (-inproc runs no gate)"})
		return nil
	}
	root, err := e.workDir("gaterestart")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	if err := writeEntries(filepath.Join(root, "in"), n, 4<<10); err != nil {
		return err
	}
	bucket, _, err := e.newBucket(ctx, "gaterestart")
	if err != nil {
		return err
	}
	o := sidecarOpts{Node: "gated", QueueDir: root, Bucket: bucket, Env: []string{"MMSIDECAR_RUNNER_GATE=true"}}
	sc, _, err := startAndTime(ctx, e, o, 5*time.Minute)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	err = waitUploads(wctx, sc, float64(n))
	cancel()
	if err != nil {
		sc.kill()
		return err
	}
	t0 := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	err = sc.stop(sctx)
	cancel()
	if err != nil {
		return err
	}
	stopTook := time.Since(t0)
	held, _ := countEntries(filepath.Join(root, ".mmsidecar", "hold", "in"))
	gatePath := filepath.Join(root, ".mmsidecar", gatefile.FileName)
	// An entry born before the stop stands for the backlog.
	old := oldestBase(filepath.Join(root, "in"))
	if old == "" {
		return fmt.Errorf("gate restart: no entry left in the queue after SIGTERM")
	}
	if open, why := gateAdmits(gatePath, old); open {
		return fmt.Errorf("gate restart: the gate admits the backlog after SIGTERM (%s)", why)
	}
	t1 := time.Now()
	started := make(chan startResult, 1)
	go func() {
		sc, st, err := startAndTime(ctx, e, o, 30*time.Minute)
		started <- startResult{sc, st, err}
	}()
	// Poll until the gate opens; give up a minute after the sidecar is
	// ready (or failed to start) with the gate still closed.
	var openAfter time.Duration
	var res *startResult
	var giveUp <-chan time.Time
	why := ""
	for openAfter == 0 {
		var open bool
		if open, why = gateAdmits(gatePath, old); open {
			openAfter = time.Since(t1)
			break
		}
		select {
		case r := <-started:
			res = &r
			giveUp = time.After(time.Minute)
		case <-giveUp:
			if res.sc != nil {
				res.sc.kill()
			}
			return fmt.Errorf("gate restart: the gate did not open within a minute of the start (%s; start: %v)", why, res.err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if res == nil {
		r := <-started
		res = &r
	}
	if res.err != nil {
		return res.err
	}
	defer res.sc.kill()
	after, _ := countEntries(filepath.Join(root, "in"))
	e.log("scale: runner gate on: SIGTERM with %d entries took %s (%d held); restart: gate open %s after start, ready %s; %d entries in the queue", n, secs(stopTook), len(held), secs(openAfter), secs(res.st.ready), len(after))
	t.add(row{Workload: label, Figure: "graceful stop, runner gate on (closes the gate, moves nothing)",
		Sidecar: fmt.Sprintf("%s, %d held", secs(stopTook), len(held))})
	t.add(row{Workload: label, Figure: "restart after graceful stop, runner gate on: start → Mailman back to work (gate open)",
		Sidecar: fmt.Sprintf("%s (ready %s)", secs(openAfter), secs(res.st.ready)), Target: "≤ 5 s", Met: verdict(openAfter <= 5*time.Second, secs(openAfter))})
	return nil
}

type startResult struct {
	sc  sidecar
	st  startTimes
	err error
}

// gateAdmits says whether a runner reading the gate record at path now
// may dequeue the entry base of queue in, and why.
func gateAdmits(path, base string) (bool, string) {
	boot, err := gatefile.BootTime()
	if err != nil {
		return false, err.Error()
	}
	id, _ := gatefile.ReadBootID()
	rec, err := gatefile.NewReader(path).Read()
	return gatefile.Admit(rec, err, "in", base, boot.Seconds(), id)
}

// oldestBase returns the base of the oldest entry in dir ("" if none).
func oldestBase(dir string) string {
	bases, err := countEntries(dir)
	if err != nil {
		return ""
	}
	oldest := ""
	for base := range bases {
		if oldest == "" || base < oldest {
			oldest = base
		}
	}
	return oldest
}
