//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/runner/gatefile"
)

// gatePluginCfg is the plugin section deploy/mailman/README.md adds to
// mailman.cfg.
const gatePluginCfg = `[plugin.mailman_mmsidecar]
class: mailman_mmsidecar.GatePlugin
enabled: yes
`

// installGatePlugin copies the plugin package (deploy/mailman) into a
// fresh directory the Mailman user can read and returns it, for
// PYTHONPATH: deploy/mailman/README.md's Debian way with a systemd
// drop-in (Mailman's master passes PYTHONPATH on to every runner).
func installGatePlugin(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mmsidecar-plugin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join("..", "deploy", "mailman", "mailman_mmsidecar")
	dst := filepath.Join(dir, "mailman_mmsidecar")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(src, "*.py"))
	if err != nil || len(files) == 0 {
		t.Fatalf("plugin sources in %s: %v %v", src, files, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// gateWriter writes a node's gate record the way the sidecar does (the
// Go encoder, a temp file, a rename), with no sidecar running.
type gateWriter struct {
	stateDir string
	bootID   string
}

// newGateWriter creates the node's state directory (Mailman's queue_dir/
// .mmsidecar, the sidecar's default) as the Mailman user, as the sidecar
// would.
func newGateWriter(m *Mailman, acct Account) (gateWriter, error) {
	dir := filepath.Join(m.QueueDir(), ".mmsidecar")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return gateWriter{}, err
	}
	if err := chownTree(m.QueueDir(), acct); err != nil {
		return gateWriter{}, err
	}
	id, err := gatefile.ReadBootID()
	return gateWriter{stateDir: dir, bootID: id}, err
}

// write publishes a record: admit before a deadline deadlineIn from now
// on CLOCK_BOOTTIME (negative: expired), cutoff (nil: none).
func (g gateWriter) write(t *testing.T, admit gatefile.Mode, deadlineIn time.Duration, cutoff *float64, reason string) {
	t.Helper()
	boot, err := gatefile.BootTime()
	if err != nil {
		t.Fatal(err)
	}
	now := float64(time.Now().UnixNano()) / 1e9
	data, err := gatefile.Encode(gatefile.Record{
		Node: "a", Epoch: 1, BootID: g.bootID, Deadline: (boot + deadlineIn).Seconds(),
		Admit: admit, Since: now, Cutoff: cutoff, Slew: 0.5, Reason: reason, Written: now,
	})
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(g.stateDir, ".gate.json.tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(g.stateDir, gatefile.FileName)); err != nil {
		t.Fatal(err)
	}
}

func (g gateWriter) runnersDir() string { return filepath.Join(g.stateDir, gatefile.RunnersDir) }

// waitEmptyPasses waits until the in runner has logged the gate state
// (mailman.log) and then made `passes` passes that handed out nothing
// (Mailman's debug log: "ending oneloop: 0").
func waitEmptyPasses(ctx context.Context, t *testing.T, m *Mailman, state string, passes int) {
	t.Helper()
	line := "mmsidecar gate, runner in:0:1: " + state
	err := pollUntil(ctx, 50*time.Millisecond, "the in runner to log "+state, func() (bool, error) {
		raw, err := os.ReadFile(m.mainLog())
		return strings.Contains(string(raw), line), err
	})
	if err != nil {
		t.Fatalf("%v; mailman.log:\n%s", err, m.LogTail(20))
	}
	debugLog := filepath.Join(m.LogDir(), "debug.log")
	st, err := os.Stat(debugLog)
	if err != nil {
		t.Fatal(err)
	}
	from := st.Size()
	err = pollUntil(ctx, 50*time.Millisecond, fmt.Sprintf("%d empty passes of the in runner", passes), func() (bool, error) {
		raw, err := os.ReadFile(debugLog)
		if err != nil || int64(len(raw)) < from {
			return false, err
		}
		return strings.Count(string(raw[from:]), "[IncomingRunner] ending oneloop: 0") >= passes, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// requireWaiting fails unless every post of ids waits in the in queue as
// a .pck and none was delivered.
func requireWaiting(t *testing.T, c *Cluster, m *Mailman, ids []string) {
	t.Helper()
	found, err := idsInDir(m.Queue("in"), ids)
	if err != nil {
		t.Fatal(err)
	}
	names, err := m.QueueEntries("in")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if !found[id] {
			t.Fatalf("post %s left the in queue (%v)", id, names)
		}
		for _, mem := range c.Members {
			if c.Sink.Deliveries(id, mem) > 0 {
				t.Fatalf("post %s delivered to %s while the gate was closed", id, mem)
			}
		}
	}
	for _, name := range names {
		if !strings.HasSuffix(name, ".pck") {
			t.Fatalf("in queue holds %s while the gate is closed: %v", name, names)
		}
	}
}

// TestGatePlugin runs Mailman's runners behind the runner gate with no
// sidecar: one Debian Mailman node with the plugin installed as
// deploy/mailman/README.md says, the test writing the gate records with
// the Go encoder. A post is not dequeued while the gate is missing or
// closed; with an expired record a post born after its cutoff is run
// while the older one still waits; once the gate opens the older one is
// delivered; every queue runner keeps a runner record with its lock held
// while it lives.
func TestGatePlugin(t *testing.T) {
	RequireE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	plugin := installGatePlugin(t)
	var gate gateWriter
	c := StartCluster(ctx, t, ClusterConfig{
		Nodes: []string{"a"},
		Extra: gatePluginCfg + "\n[logging.debug]\nlevel: debug\n",
		Env:   []string{"PYTHONPATH=" + plugin},
		BeforeMailman: func(ctx context.Context, c *Cluster) error {
			var err error
			gate, err = newGateWriter(c.Nodes[0].Mailman, c.Account)
			return err
		},
	})
	n := c.Nodes[0]
	m := n.Mailman
	t.Logf("one node with the plugin ready in %v", c.Timings.StartNodes.Round(time.Millisecond))

	t.Run("runner records", func(t *testing.T) {
		want := m.queueRunners()
		var live []gatefile.Runner
		err := pollUntil(ctx, 50*time.Millisecond, "a runner record per queue runner", func() (bool, error) {
			var err error
			live, err = gatefile.ListRunners(gate.runnersDir())
			return len(live) >= len(want), err
		})
		if err != nil {
			t.Fatalf("%v: %+v", err, live)
		}
		pids, err := m.RunnerPIDs()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range live {
			if r.Err != nil || r.Info.Runner != r.Info.Queue+":0:1" || r.Info.BootID != gate.bootID ||
				!slices.Equal(pids[r.Info.Queue], []int{r.Info.PID}) {
				t.Fatalf("runner record %s: %+v (%v); runner pids %v", r.Name, r.Info, r.Err, pids)
			}
			got = append(got, r.Info.Queue)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("runner records of %v, want one per queue runner %v", got, want)
		}
		t.Logf("%d runner records, each locked by its runner: %v", len(live), got)
	})

	first := injectPosts(ctx, t, c, "gate-first", 1, n)
	t.Run("missing gate", func(t *testing.T) {
		waitEmptyPasses(ctx, t, m, "closed (no gate)", 5)
		requireWaiting(t, c, m, first)
	})

	t.Run("closed gate", func(t *testing.T) {
		gate.write(t, gatefile.AdmitNone, 5*time.Minute, nil, "draining")
		waitEmptyPasses(ctx, t, m, "closed (admit none; record: draining", 5)
		requireWaiting(t, c, m, first)
	})

	var second []string
	t.Run("expired gate admits entries born after its cutoff", func(t *testing.T) {
		cutoff := float64(time.Now().UnixNano()) / 1e9
		gate.write(t, gatefile.AdmitAll, -time.Second, &cutoff, "lost")
		waitEmptyPasses(ctx, t, m, "new entries only", 3)
		// Born after cutoff + slew (0.5 s).
		err := pollUntil(ctx, 10*time.Millisecond, "the cutoff and its slew to pass", func() (bool, error) {
			return float64(time.Now().UnixNano())/1e9 > cutoff+0.6, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		second = injectPosts(ctx, t, c, "gate-second", 1, n)
		err = c.Sink.WaitFor(ctx, func() bool { return c.Sink.Tally(second, c.Members).Lost == 0 })
		if err != nil {
			t.Fatalf("post born after the cutoff not delivered: %s: %v", c.Sink.Tally(second, c.Members), err)
		}
		t.Logf("post born after the cutoff delivered after %v", time.Since(start).Round(time.Millisecond))
		requireWaiting(t, c, m, first)
	})

	t.Run("open gate", func(t *testing.T) {
		start := time.Now()
		gate.write(t, gatefile.AdmitAll, 5*time.Minute, nil, "live")
		tally, took := waitDelivered(ctx, t, c, append(slices.Clone(first), second...), start)
		if !tally.Complete() {
			t.Fatalf("after the gate opened: %s", tally)
		}
		t.Logf("gate opened: the waiting post delivered after %v: %s", took.Round(time.Millisecond), tally)
		requireNoPreserved(t, c)
		raw, err := os.ReadFile(m.mainLog())
		if err != nil {
			t.Fatal(err)
		}
		for _, state := range []string{"closed (no gate)", "closed (admit none", "new entries only", "open ("} {
			if k := strings.Count(string(raw), "mmsidecar gate, runner in:0:1: "+state); k != 1 {
				t.Errorf("the in runner logged %q %d times, want once", state, k)
			}
		}
	})

	t.Run("runners stopped", func(t *testing.T) {
		if err := m.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		live, err := gatefile.ListRunners(gate.runnersDir())
		if err != nil || len(live) != 0 {
			t.Fatalf("after Mailman stopped: %+v, %v", live, err)
		}
		left, err := os.ReadDir(gate.runnersDir())
		if err != nil || len(left) != 0 {
			t.Fatalf("records left after Mailman stopped: %v, %v", left, err)
		}
	})
}
