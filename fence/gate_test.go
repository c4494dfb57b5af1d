package fence_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/fence/fencetest"
)

// newGatedCluster starts nodes whose Mailman runners honour the runner
// gate (fence.Config.RunnerGate).
func newGatedCluster(t *testing.T, ids ...string) *cluster {
	c := &cluster{t: t, clock: fencetest.NewClock(), shared: newCluster(t).shared, layout: fence.NewLayout("mm"),
		nodes: map[string]*tnode{}, records: map[string]*memRecord{}, gates: map[string]*fencetest.Gate{}, runnerGate: true}
	for _, id := range ids {
		c.start(id, nil, false)
		c.order = append(c.order, id)
	}
	return c
}

// born returns entry i born at the cluster's current time.
func (c *cluster) born(i int) fence.Entry {
	now := c.clock.Now()
	return fence.Entry{Queue: "in", Base: fmt.Sprintf("%d.%06d+%040x", now.Unix(), now.Nanosecond()/1000, i), Kind: fence.KindPck}
}

// enqueueNew writes entries born now on node id and mirrors them.
func (c *cluster) enqueueNew(id string, from, to int) []fence.Entry {
	var es []fence.Entry
	for i := from; i < to; i++ {
		e := c.born(i)
		c.nodes[id].local.Enqueue(e, []byte(fmt.Sprintf("message %d", i)))
		es = append(es, e)
	}
	if err := c.nodes[id].local.Sync(context.Background()); err != nil {
		c.t.Fatal(err)
	}
	return es
}

// runnable lists what node id's runners may dequeue now: visible and
// admitted by its last published gate.
func (c *cluster) runnable(id string) []fence.Entry {
	var out []fence.Entry
	for _, e := range c.nodes[id].local.Visible() {
		if c.gates[id].Admits(e, c.clock.Now()) {
			out = append(out, e)
		}
	}
	return out
}

// checkRunnable fails when an entry is runnable on two nodes: G2 with the
// gate, where runners honour it even when the sidecar cannot act.
func (c *cluster) checkRunnable(ids ...string) {
	c.t.Helper()
	seen := map[fence.Entry]string{}
	for _, id := range ids {
		for _, e := range c.runnable(id) {
			if other, dup := seen[e]; dup {
				c.t.Fatalf("G2 violated with the gate: %s runnable on %s and %s", e, other, id)
			}
			seen[e] = id
		}
	}
}

func TestDecideGate(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	deadline := now.Add(2 * time.Second)
	for _, tc := range []struct {
		name   string
		view   func(v *fence.GateViewForTest)
		admit  fence.Admit
		until  bool
		reason string
	}{
		{"live", func(v *fence.GateViewForTest) {}, fence.AdmitAll, true, fence.GateLive},
		{"settling without a death", func(v *fence.GateViewForTest) { v.State = fence.StateSettling }, fence.AdmitAll, true, fence.GateLive},
		{"settling after a death", func(v *fence.GateViewForTest) { v.State, v.Settling = fence.StateSettling, true }, fence.AdmitNew, true, fence.GateSettling},
		{"draining", func(v *fence.GateViewForTest) { v.State, v.Drain = fence.StateDraining, true }, fence.AdmitNone, true, fence.GateDraining},
		{"drain before settled", func(v *fence.GateViewForTest) { v.Drain, v.Settling = true, true }, fence.AdmitNone, true, fence.GateDraining},
		{"overdue", func(v *fence.GateViewForTest) { v.Now = deadline }, fence.AdmitNew, false, "expired"},
		{"fenced", func(v *fence.GateViewForTest) { v.State, v.Reason = fence.StateFenced, fence.GateLost }, fence.AdmitNew, false, fence.GateLost},
		{"starting", func(v *fence.GateViewForTest) {
			v.State, v.Reason, v.Deadline = fence.StateStarting, fence.GateStarting, time.Time{}
		}, fence.AdmitNew, false, fence.GateStarting},
		{"stopped", func(v *fence.GateViewForTest) { v.Stopped, v.Reason = true, fence.GateStopped }, fence.AdmitNew, false, fence.GateStopped},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := fence.GateViewForTest{Now: now, State: fence.StateLive, Epoch: 3, Deadline: deadline, Reason: "expired"}
			tc.view(&v)
			g := fence.DecideGateForTest(v)
			if g.Admit != tc.admit || !g.Until.IsZero() != tc.until || g.Reason != tc.reason || g.Epoch != 3 {
				t.Fatalf("gate %+v, want admit %s, until set %v, reason %s", g, tc.admit, tc.until, tc.reason)
			}
			if tc.until && !g.Until.Equal(deadline) {
				t.Fatalf("until %v, want the deadline %v", g.Until, deadline)
			}
		})
	}
}

func TestCutoffs(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	open := fence.RunnerGate{Admit: fence.AdmitAll, Until: at(10)}
	closed := fence.RunnerGate{Admit: fence.AdmitNew}
	settling := fence.RunnerGate{Admit: fence.AdmitNew, Until: at(30)}

	var c fence.Cutoffs
	if c = c.Next(closed, at(1), time.Time{}); !c.Cutoff.Equal(at(1)) {
		t.Fatalf("first closed record: cutoff %v, want now", c.Cutoff)
	}
	if c = c.Next(open, at(2), time.Time{}); !c.Cutoff.Equal(at(10)) || c.Settling {
		t.Fatalf("open: %+v, want cutoff at the deadline", c)
	}
	// Fenced before the deadline: uploads stopped now.
	if c2 := c.Next(closed, at(5), time.Time{}); !c2.Cutoff.Equal(at(5)) {
		t.Fatalf("closed early: cutoff %v, want now", c2.Cutoff)
	}
	// Fenced after it (a frozen sidecar): uploads stopped at the deadline.
	c = c.Next(closed, at(12), time.Time{})
	if !c.Cutoff.Equal(at(10)) {
		t.Fatalf("closed late: cutoff %v, want the deadline", c.Cutoff)
	}
	// A restored entry born on a peer whose clock is ahead raises it.
	if c2 := c.Next(closed, at(12), at(40)); !c2.Cutoff.Equal(at(40)) {
		t.Fatalf("floor: cutoff %v, want the latest restored birth", c2.Cutoff)
	}
	c = c.Death()
	if !c.Since.Equal(at(10)) {
		t.Fatalf("death: since %v, want the cutoff", c.Since)
	}
	c = c.Next(settling, at(13), time.Time{})
	if !c.Settling || !c.Since.Equal(at(10)) || !c.Cutoff.Equal(at(30)) {
		t.Fatalf("settling: %+v", c)
	}
	// A renewal while settling keeps since.
	if c = c.Next(fence.RunnerGate{Admit: fence.AdmitNew, Until: at(33)}, at(14), time.Time{}); !c.Since.Equal(at(10)) {
		t.Fatalf("settling renewal moved since to %v", c.Since)
	}
	// So does a fence before the node has settled (fencesim seed 19495:
	// back under a new epoch, the settling rule admitted every entry).
	if c = c.Next(closed, at(14), time.Time{}); !c.Settling || !c.Since.Equal(at(10)) {
		t.Fatalf("fenced while settling: %+v, want since kept", c)
	}
	if c = c.Next(settling, at(14), time.Time{}); !c.Settling || !c.Since.Equal(at(10)) {
		t.Fatalf("settling again after the fence: %+v", c)
	}
	if c = c.Next(open, at(15), time.Time{}); c.Settling || !c.Since.IsZero() {
		t.Fatalf("open after settling: %+v", c)
	}
}

// TestGateOpensOnlyWhenPublished: the node uploads nothing before a gate
// that lets it is durable, and nothing once the published one ran out.
func TestGateOpensOnlyWhenPublished(t *testing.T) {
	c := newGatedCluster(t, "a")
	a := c.nodes["a"]
	last, ok := c.gates["a"].Last()
	if !ok || !last.Open() {
		t.Fatalf("live node's gate: %+v (published %v), want open", last, ok)
	}
	if all := c.gates["a"].All(); all[0].Reason != fence.GateStarting || all[0].Open() {
		t.Fatalf("first gate %+v, want closed while starting", all[0])
	}
	if !a.n.Gate().Writable {
		t.Fatal("live node with a published gate may not upload")
	}
	// Renewals go on, but no record can be written: uploads stop when
	// the last published one runs out, and the node fences then rather
	// than look live; it stays fenced while it cannot write the record.
	_, epoch := a.n.State()
	c.gates["a"].Fail(errors.New("disk full"))
	c.runFor(ttl)
	if a.n.Gate().Writable {
		t.Fatal("node uploads past the last published gate")
	}
	if _, failed := a.n.RunnerGate(); !failed {
		t.Fatal("RunnerGate does not report the failure")
	}
	if st, e := a.n.State(); st != fence.StateFenced || e != epoch {
		t.Fatalf("node that cannot publish its gate is %s at epoch %d (was %d), want fenced at the same epoch", st, e, epoch)
	}
	c.gates["a"].Fail(nil)
	c.runFor(ttl)
	if st, _ := a.n.State(); st != fence.StateLive || !a.n.Gate().Writable {
		t.Fatalf("node is %s (writable %v) once a gate can be published again", st, a.n.Gate().Writable)
	}
}

// TestGateKeepsEntriesInPlaceThroughAnOutage: with the runner gate, a
// store outage for everyone closes every gate and moves nothing; entries
// born meanwhile stay runnable; when the store is back, nobody was
// declared dead and every gate opens without settling anything.
func TestGateKeepsEntriesInPlaceThroughAnOutage(t *testing.T) {
	c := newGatedCluster(t, "a", "b")
	c.runFor(time.Second)
	old := c.enqueueNew("a", 0, 20)
	c.runFor(time.Second)
	for _, id := range c.order {
		c.nodes[id].st.down.Store(true)
	}
	c.runFor(ttl)
	a := c.nodes["a"]
	if st, _ := a.n.State(); st != fence.StateFenced {
		t.Fatalf("a is %s during the outage, want fenced", st)
	}
	if v, h := c.count("a"); v != 20 || h != 0 {
		t.Fatalf("a moved entries at the fence: %d visible, %d held", v, h)
	}
	g, _ := c.gates["a"].Last()
	if g.Open() || g.Reason != fence.GateFenced {
		t.Fatalf("a's gate during the outage: %+v", g)
	}
	for _, e := range old {
		if c.gates["a"].Admits(e, c.clock.Now()) {
			t.Fatalf("closed gate admits %s, born before the fence", e)
		}
	}
	c.clock.Advance(100 * time.Millisecond)
	fresh := c.enqueueNew("a", 100, 105)
	for _, e := range fresh {
		if !c.gates["a"].Admits(e, c.clock.Now()) {
			t.Fatalf("closed gate refuses %s, born after the fence", e)
		}
	}
	c.checkRunnable("a", "b")
	for _, id := range c.order {
		c.nodes[id].st.down.Store(false)
	}
	c.runFor(2 * time.Second)
	if st, _ := a.n.State(); st != fence.StateLive {
		t.Fatalf("a is %s after the outage", st)
	}
	g, _ = c.gates["a"].Last()
	if !g.Open() {
		t.Fatalf("a's gate after the outage: %+v, want open", g)
	}
	if v, h := c.count("a"); v != 25 || h != 0 {
		t.Fatalf("after the outage a has %d visible, %d held, want 25 visible", v, h)
	}
	c.checkRunnable("a", "b")
}

// TestGateBeyondTheModel: node a's sidecar is frozen past TTL + grace
// while its Mailman runs. Its gate closes by itself at the deadline, so
// its runners start none of the entries b takes over; when the sidecar
// wakes up, it settles them against the claims before the gate opens
// again: b's are held and dropped, one in flight here is denied, and
// when Mailman's recovery brings it back as a .pck it is dropped.
func TestGateBeyondTheModel(t *testing.T) {
	c := newGatedCluster(t, "a", "b")
	c.runFor(time.Second)
	es := c.enqueueNew("a", 0, 30)
	c.runFor(time.Second)
	a := c.nodes["a"]
	inFlight := es[3]
	if !a.local.Dequeue(inFlight) {
		t.Fatal("dequeue")
	}
	a.alive = false // SIGSTOP: no renewals, no fence; Mailman goes on
	for elapsed := time.Duration(0); elapsed < 3*(ttl+grace); elapsed += 200 * time.Millisecond {
		c.step(200 * time.Millisecond)
		c.checkRunnable("a", "b")
	}
	// The one in flight on a is restored too: it runs twice, as an
	// entry in flight on a node that died does.
	if v, _ := c.count("b"); v != 30 {
		t.Fatalf("b restored %d entries, want 30", v)
	}
	if n := len(c.runnable("a")); n != 0 {
		t.Fatalf("a's runners may start %d entries b took over", n)
	}
	a.alive = true // SIGCONT
	for i := 0; i < 20; i++ {
		c.step(200 * time.Millisecond)
		c.checkRunnable("a", "b")
	}
	if st, _ := a.n.State(); st != fence.StateLive {
		t.Fatalf("a is %s after waking up", st)
	}
	g, _ := c.gates["a"].Last()
	if !g.Open() || len(g.Deny) != 1 || g.Deny[0] != inFlight {
		t.Fatalf("a's gate after settling: %+v, want open with %s denied", g, inFlight)
	}
	if cnt := a.local.Counts(); cnt.Pck != 0 || cnt.Held != 0 || cnt.Bak != 1 {
		t.Fatalf("a holds %+v, want only the .bak in flight", cnt)
	}
	// Mailman's runner restarts: its recovery brings the .bak back.
	a.local.Recover()
	c.checkRunnable("a", "b")
	c.runFor(2 * time.Second)
	if cnt := a.local.Counts(); cnt.Pck+cnt.Bak+cnt.Held != 0 {
		t.Fatalf("a keeps %+v of an entry b owns", cnt)
	}
	if g, _ := c.gates["a"].Last(); len(g.Deny) != 0 {
		t.Fatalf("deny list %v after the entry went", g.Deny)
	}
}

// TestGateRestartKeepsLease: a graceful stop closes the gate and moves
// nothing; a restart that finds its lease still its own opens the gate
// at once, holding and settling nothing.
func TestGateRestartKeepsLease(t *testing.T) {
	c := newGatedCluster(t, "a", "b")
	c.runFor(time.Second)
	c.enqueueNew("a", 0, 50)
	c.runFor(time.Second)
	a := c.nodes["a"]
	a.n.Stop(context.Background())
	if v, h := c.count("a"); v != 50 || h != 0 {
		t.Fatalf("stop moved entries: %d visible, %d held", v, h)
	}
	g, _ := c.gates["a"].Last()
	if g.Open() || g.Reason != fence.GateStopped {
		t.Fatalf("gate after stop: %+v", g)
	}
	a.alive = false
	c.runFor(ttl / 3)
	a = c.start("a", a.local, false)
	g, _ = c.gates["a"].Last()
	if !g.Open() {
		t.Fatalf("gate after a restart on a lease still held: %+v", g)
	}
	if v, h := c.count("a"); v != 50 || h != 0 {
		t.Fatalf("restart moved entries: %d visible, %d held", v, h)
	}
	c.runFor(ttl + grace)
	c.checkRunnable("a", "b")
	if v, _ := c.count("b"); v != 0 {
		t.Fatalf("b took over %d entries of a node that restarted in time", v)
	}
}

// TestGateDrainClosesFirst: a drain closes the gate for every entry
// before anything is handed off.
func TestGateDrainClosesFirst(t *testing.T) {
	c := newGatedCluster(t, "a", "b")
	c.runFor(time.Second)
	c.enqueueNew("a", 0, 10)
	c.runFor(time.Second)
	a := c.nodes["a"]
	a.n.StartDrain(context.Background())
	g, _ := c.gates["a"].Last()
	if g.Admit != fence.AdmitNone || g.Reason != fence.GateDraining {
		t.Fatalf("gate when the drain starts: %+v", g)
	}
	if n := len(c.runnable("a")); n != 0 {
		t.Fatalf("a draining node's runners may start %d entries", n)
	}
	c.runFor(2 * time.Second)
	if v, _ := c.count("b"); v != 10 {
		t.Fatalf("b got %d entries by handoff, want 10", v)
	}
	c.checkRunnable("a", "b")
}
