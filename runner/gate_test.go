package runner

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/fence/fencetest"
	"github.com/mmsidecar/mmsidecar/runner/gatefile"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
)

// gateClocks are a coordinator clock, a boot clock and a wall clock that
// advance together; boot runs 1000 s behind the coordinator's clock.
type gateClocks struct {
	clock *fencetest.Clock
	wall0 time.Time
	c0    time.Time
}

func newGateClocks() *gateClocks {
	c := fencetest.NewClock()
	return &gateClocks{clock: c, wall0: time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC), c0: c.Now()}
}

func (g *gateClocks) wall() time.Time { return g.wall0.Add(g.clock.Now().Sub(g.c0)) }

func (g *gateClocks) boot() (time.Duration, error) {
	return 1000*time.Second + g.clock.Now().Sub(g.c0), nil
}

func (g *gateClocks) config(dir string) GateConfig {
	return GateConfig{StateDir: dir, Node: "a", Clock: g.clock, Wall: g.wall, Boot: g.boot, BootID: "boot-1"}
}

func readGate(t *testing.T, dir string) *gatefile.Record {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, gatefile.FileName))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := gatefile.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// bornAt is an entry of queue in born at wall time w.
func bornAt(w time.Time, id string) fence.Entry {
	return fence.Entry{Queue: "in", Base: runnertest.NewBase(w, []byte(id)), Kind: fence.KindPck}
}

func TestGateFilePublishes(t *testing.T) {
	dir := t.TempDir()
	c := newGateClocks()
	g, err := NewGateFile(c.config(dir), OSFS{})
	if err != nil {
		t.Fatal(err)
	}
	admit := func(e fence.Entry) (bool, string) {
		t.Helper()
		boot, _ := c.boot()
		return gatefile.Admit(readGate(t, dir), nil, e.Queue, e.Base, boot.Seconds(), "boot-1")
	}
	old := bornAt(c.wall(), "old")

	// Starting, with no earlier record: closed from now.
	c.clock.Advance(time.Second)
	if err := g.PublishGate(fence.RunnerGate{Admit: fence.AdmitNew, Reason: fence.GateStarting}); err != nil {
		t.Fatal(err)
	}
	if ok, why := admit(old); ok {
		t.Fatalf("starting gate admits an older entry (%s)", why)
	}
	// Open until a deadline 2 s away.
	until := c.clock.Now().Add(2 * time.Second)
	if err := g.PublishGate(fence.RunnerGate{Epoch: 1, Admit: fence.AdmitAll, Until: until, Reason: fence.GateLive}); err != nil {
		t.Fatal(err)
	}
	rec := readGate(t, dir)
	if want := 1003.0; rec.Deadline != want || *rec.Cutoff != seconds(c.wall().Add(2*time.Second)) {
		t.Fatalf("open record: deadline %v cutoff %v, want boot deadline %v, wall cutoff 2 s from now", rec.Deadline, *rec.Cutoff, want)
	}
	if ok, why := admit(old); !ok {
		t.Fatalf("open gate refuses (%s)", why)
	}
	// The sidecar freezes: past the deadline the record closes itself,
	// for what was born before it.
	c.clock.Advance(3 * time.Second)
	if ok, why := admit(old); ok || why != gatefile.ReasonExpiredBefore {
		t.Fatalf("expired gate: %v %s", ok, why)
	}
	if ok, why := admit(bornAt(c.wall().Add(500*time.Millisecond), "new")); !ok {
		t.Fatalf("expired gate refuses an entry born after its deadline (%s)", why)
	}
	// The fence, late: uploads stopped at the deadline, not now.
	if err := g.PublishGate(fence.RunnerGate{Epoch: 1, Admit: fence.AdmitNew, Reason: fence.GateFenced}); err != nil {
		t.Fatal(err)
	}
	if rec := readGate(t, dir); *rec.Cutoff != seconds(c.wall().Add(-time.Second)) || rec.Deadline != 0 {
		t.Fatalf("late fence: cutoff %v deadline %v, want the old deadline", *rec.Cutoff, rec.Deadline)
	}
	// A restart reads what it left, and keeps its cutoff.
	g2, err := NewGateFile(c.config(dir), OSFS{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g2.PublishGate(fence.RunnerGate{Admit: fence.AdmitNew, Reason: fence.GateStarting}); err != nil {
		t.Fatal(err)
	}
	if rec := readGate(t, dir); *rec.Cutoff != seconds(c.wall().Add(-time.Second)) {
		t.Fatalf("restart moved the cutoff to %v", *rec.Cutoff)
	}
	// Declared dead meanwhile: settling admits only what was born after
	// that cutoff, and holds the older entries.
	g2.MarkDeath()
	hold, ok := g2.HoldBefore()
	if !ok || !hold.Equal(c.wall().Add(-time.Second).Add(DefaultGateSlew)) {
		t.Fatalf("HoldBefore %v %v", hold, ok)
	}
	if err := g2.PublishGate(fence.RunnerGate{Epoch: 2, Admit: fence.AdmitNew, Until: c.clock.Now().Add(2 * time.Second), Reason: fence.GateSettling}); err != nil {
		t.Fatal(err)
	}
	if ok, why := admit(old); ok || why != gatefile.ReasonBeforeSince {
		t.Fatalf("settling gate: %v %s", ok, why)
	}
	c.clock.Advance(time.Second)
	if ok, why := admit(bornAt(c.wall(), "newer")); !ok || why != gatefile.ReasonAfterSince {
		t.Fatalf("settling gate refuses a new entry: %s", why)
	}
	g3, err := NewGateFile(c.config(dir), OSFS{})
	if err != nil {
		t.Fatal(err)
	}
	if !g3.WasSettling() {
		t.Fatal("a restart does not see that the earlier run was settling")
	}
}

// TestGateFileCoversRestoredBirths: an entry restored from a peer whose
// wall clock is ahead raises the cutoff before it becomes visible.
func TestGateFileCoversRestoredBirths(t *testing.T) {
	dir := t.TempDir()
	c := newGateClocks()
	g, err := NewGateFile(c.config(dir), OSFS{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.PublishGate(fence.RunnerGate{Epoch: 1, Admit: fence.AdmitAll, Until: c.clock.Now().Add(2 * time.Second), Reason: fence.GateLive}); err != nil {
		t.Fatal(err)
	}
	ahead := bornAt(c.wall().Add(time.Minute), "from a peer ahead")
	if err := g.Cover(ahead.Born()); err != nil {
		t.Fatal(err)
	}
	rec := readGate(t, dir)
	if *rec.Cutoff < seconds(ahead.Born()) {
		t.Fatalf("cutoff %v below the restored birth %v", *rec.Cutoff, seconds(ahead.Born()))
	}
	// Expired, or fenced: the restored entry stays refused.
	c.clock.Advance(5 * time.Second)
	if err := g.PublishGate(fence.RunnerGate{Epoch: 1, Admit: fence.AdmitNew, Reason: fence.GateFenced}); err != nil {
		t.Fatal(err)
	}
	boot, _ := c.boot()
	if ok, why := gatefile.Admit(readGate(t, dir), nil, ahead.Queue, ahead.Base, boot.Seconds(), "boot-1"); ok {
		t.Fatalf("closed gate admits a restored entry born ahead (%s)", why)
	}
}

// TestHoldOlder: a node declared dead holds the .pck files born before
// its death and reports the .bak files of that age, leaving them.
func TestHoldOlder(t *testing.T) {
	c := newGateClocks()
	var gf *GateFile
	h := newHarness(t, withConfig(func(cfg *Config) {
		var err error
		gcfg := c.config(filepath.Join(t.TempDir(), "gate"))
		if err := os.MkdirAll(gcfg.StateDir, 0o750); err != nil {
			t.Fatal(err)
		}
		// Real time: the harness writes entries born now.
		gcfg.Clock, gcfg.Wall = fence.SystemClock{}, time.Now
		if gf, err = NewGateFile(gcfg, OSFS{}); err != nil {
			t.Fatal(err)
		}
		cfg.Gate = gf
	}))
	old := h.enqueue("in", "old")
	inFlight := h.enqueue("in", "in flight")
	if err := os.Rename(h.path(inFlight, "pck"), h.path(inFlight, "bak")); err != nil {
		t.Fatal(err)
	}
	if err := gf.PublishGate(fence.RunnerGate{Admit: fence.AdmitNew, Reason: fence.GateFenced}); err != nil {
		t.Fatal(err)
	}
	gf.MarkDeath()
	hold, _ := gf.HoldBefore()
	for time.Now().Before(hold.Add(10 * time.Millisecond)) {
		time.Sleep(10 * time.Millisecond) // births must be past the slew
	}
	young := h.enqueue("in", "young")
	held, inf, err := h.m.HoldOlder(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0] != old || len(inf) != 1 || inf[0] != inFlight {
		t.Fatalf("HoldOlder held %v, in flight %v; want %v and %v", held, inf, old, inFlight)
	}
	if _, err := os.Stat(h.path(inFlight, "bak")); err != nil {
		t.Fatalf("the .bak was touched: %v", err)
	}
	if _, err := os.Stat(h.path(young, "pck")); err != nil {
		t.Fatalf("the entry born after the death was moved: %v", err)
	}
	if ok, err := h.m.Hold(young); err != nil || !ok {
		t.Fatalf("Hold: %v %v", ok, err)
	}
	if ok, err := h.m.Hold(inFlight); err != nil || ok {
		t.Fatalf("Hold of a .bak: %v %v", ok, err)
	}
}

// failWrites is an FS whose WriteTemp fails while fail is set.
type failWrites struct {
	FS
	fail bool
}

func (f *failWrites) WriteTemp(dir, name string, data []byte, uid, gid int, mode os.FileMode) error {
	if f.fail {
		return errors.New("disk full")
	}
	return f.FS.WriteTemp(dir, name, data, uid, gid, mode)
}

// TestGateFileCoverRetries: a Cover whose republish failed is done by the
// next one, not taken for done.
func TestGateFileCoverRetries(t *testing.T) {
	dir := t.TempDir()
	c := newGateClocks()
	fsys := &failWrites{FS: OSFS{}}
	g, err := NewGateFile(c.config(dir), fsys)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.PublishGate(fence.RunnerGate{Epoch: 1, Admit: fence.AdmitAll, Until: c.clock.Now().Add(2 * time.Second), Reason: fence.GateLive}); err != nil {
		t.Fatal(err)
	}
	ahead := bornAt(c.wall().Add(time.Minute), "ahead")
	fsys.fail = true
	if err := g.Cover(ahead.Born()); err == nil {
		t.Fatal("Cover succeeded without writing the record")
	}
	fsys.fail = false
	if err := g.Cover(ahead.Born()); err != nil {
		t.Fatal(err)
	}
	if rec := readGate(t, dir); *rec.Cutoff < seconds(ahead.Born()) {
		t.Fatalf("cutoff %v below the birth %v after the retried Cover", *rec.Cutoff, seconds(ahead.Born()))
	}
}

// TestGateFileRestartKeepsDenialsAndSettling: a restart takes over the
// earlier run's deny list, and sees it was settling even when its last
// record was closed.
func TestGateFileRestartKeepsDenialsAndSettling(t *testing.T) {
	dir := t.TempDir()
	c := newGateClocks()
	g, err := NewGateFile(c.config(dir), OSFS{})
	if err != nil {
		t.Fatal(err)
	}
	denied := bornAt(c.wall(), "denied")
	if err := g.PublishGate(fence.RunnerGate{Admit: fence.AdmitNew, Reason: fence.GateFenced}); err != nil {
		t.Fatal(err)
	}
	g.MarkDeath()
	c.clock.Advance(time.Second)
	if err := g.PublishGate(fence.RunnerGate{Epoch: 2, Admit: fence.AdmitNew, Until: c.clock.Now().Add(2 * time.Second), Reason: fence.GateSettling, Deny: []fence.Entry{denied}}); err != nil {
		t.Fatal(err)
	}
	c.clock.Advance(time.Second)
	if err := g.PublishGate(fence.RunnerGate{Epoch: 2, Admit: fence.AdmitNew, Reason: fence.GateLost, Deny: []fence.Entry{denied}}); err != nil {
		t.Fatal(err)
	}
	g2, err := NewGateFile(c.config(dir), OSFS{})
	if err != nil {
		t.Fatal(err)
	}
	if !g2.WasSettling() {
		t.Fatal("a closed record written while settling is not read as settling")
	}
	if d := g2.Denied(); len(d) != 1 || d[0] != denied {
		t.Fatalf("Denied() = %v, want %v", d, denied)
	}
}
