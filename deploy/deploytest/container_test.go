package deploytest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
	"github.com/mmsidecar/mmsidecar/store"
)

// TestContainerImage builds deploy/Dockerfile's final stage with podman
// (its build stage run on the host, see buildImage) and runs that image
// against the test MinIO: what the image is, one node's life, a drain
// into a second container, and a killed node's backlog restored by its
// peer. It needs root and podman with runc; scripts/test.sh installs
// them and makes the test required (storetest.EnvTestMinIO set to require).
func TestContainerImage(t *testing.T) {
	p := needPodman(t)
	started := time.Now()
	image, stage := buildImage(t, p)
	t.Logf("podman %s, runtime %s: built %s (version %s, commit %s) in %v",
		p.version, p.runtime, image, stage.Version, stage.Revision, time.Since(started).Round(time.Millisecond))
	t.Run("Version", func(t *testing.T) { testContainerVersion(t, p, image, stage) })
	t.Run("Node", func(t *testing.T) { testContainerNode(t, p, image) })
	t.Run("Drain", func(t *testing.T) { testContainerDrain(t, p, image) })
	t.Run("Kill", func(t *testing.T) { testContainerKill(t, p, image) })
}

// testContainerVersion: `version` prints the version and commit the image
// was built with, and the image's labels say the same.
func testContainerVersion(t *testing.T, p *podman, image string, stage stageOutput) {
	out := p.must(t, append(append([]string{"run", "--rm"}, runFlags...), image, "version")...)
	want := fmt.Sprintf("mmsidecar %s (commit %s,", stage.Version, stage.Revision)
	if !strings.Contains(out, want) {
		t.Errorf("podman run %s version printed %q, want a line starting %q", image, out, want)
	}
	var imgs []struct {
		Config struct {
			User   string
			Labels map[string]string
		}
		Healthcheck struct{ Test []string }
	}
	if err := json.Unmarshal([]byte(p.must(t, "image", "inspect", image)), &imgs); err != nil || len(imgs) != 1 {
		t.Fatalf("podman image inspect: %v", err)
	}
	cfg := imgs[0].Config
	if hc := strings.Join(imgs[0].Healthcheck.Test, " "); !strings.HasSuffix(hc, "/mmsidecar health") {
		t.Errorf("the image's HEALTHCHECK is %q, want mmsidecar health (OCI format drops it: build with --format docker)", hc)
	}
	img := imageFacts(t)
	if cfg.User != fmt.Sprintf("%d:%d", img.UID, img.GID) {
		t.Errorf("image user %q, want %d:%d", cfg.User, img.UID, img.GID)
	}
	if v, r := cfg.Labels["org.opencontainers.image.version"], cfg.Labels["org.opencontainers.image.revision"]; v != stage.Version || r != stage.Revision {
		t.Errorf("image labels version %q revision %q, want %q %q", v, r, stage.Version, stage.Revision)
	}
}

// testContainerNode runs one node: it runs as the image's user with a
// read-only root filesystem, turns healthy, mirrors an entry written into
// the queue directory mounted from the host and deletes the copy once the
// entry is finished, and ends on one SIGTERM with exit 0.
func testContainerNode(t *testing.T, p *podman, image string) {
	c := newCtrCluster(t, p, image)
	a := c.start("a")
	eventually(t, "podman healthcheck run", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := p.run(ctx, "healthcheck", "run", a.name)
		return err == nil, fmt.Sprintf("%v: %s", err, strings.TrimSpace(out))
	})
	st := p.inspect(t, a.name)
	if st.State.Health.Status != "healthy" {
		t.Errorf("health status %q after a passing check, want healthy", st.State.Health.Status)
	}
	checkProcess(t, st, c.img)

	e := a.enqueue(t, "in", 1)[0]
	c.waitCopies(t, "a", []entry{e})
	ref := c.copies(t, "a")[e.Base]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	body, _, err := store.GetBytes(ctx, c.st, c.layout.MirrorKey("a", ref.Epoch, ref.Entry))
	if err != nil {
		t.Fatalf("read the copy: %v", err)
	}
	if local, err := os.ReadFile(filepath.Join(a.queueDir, "in", e.Base+".pck")); err != nil || !bytes.Equal(body, local) {
		t.Errorf("the copy differs from the queue file (%v)", err)
	}
	// Mailman finishes the entry: .pck -> .bak -> unlinked.
	in := filepath.Join(a.queueDir, "in", e.Base)
	if err := os.Rename(in+".pck", in+".bak"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(in + ".bak"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the finished entry's copy deleted", func() (bool, string) {
		_, ok := c.copies(t, "a")[e.Base]
		return !ok, "copy still in the store"
	})

	// podman stop sends the image's STOPSIGNAL (SIGTERM) and SIGKILLs
	// after -t seconds: exit 0 means the sidecar flushed, fenced and
	// exited within MMSIDECAR_SHUTDOWN_TIMEOUT by itself.
	stopAt := time.Now()
	p.must(t, "stop", "-t", strconv.Itoa(int(ctrShutdownTimeout/time.Second)), a.name)
	st = p.inspect(t, a.name)
	t.Logf("podman stop: %s after %v, exit %d", st.State.Status, time.Since(stopAt).Round(time.Millisecond), st.State.ExitCode)
	if st.State.Running || st.State.ExitCode != 0 {
		t.Errorf("after SIGTERM: %s, exit %d; want exited with 0 within MMSIDECAR_SHUTDOWN_TIMEOUT (%v)", st.State.Status, st.State.ExitCode, ctrShutdownTimeout)
	}
}

// checkProcess checks the container's main process as the kernel sees
// it: every uid and gid the image's, no supplementary root group, and the
// root filesystem mounted read-only.
func checkProcess(t *testing.T, st containerState, img sidecarImage) {
	t.Helper()
	if !st.HostConfig.ReadonlyRootfs {
		t.Errorf("podman says the root filesystem is not read-only")
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.State.Pid))
	if err != nil {
		t.Fatalf("the container's process: %v", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		key, val, _ := strings.Cut(line, ":")
		ids := strings.Fields(val)
		switch key {
		case "Uid", "Gid":
			want := strconv.Itoa(img.UID)
			if key == "Gid" {
				want = strconv.Itoa(img.GID)
			}
			for _, id := range ids {
				if id != want {
					t.Errorf("container process %s: %v, want all %s", key, ids, want)
					break
				}
			}
		case "Groups":
			for _, id := range ids {
				if id == "0" {
					t.Errorf("container process has the supplementary group 0: %v", ids)
				}
			}
		}
	}
	if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", st.State.Pid)); err == nil {
		t.Logf("the sidecar has %d files open", len(fds))
	}
	mounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", st.State.Pid))
	if err != nil {
		t.Fatal(err)
	}
	rootRO := false
	for _, line := range strings.Split(string(mounts), "\n") {
		// id parent major:minor root mountpoint options ...
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == "/" {
			rootRO = strings.Contains(","+f[5]+",", ",ro,")
		}
	}
	if !rootRO {
		t.Errorf("the container's / is not mounted read-only:\n%s", mounts)
	}
}

// checkMailmanFile checks a file the sidecar restored: Mailman's owner
// (the queue directory's, here the image's user) and mode 0660.
func checkMailmanFile(t *testing.T, path string, img sidecarImage) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) != img.UID || int(st.Gid) != img.GID || fi.Mode().Perm() != 0o660 {
		t.Errorf("%s: mode %v, owner %v; want 0660 and %d:%d", path, fi.Mode().Perm(), fi.Sys(), img.UID, img.GID)
	}
}

// testContainerDrain: `mmsidecar drain` run with `podman exec` hands a
// node's backlog to the other sidecar container and exits 0.
func testContainerDrain(t *testing.T, p *podman, image string) {
	c := newCtrCluster(t, p, image)
	a, b, backlog := c.pairWithBacklog(t, 20)

	ctx, cancel := context.WithTimeout(context.Background(), ctrDeadline)
	defer cancel()
	drainAt := time.Now()
	out, err := p.run(ctx, "exec", a.name, "/usr/local/bin/mmsidecar", "drain")
	if err != nil {
		t.Fatalf("podman exec %s mmsidecar drain: %v\n%s", a.name, err, out)
	}
	t.Logf("drain: exit 0 after %v", time.Since(drainAt).Round(time.Millisecond))

	onB := b.local(t, "in", fence.ExtPck)
	for _, e := range backlog {
		if onB[e.Base] != e.ID {
			t.Errorf("%s (%s) is not queued on b after the drain", e.Base, e.ID)
		}
	}
	if len(onB) != len(backlog) {
		t.Errorf("b holds %d entries, the backlog was %d", len(onB), len(backlog))
	}
	for base := range onB {
		checkMailmanFile(t, filepath.Join(b.queueDir, "in", base+".pck"), c.img)
	}
	if left := a.local(t, "in", fence.ExtPck); len(left) > 0 {
		t.Errorf("a still queues %d entries after its drain", len(left))
	}
	if held := a.held(t); len(held) > 0 {
		t.Errorf("a still holds %v after its drain", held)
	}
	if n := len(c.copies(t, "a")); n > 0 {
		t.Errorf("a's namespace still has %d copies", n)
	}
	c.waitCopies(t, "b", backlog)
}

// testContainerKill: the container of the node with a backlog is killed
// (SIGKILL), and the other node's container restores every entry. The
// verdict is the chaos suite's for its kill scenario: every entry is
// processed (here by the test, as the survivor's Mailman) exactly once on
// the survivor, an entry in flight at the kill once more, nothing lost.
func testContainerKill(t *testing.T, p *podman, image string) {
	c := newCtrCluster(t, p, image)
	a, b, all := c.pairWithBacklog(t, 21)
	// a's runner has dequeued one entry when the node dies.
	inFlight := all[len(all)-1]
	in := filepath.Join(a.queueDir, "in", inFlight.Base)
	if err := os.Rename(in+".pck", in+".bak"); err != nil {
		t.Fatal(err)
	}
	ledger := []ledgerRun{{ID: inFlight.ID, Node: "a"}}

	p.must(t, "kill", a.name)
	killedAt := time.Now()
	eventually(t, "b restores a's backlog", func() (bool, string) {
		have := b.local(t, "in", fence.ExtPck)
		return len(have) >= len(all), fmt.Sprintf("%d of %d restored", len(have), len(all))
	})
	t.Logf("kill: b restored %d entries %v after the SIGKILL (lease TTL %v + grace %v)",
		len(all), time.Since(killedAt).Round(time.Millisecond), ctrLeaseTTL, ctrLeaseGrace)

	// b's Mailman: one pass over the queue, as a runner.
	w := &runnertest.Worker{QueueDir: b.queueDir, Queue: "in", Node: "b", OnEvent: func(ev runnertest.Event) {
		if ev.Kind == runnertest.Dequeued {
			ledger = append(ledger, ledgerRun{ID: ev.ID, Node: "b"})
		}
	}}
	if _, err := w.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
	lost, extra := judgeKill(all, ledger, "a", map[string]bool{inFlight.ID: true})
	if len(lost) > 0 || len(extra) > 0 {
		t.Errorf("after the kill: lost %v; runs beyond once per entry (once more in flight): %v", lost, extra)
	}
	eventually(t, "every copy deleted once b finished the entries", func() (bool, string) {
		na, nb := len(c.copies(t, "a")), len(c.copies(t, "b"))
		return na == 0 && nb == 0, fmt.Sprintf("a's namespace %d copies, b's %d", na, nb)
	})
}

// ledgerRun is one processing of an entry: its id and the node.
type ledgerRun struct{ ID, Node string }

// judgeKill applies the chaos suite's kill verdict to one queue hop:
// every injected entry ran exactly once on a survivor, the killed node ran
// none but those in flight at the kill (which its survivor runs once more,
// as Mailman's .bak recovery does), and nothing ran that nobody injected.
func judgeKill(injected []entry, ledger []ledgerRun, killed string, inFlight map[string]bool) (lost, extra []string) {
	runs := make(map[string][]string)
	for _, r := range ledger {
		runs[r.ID] = append(runs[r.ID], r.Node)
	}
	known := make(map[string]bool)
	for _, e := range injected {
		known[e.ID] = true
		survivor, onKilled := 0, 0
		for _, n := range runs[e.ID] {
			if n == killed {
				onKilled++
			} else {
				survivor++
			}
		}
		switch {
		case survivor == 0:
			lost = append(lost, e.ID)
		case survivor > 1, onKilled > 1, onKilled == 1 && !inFlight[e.ID]:
			extra = append(extra, fmt.Sprintf("%s ran on %v", e.ID, runs[e.ID]))
		}
	}
	for id, nodes := range runs {
		if !known[id] {
			extra = append(extra, fmt.Sprintf("%s (never injected) ran on %v", id, nodes))
		}
	}
	sort.Strings(extra)
	return lost, extra
}

// TestJudgeKill checks the kill verdict on ledgers that break it.
func TestJudgeKill(t *testing.T) {
	injected := []entry{{ID: "m1"}, {ID: "m2"}, {ID: "m3"}}
	inFlight := map[string]bool{"m3": true}
	for _, tc := range []struct {
		name        string
		ledger      []ledgerRun
		lost, extra int
	}{
		{"all once, in flight re-run", []ledgerRun{{"m3", "a"}, {"m1", "b"}, {"m2", "b"}, {"m3", "b"}}, 0, 0},
		{"one lost", []ledgerRun{{"m1", "b"}, {"m3", "b"}}, 1, 0},
		{"in flight only on the killed node", []ledgerRun{{"m3", "a"}, {"m1", "b"}, {"m2", "b"}}, 1, 0},
		{"twice on the survivor", []ledgerRun{{"m1", "b"}, {"m1", "b"}, {"m2", "b"}, {"m3", "b"}}, 0, 1},
		{"not in flight but run on the killed node", []ledgerRun{{"m1", "a"}, {"m1", "b"}, {"m2", "b"}, {"m3", "b"}}, 0, 1},
		{"unknown entry", []ledgerRun{{"m1", "b"}, {"m2", "b"}, {"m3", "b"}, {"x", "b"}}, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lost, extra := judgeKill(injected, tc.ledger, "a", inFlight)
			if len(lost) != tc.lost || len(extra) != tc.extra {
				t.Errorf("lost %v, extra %v; want %d lost, %d extra", lost, extra, tc.lost, tc.extra)
			}
		})
	}
}
