package fence_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/fence/fencetest"
	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/memstore"
)

const (
	ttl    = 3 * time.Second
	grace  = time.Second
	margin = 600 * time.Millisecond
)

// flaky is a store that can be cut off for one node.
type flaky struct {
	store.Store
	down atomic.Bool
	// onPut, onGet and onList, when set (before the node runs), are
	// called before each Put, Get and List.
	onPut, onGet, onList func(key string)
	// deletes and batches count Delete and DeleteMany calls; failBatches
	// is how many DeleteMany calls still fail.
	deletes, batches, failBatches atomic.Int64
	// listDown fails List alone (the store still takes writes).
	listDown atomic.Bool
	// refuse, when set (before the node runs), can refuse a Get or Put
	// of key with the error it returns: op is "get", "put", "put-if-match"
	// or "put-if-absent".
	refuse func(op, key string) error
	// forgets and createsOver, when set (before the node runs), make the
	// store lose track of the keys they return true for, as a MinIO
	// cluster back from a lost quorum was seen to: reads say "not found"
	// (forgets), and a create-if-absent goes through over the object
	// (createsOver).
	forgets, createsOver func(key string) bool
	// aroundPut, when set (before the node runs), is called instead of
	// the Put itself with a function that does it: it can act before the
	// write, after it, or replace its answer.
	aroundPut func(key string, cond store.Condition, put func() (store.Info, error)) (store.Info, error)
}

var errDown = &store.OpError{Op: "any", Kind: store.KindTransient, Code: "unreachable", Err: errors.New("store unreachable")}

func (f *flaky) Get(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	if f.down.Load() {
		return nil, store.Info{}, errDown
	}
	if f.onGet != nil {
		f.onGet(key)
	}
	if f.refuse != nil {
		if err := f.refuse("get", key); err != nil {
			return nil, store.Info{}, err
		}
	}
	if f.forgets != nil && f.forgets(key) {
		return nil, store.Info{}, &store.OpError{Op: "get", Key: key, Kind: store.KindNotFound, Code: "NoSuchKey", Err: errors.New("the specified key does not exist")}
	}
	return f.Store.Get(ctx, key)
}

func (f *flaky) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	if f.down.Load() {
		return store.Info{}, errDown
	}
	if f.onPut != nil {
		f.onPut(key)
	}
	if f.refuse != nil {
		op := "put"
		switch {
		case cond.IfMatch != "":
			op = "put-if-match"
		case cond.IfAbsent:
			op = "put-if-absent"
		}
		if err := f.refuse(op, key); err != nil {
			return store.Info{}, err
		}
	}
	if f.createsOver != nil && f.createsOver(key) && cond.IfAbsent {
		cond = store.Condition{}
	}
	if f.aroundPut != nil {
		return f.aroundPut(key, cond, func() (store.Info, error) { return f.Store.Put(ctx, key, body, size, cond) })
	}
	return f.Store.Put(ctx, key, body, size, cond)
}

func (f *flaky) Stat(ctx context.Context, key string) (store.Info, error) {
	if f.down.Load() {
		return store.Info{}, errDown
	}
	return f.Store.Stat(ctx, key)
}

func (f *flaky) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	if f.down.Load() || f.listDown.Load() {
		return errDown
	}
	if f.onList != nil {
		f.onList(prefix)
	}
	return f.Store.List(ctx, prefix, fn)
}

func (f *flaky) Delete(ctx context.Context, key string) error {
	if f.down.Load() {
		return errDown
	}
	f.deletes.Add(1)
	return f.Store.Delete(ctx, key)
}

func (f *flaky) DeleteMany(ctx context.Context, keys []string) error {
	if f.down.Load() {
		return errDown
	}
	f.batches.Add(1)
	if f.failBatches.Add(-1) >= 0 {
		return &store.OpError{Op: "delete many", Kind: store.KindPermanent, Code: "AccessDenied", Err: errors.New("refused")}
	}
	return f.Store.DeleteMany(ctx, keys)
}

type tnode struct {
	id    string
	n     *fence.Node
	local *fencetest.Local
	st    *flaky
	alive bool
}

type cluster struct {
	t      *testing.T
	clock  *fencetest.Clock
	shared store.Store
	layout fence.Layout
	nodes  map[string]*tnode
	order  []string
	// records are the nodes' epoch records: they live on the node's disk
	// and go with it.
	records map[string]*memRecord
	// runnerGate starts nodes with fence.Config.RunnerGate; gates are
	// their gate records, which live on the node's disk too.
	runnerGate bool
	gates      map[string]*fencetest.Gate
}

func newCluster(t *testing.T, ids ...string) *cluster {
	c := &cluster{t: t, clock: fencetest.NewClock(), shared: memstore.New(), layout: fence.NewLayout("mm"), nodes: map[string]*tnode{}, records: map[string]*memRecord{}, gates: map[string]*fencetest.Gate{}}
	for _, id := range ids {
		c.start(id, nil, false)
		c.order = append(c.order, id)
	}
	return c
}

// start (re)starts node id's coordinator; local is its disk (nil: new).
func (c *cluster) start(id string, local *fencetest.Local, fresh bool) *tnode {
	c.t.Helper()
	st := &flaky{Store: c.shared}
	if old := c.nodes[id]; old != nil {
		st = old.st
	}
	tn := &tnode{id: id, st: st, alive: true}
	gate := func() fence.Gate { return tn.n.Gate() }
	if local == nil {
		local = fencetest.NewLocal(id, c.layout, st, gate)
	} else {
		local.SetGate(gate)
	}
	tn.local = local
	if c.records[id] == nil || fresh {
		c.records[id] = &memRecord{}
		c.gates[id] = fencetest.NewGate(c.clock.Now)
	}
	local.SetHoldSince(c.gates[id].Since)
	n, err := fence.New(fence.Config{Node: id, Layout: c.layout, TTL: ttl, Grace: grace, Margin: margin, MaxTransfers: 3, Epochs: c.records[id],
		Gate: c.gates[id], RunnerGate: c.runnerGate},
		st, local, c.clock, rand.New(rand.NewPCG(uint64(len(c.nodes)), 7)), nil, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	tn.n = n
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.Start(ctx, fresh); err != nil {
		c.t.Fatalf("start %s: %v", id, err)
	}
	if err := n.SettleStep(ctx); err != nil {
		c.t.Fatalf("settle %s: %v", id, err)
	}
	c.nodes[id] = tn
	return tn
}

// step advances the clock by d and runs every live node's loops once,
// checking G2 after each node's step.
func (c *cluster) step(d time.Duration) {
	c.t.Helper()
	c.clock.Advance(d)
	ctx := context.Background()
	for _, id := range c.order {
		tn := c.nodes[id]
		if !tn.alive {
			continue
		}
		c.stepNode(ctx, tn)
	}
}

// stepNode runs one pass of tn's loops, then checks G2.
func (c *cluster) stepNode(ctx context.Context, tn *tnode) {
	c.t.Helper()
	tn.n.CheckFence(ctx)
	_ = tn.n.Renew(ctx)
	_ = tn.n.SettleStep(ctx)
	_ = tn.local.Sync(ctx)
	tn.n.ScanStep(ctx)
	_ = tn.local.Sync(ctx)
	c.checkOneProcessor()
}

func (c *cluster) checkOneProcessor() {
	c.t.Helper()
	seen := map[fence.Entry]string{}
	for _, id := range c.order {
		if !c.nodes[id].alive {
			continue // a killed node's runners are dead too
		}
		for _, e := range c.nodes[id].local.Visible() {
			if other, dup := seen[e]; dup {
				c.t.Fatalf("G2 violated: %s visible on %s and %s", e, other, id)
			}
			seen[e] = id
		}
	}
}

func (c *cluster) runFor(total time.Duration) {
	for elapsed := time.Duration(0); elapsed < total; elapsed += 200 * time.Millisecond {
		c.step(200 * time.Millisecond)
	}
}

func entry(i int) fence.Entry {
	return fence.Entry{Queue: "in", Base: fmt.Sprintf("1764330000.%06d+%040x", i, i), Kind: fence.KindPck}
}

func (c *cluster) enqueue(id string, from, to int) {
	for i := from; i < to; i++ {
		c.nodes[id].local.Enqueue(entry(i), []byte(fmt.Sprintf("message %d", i)))
	}
	if err := c.nodes[id].local.Sync(context.Background()); err != nil {
		c.t.Fatal(err)
	}
}

// owners maps every entry visible or held anywhere to where it is.
func (c *cluster) count(id string) (visible, held int) {
	tn := c.nodes[id]
	return len(tn.local.Visible()), len(tn.local.Held())
}

func (c *cluster) storeKeys(prefix string) int {
	n := 0
	_ = c.shared.List(context.Background(), c.layout.Prefix()+prefix, func(store.Info) error { n++; return nil })
	return n
}

func TestTakeoverOfKilledNode(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, 60)
	c.runFor(time.Second)
	c.nodes["a"].local.Dequeue(entry(5)) // in flight at the kill
	c.nodes["a"].alive = false           // SIGKILL: no fence, no renewals
	c.runFor(ttl + grace + 3*time.Second)
	vb, _ := c.count("b")
	vc, _ := c.count("c")
	if vb+vc != 60 {
		t.Fatalf("survivors restored %d+%d entries, want 60", vb, vc)
	}
	if vb < 15 || vc < 15 {
		t.Errorf("takeover not shared: b=%d c=%d", vb, vc)
	}
	if n := c.storeKeys("q/a/"); n != 0 {
		t.Errorf("dead node's namespace still holds %d copies", n)
	}
	// a comes back on its old disk: it must settle against the claims and
	// drop everything, so nothing runs twice.
	a := c.start("a", c.nodes["a"].local, false)
	c.runFor(2 * time.Second)
	if cnt := c.nodes["a"].local.Counts(); cnt.Pck+cnt.Bak+cnt.Held != 0 {
		t.Fatalf("restarted node kept entries a survivor took over: %+v", cnt)
	}
	if st, epoch := a.n.State(); st != fence.StateLive || epoch < 2 {
		t.Fatalf("restarted node state %s epoch %d", st, epoch)
	}
}

// killedWithBacklog starts nodes a and b, queues entries on a and kills
// a once they are mirrored; b is the survivor.
func killedWithBacklog(t *testing.T, entries int) (*cluster, *tnode) {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, entries)
	c.runFor(time.Second)
	c.nodes["a"].alive = false
	return c, c.nodes["b"]
}

// TestTakeoverRoundsFollowAtOnce: a takeover round whose listing grows
// older than a TTL stops with entries left; the node says so, and the
// next scan step follows at once (NextScan 0) and carries on until every
// entry is restored.
func TestTakeoverRoundsFollowAtOnce(t *testing.T) {
	c, b := killedWithBacklog(t, 120)
	// Every claim b writes takes a twentieth of a TTL, so a round
	// restores about 20 entries (a few more with concurrent claims)
	// before its listing is too old; b renews its lease meanwhile, as its
	// renewal loop would.
	ctx := context.Background()
	claims := c.layout.ClaimPrefix()
	b.st.onPut = func(key string) {
		if strings.HasPrefix(key, claims) {
			c.clock.Advance(ttl / 20)
			_ = b.n.Renew(ctx)
		}
	}
	cut := 0
	for i := 0; i < 200; i++ {
		if !b.n.TakeoverPending() {
			c.clock.Advance(200 * time.Millisecond)
		}
		b.n.CheckFence(ctx)
		_ = b.n.Renew(ctx)
		_ = b.n.SettleStep(ctx)
		b.n.ScanStep(ctx)
		_ = b.local.Sync(ctx)
		if b.n.TakeoverPending() {
			cut++
			if d := b.n.NextScan(); d != 0 {
				t.Fatalf("takeover pending but NextScan is %v, want 0", d)
			}
		}
		if v, _ := c.count("b"); v == 120 && !b.n.TakeoverPending() {
			break
		}
	}
	if v, _ := c.count("b"); v != 120 {
		st, ep := b.n.State()
		t.Fatalf("b restored %d entries, want 120 (b %s epoch %d, peers %+v)", v, st, ep, b.n.Peers())
	}
	if cut < 2 {
		t.Errorf("%d takeover rounds were cut short, want 2 or more: the test did not test", cut)
	}
	if st, _ := b.n.State(); st != fence.StateLive {
		t.Errorf("b is %s after the takeover", st)
	}
	if d := b.n.NextScan(); d <= 0 {
		t.Errorf("NextScan after the takeover = %v, want the scan interval", d)
	}
}

// TestDeadPeerDeclaredOnTime: a node that schedules its scans by
// NextScan declares a silent peer dead the moment its silence reaches
// TTL + grace, not up to a scan interval later.
func TestDeadPeerDeclaredOnTime(t *testing.T) {
	c, b := killedWithBacklog(t, 0)
	ctx := context.Background()
	deadAfter := ttl + grace
	for i := 0; i < 100; i++ {
		d := b.n.NextScan()
		if d <= 0 || d > ttl/3 {
			t.Fatalf("NextScan = %v, want within (0, TTL/3]", d)
		}
		c.clock.Advance(d)
		b.n.CheckFence(ctx)
		_ = b.n.Renew(ctx)
		b.n.ScanStep(ctx)
		for _, p := range b.n.Peers() {
			if p.Node != "a" || p.Lease.State != fence.StateDead {
				continue
			}
			if p.Silence < deadAfter || p.Silence > deadAfter+time.Millisecond {
				t.Fatalf("a declared dead after %v of silence, want %v", p.Silence, deadAfter)
			}
			return
		}
	}
	t.Fatal("a was never declared dead")
}

// TestFailingScansAreNotRepeatedInALoop: once a silent peer's deadline
// has passed without a scan (the listings fail), the node goes back to
// the normal scan interval instead of scanning again at once.
func TestFailingScansAreNotRepeatedInALoop(t *testing.T) {
	c, b := killedWithBacklog(t, 0)
	ctx := context.Background()
	// Let a's silence start accruing, then fail b's listings.
	for i := 0; i < 3; i++ {
		c.clock.Advance(b.n.NextScan())
		_ = b.n.Renew(ctx)
		b.n.ScanStep(ctx)
	}
	b.st.listDown.Store(true)
	short := 0
	for i := 0; i < 40; i++ {
		d := b.n.NextScan()
		if d < ttl/30 {
			short++
		}
		c.clock.Advance(max(d, time.Millisecond))
		b.n.CheckFence(ctx)
		_ = b.n.Renew(ctx)
		b.n.ScanStep(ctx)
	}
	if short > 1 {
		t.Errorf("%d of 40 waits between failing scans were under TTL/30: scanning in a loop", short)
	}
}

// TestTakeoverDeletesOldCopiesInBatches: the old copies of restored
// entries go in a few DeleteMany calls, not one DELETE each; a batch the
// store refuses leaves copies that the next round deletes, and nothing
// is restored twice.
func TestTakeoverDeletesOldCopiesInBatches(t *testing.T) {
	for _, tc := range []struct {
		name        string
		failBatches int64
	}{
		{"batches", 0},
		{"refused batch", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, b := killedWithBacklog(t, 120)
			b.st.deletes.Store(0)
			b.st.batches.Store(0)
			b.st.failBatches.Store(tc.failBatches)
			c.runFor(ttl + grace + 3*time.Second)
			if v, _ := c.count("b"); v != 120 {
				t.Fatalf("b restored %d entries, want 120", v)
			}
			if n := c.storeKeys("q/a/"); n != 0 {
				t.Fatalf("dead node's namespace still holds %d copies", n)
			}
			restored := 0
			for _, e := range b.local.Visible() {
				if n := b.local.Stages(e); n != 1 {
					t.Errorf("%s staged %d times, want once", e, n)
				}
				restored++
			}
			dels, batches := b.st.deletes.Load(), b.st.batches.Load()
			t.Logf("%d entries: %d DeleteMany calls, %d single deletes", restored, batches, dels)
			if tc.failBatches == 0 && (dels != 0 || batches > 10) {
				t.Errorf("%d single deletes and %d batches for 120 old copies, want none and a few", dels, batches)
			}
		})
	}
}

func TestPartitionedNodeFencesBeforeTakeover(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, 40)
	c.runFor(time.Second)
	c.nodes["a"].local.Dequeue(entry(0)) // in flight at the partition
	before := c.nodes["a"].n.Gate()
	c.nodes["a"].st.down.Store(true)
	c.runFor(ttl + grace + 3*time.Second) // G2 is checked at every step
	if st, _ := c.nodes["a"].n.State(); st != fence.StateFenced {
		t.Fatalf("partitioned node state %s, want fenced", st)
	}
	if !closed(before.Done) {
		t.Fatal("the fence left open the gate's Done of the epoch it ended: writes still on the wire go on")
	}
	if v, h := c.count("a"); v != 0 || h != 39 {
		t.Fatalf("partitioned node: %d visible %d held, want 0 and 39", v, h)
	}
	if v, _ := c.count("b"); v != 40 {
		t.Fatalf("survivor restored %d entries, want 40 (the in-flight one re-runs once)", v)
	}
	c.nodes["a"].local.Finish(entry(0))
	c.nodes["a"].st.down.Store(false)
	c.runFor(3 * time.Second)
	if v, h := c.count("a"); v != 0 || h != 0 {
		t.Fatalf("healed node kept %d visible, %d held", v, h)
	}
	if st, epoch := c.nodes["a"].n.State(); st != fence.StateLive || epoch != 2 {
		t.Fatalf("healed node state %s epoch %d, want live 2", st, epoch)
	}
	if g := c.nodes["a"].n.Gate(); closed(g.Done) || !g.Writable {
		t.Fatalf("healed node's gate: writable %v, done closed %v", g.Writable, closed(g.Done))
	}
	// New work on the healed node goes to its new epoch and stays there.
	c.enqueue("a", 100, 110)
	c.runFor(ttl)
	if v, _ := c.count("a"); v != 10 {
		t.Fatalf("healed node has %d new entries visible, want 10", v)
	}
}

func TestStoreOutageForEveryoneMovesNothing(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, 20)
	c.enqueue("b", 20, 40)
	c.runFor(time.Second)
	for _, id := range c.order {
		c.nodes[id].st.down.Store(true)
	}
	c.runFor(30 * time.Second)
	for _, id := range c.order {
		if st, _ := c.nodes[id].n.State(); st != fence.StateFenced {
			t.Fatalf("%s: state %s during outage, want fenced", id, st)
		}
	}
	// Mailman keeps working on entries born during the outage.
	c.nodes["a"].local.Enqueue(entry(99), []byte("born in outage"))
	if !c.nodes["a"].local.Dequeue(entry(99)) {
		t.Fatal("entry born during the outage is not visible")
	}
	c.nodes["a"].local.Finish(entry(99))
	for _, id := range c.order {
		c.nodes[id].st.down.Store(false)
	}
	c.runFor(3 * time.Second)
	for id, want := range map[string]int{"a": 20, "b": 20} {
		if v, h := c.count(id); v != want || h != 0 {
			t.Fatalf("%s after outage: %d visible %d held, want %d and 0", id, v, h, want)
		}
	}
	if n := c.storeKeys("claims/"); n != 0 {
		t.Errorf("an outage for everyone wrote %d claims", n)
	}
}

// TestSettleIsConcurrent: coming back from a fence, the node settles its
// held entries several at a time (their claim reads overlap), and every
// one of them is restored.
func TestSettleIsConcurrent(t *testing.T) {
	c := newCluster(t, "a")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, 40)
	c.runFor(time.Second)
	a := c.nodes["a"]
	a.st.down.Store(true)
	c.runFor(10 * time.Second)
	if _, h := c.count("a"); h != 40 {
		t.Fatalf("%d entries held after the fence, want 40", h)
	}
	var now, peak atomic.Int32
	claims := c.layout.ClaimPrefix()
	a.st.onGet = func(key string) {
		if !strings.HasPrefix(key, claims) {
			return
		}
		k := now.Add(1)
		for p := peak.Load(); k > p && !peak.CompareAndSwap(p, k); p = peak.Load() {
		}
		time.Sleep(2 * time.Millisecond) // let other settles start meanwhile
		now.Add(-1)
	}
	a.st.down.Store(false)
	c.runFor(3 * time.Second)
	if v, h := c.count("a"); v != 40 || h != 0 {
		t.Fatalf("after the outage: %d visible %d held, want 40 and 0", v, h)
	}
	if p := peak.Load(); p < 2 {
		t.Errorf("at most %d claim read at a time while settling 40 entries: settle is serial", p)
	}
}

func TestDrainHandsBacklogToPeers(t *testing.T) {
	c := newCluster(t, "a", "b", "c")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, 30)
	c.nodes["a"].local.Dequeue(entry(0))
	c.runFor(time.Second)
	c.nodes["a"].n.StartDrain(context.Background())
	c.runFor(2 * ttl)
	if st := c.nodes["a"].n.Drain(); st.Done {
		t.Fatal("drain done while an entry is in flight")
	}
	c.nodes["a"].local.Finish(entry(0))
	for i := 0; i < 100 && !c.nodes["a"].n.Drain().Done; i++ {
		c.step(200 * time.Millisecond)
	}
	if st := c.nodes["a"].n.Drain(); !st.Done {
		t.Fatalf("drain not done: %+v", st)
	}
	vb, _ := c.count("b")
	vc, _ := c.count("c")
	if vb+vc != 29 {
		t.Fatalf("peers got %d+%d entries, want 29", vb, vc)
	}
	if n := c.storeKeys("q/a/"); n != 0 {
		t.Errorf("drained node's namespace still holds %d copies", n)
	}
}

func TestFreshDiskRestoresOldEpoch(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, 25)
	c.runFor(time.Second)
	// a restarts at once on an empty disk: its old epoch is taken over by
	// the live set, itself included.
	c.start("a", nil, true)
	c.runFor(3 * time.Second)
	va, _ := c.count("a")
	vb, _ := c.count("b")
	if va+vb != 25 {
		t.Fatalf("restored %d+%d entries, want 25", va, vb)
	}
}

func TestTransferBoundPreservesPoison(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, 1)
	// The entry has moved three times already.
	claim := fence.Claim{Owner: "a", Epoch: 1, From: "x", FromEpoch: 1, Token: 3, Transfers: 3, Nonce: "n"}
	body := fmt.Sprintf(`{"owner":%q,"epoch":%d,"from":%q,"from_epoch":%d,"token":%d,"transfers":%d,"nonce":%q}`,
		claim.Owner, claim.Epoch, claim.From, claim.FromEpoch, claim.Token, claim.Transfers, claim.Nonce)
	if _, err := store.PutBytes(context.Background(), c.shared, c.layout.ClaimKey(entry(0)), []byte(body), store.Condition{}); err != nil {
		t.Fatal(err)
	}
	c.nodes["a"].alive = false
	c.runFor(ttl + grace + 3*time.Second)
	if v, _ := c.count("b"); v != 1 {
		t.Fatalf("survivor has %d entries, want the preserved one", v)
	}
	got := c.nodes["b"].local.Visible()[0]
	if got.Queue != "bad" || got.Kind != fence.KindPsv {
		t.Fatalf("poison entry restored as %s, want bad/*.psv", got)
	}
}

func closed(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}
