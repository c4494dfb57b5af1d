package fence_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// round advances the clock by TTL/3 and runs one renewal, settle and scan
// on each node of order, in that order; between runs after the first
// node's turn.
func (c *cluster) round(order []string, between func()) {
	c.t.Helper()
	ctx := context.Background()
	c.clock.Advance(ttl / 3)
	for i, id := range order {
		if i == 1 && between != nil {
			between()
		}
		c.stepNode(ctx, c.nodes[id])
	}
}

// wantAllVisible checks that a and b together have n entries visible and
// none held (G2, that none is visible twice, is checked at every step).
func (c *cluster) wantAllVisible(n int) {
	c.t.Helper()
	va, ha := c.count("a")
	vb, hb := c.count("b")
	if va+vb != n || ha+hb != 0 {
		c.t.Fatalf("a %d visible %d held, b %d visible %d held; want %d visible in all, none held", va, ha, vb, hb, n)
	}
}

// backlogOnB starts nodes a and b, b with 10 entries mirrored.
func backlogOnB(t *testing.T) *cluster {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.enqueue("b", 0, 10)
	c.runFor(time.Second)
	return c
}

// wantUntouched checks that b came back live, kept its entries and was
// never declared dead.
func (c *cluster) wantUntouched(b string, entries int) {
	c.t.Helper()
	if st, _ := c.nodes[b].n.State(); st != fence.StateLive {
		c.t.Fatalf("%s is %s, want live", b, st)
	}
	if v, h := c.count(b); v != entries || h != 0 {
		c.t.Errorf("%s: %d visible %d held, want %d and 0", b, v, h, entries)
	}
	if n := c.storeKeys("claims/"); n != 0 {
		c.t.Errorf("%d claims written: %s was taken over", n, b)
	}
	for _, p := range c.nodes["a"].n.Peers() {
		if p.Node == b && p.Lease.DeadBy != "" {
			c.t.Errorf("%s declared dead by %s", b, p.Lease.DeadBy)
		}
	}
}

// TestUnwritableLeaseKeyIsNoEvidence: after an incident a store can keep
// one node's lease key unwritable for a long time (a MinIO cluster back
// from a lost quorum keeps keys locked that had writes in flight). That
// node fences and cannot renew; its peer cannot declare it dead either.
// A declaration the store refuses restarts the peer's silence, so that
// when the key takes writes again, the node (retrying every TTL/3) renews
// before its peer declares it dead, even when the peer's next try comes
// first: the node's finished entries whose copies it could not delete
// are not run a second time.
func TestUnwritableLeaseKeyIsNoEvidence(t *testing.T) {
	c := backlogOnB(t)
	var locked atomic.Bool
	bKey := c.layout.LeaseKey("b")
	refusal := &store.OpError{Op: "put", Kind: store.KindTransient, Code: "SlowDownWrite", Err: errors.New("resource requested is unwritable")}
	for _, id := range c.order {
		c.nodes[id].st.refuse = func(op, key string) error {
			if strings.HasPrefix(op, "put") && key == bKey && locked.Load() {
				return refusal
			}
			return nil
		}
	}
	locked.Store(true)
	for range 30 { // 10 s: well past TTL + grace
		c.round([]string{"b", "a"}, nil)
	}
	if st, _ := c.nodes["b"].n.State(); st != fence.StateFenced {
		t.Fatalf("b is %s with its lease key unwritable, want fenced", st)
	}
	// The key takes writes again just before a's turn.
	c.round([]string{"b", "a"}, func() { locked.Store(false) })
	for range 10 {
		c.round([]string{"b", "a"}, nil)
	}
	c.wantUntouched("b", 10)
}

// TestSilenceBeforeOwnFenceIsNoEvidence: an incident that cuts a peer off
// a little before it cuts this node off (both fence) must not let this
// node declare the peer dead right after both are back, on silence that
// the peer accrued while the incident was already under way.
func TestSilenceBeforeOwnFenceIsNoEvidence(t *testing.T) {
	c := backlogOnB(t)
	c.nodes["b"].st.down.Store(true)
	for range 2 { // b silent for 2 s, half of TTL + grace
		c.round([]string{"a", "b"}, nil)
	}
	c.nodes["a"].st.down.Store(true)
	for range 15 {
		c.round([]string{"a", "b"}, nil)
	}
	for _, id := range c.order {
		if st, _ := c.nodes[id].n.State(); st != fence.StateFenced {
			t.Fatalf("%s is %s during the outage, want fenced", id, st)
		}
	}
	// a is back first; b two rounds later, within TTL + grace of a.
	c.nodes["a"].st.down.Store(false)
	for range 3 {
		c.round([]string{"a", "b"}, nil)
	}
	c.nodes["b"].st.down.Store(false)
	for range 10 {
		c.round([]string{"a", "b"}, nil)
	}
	c.wantUntouched("b", 10)
}

// outageForAll cuts every node off the store for long enough that all
// fence, and brings the store back.
func (c *cluster) outageForAll() {
	c.t.Helper()
	for _, id := range c.order {
		c.nodes[id].st.down.Store(true)
	}
	for range 15 {
		c.round(c.order, nil)
	}
	for _, id := range c.order {
		if st, _ := c.nodes[id].n.State(); st != fence.StateFenced {
			c.t.Fatalf("%s is %s during the outage, want fenced", id, st)
		}
		c.nodes[id].st.down.Store(false)
	}
}

// TestLeaseMissingForAMomentIsNotGone: a MinIO cluster back from a lost
// quorum was seen to answer "not found" for a node's lease for a second
// or two, and to let the node's create-if-absent through over it. The
// node must not take that for a lease deleted by hand (which gives its
// old epochs to its peers): its finished entries whose copies it could
// not delete would run again.
func TestLeaseMissingForAMomentIsNotGone(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rounds int
		writes bool // conditional writes find the lease
	}{
		{"reads and writes, 3 s", 3, false},
		{"reads only, 8 s", 8, true},
	} {
		t.Run(tc.name, func(t *testing.T) { leaseMissingFor(t, tc.rounds, tc.writes) })
	}
}

// leaseMissingFor makes the store say b's lease is not there for rounds
// rounds of TTL/3 after an outage, to reads, and to conditional writes
// too unless writes.
func leaseMissingFor(t *testing.T, rounds int, writes bool) {
	c := backlogOnB(t)
	var amnesia atomic.Bool
	bKey := c.layout.LeaseKey("b")
	for _, id := range c.order {
		c.nodes[id].st.forgets = func(key string) bool { return key == bKey && amnesia.Load() }
		c.nodes[id].st.createsOver = c.nodes[id].st.forgets
		c.nodes[id].st.refuse = func(op, key string) error {
			if op == "put-if-match" && key == bKey && amnesia.Load() && !writes {
				return errNoSuchKey(key)
			}
			return nil
		}
	}
	c.outageForAll()
	amnesia.Store(true)
	for range rounds {
		c.round([]string{"b", "a"}, nil)
	}
	amnesia.Store(false)
	for range 10 {
		c.round([]string{"b", "a"}, nil)
	}
	c.wantUntouched("b", 10)
}

// TestLeaseDeletedWhileFenced: a lease that stays missing for TTL + grace
// is gone. The node comes back under a new epoch with its old epochs
// marked taken over, and every entry ends up with exactly one node.
func TestLeaseDeletedWhileFenced(t *testing.T) {
	c := backlogOnB(t)
	c.outageForAll()
	if err := c.shared.Delete(context.Background(), c.layout.LeaseKey("b")); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		c.round([]string{"b", "a"}, nil)
	}
	if st, _ := c.nodes["b"].n.State(); st != fence.StateFenced {
		t.Fatalf("b is %s 2 s after its lease went missing, want still fenced", st)
	}
	for range 20 {
		c.round([]string{"b", "a"}, nil)
	}
	if st, _ := c.nodes["b"].n.State(); st != fence.StateLive {
		t.Fatalf("b is %s, want live under a new lease", st)
	}
	c.wantAllVisible(10)
	if n := c.storeKeys("claims/"); n == 0 {
		t.Errorf("no claims: the old epoch was not settled through the store")
	}
}

// TestLeaseServedButNotWritable: a MinIO cluster back from a lost quorum
// served a node's lease while answering every conditional write to it
// with "not found", for minutes. The node comes back once that has lasted
// TTL + grace, by creating the lease afresh with its old epochs marked
// taken over, and every entry ends up with exactly one node.
func TestLeaseServedButNotWritable(t *testing.T) {
	c := backlogOnB(t)
	bKey := c.layout.LeaseKey("b")
	var broken atomic.Bool
	for _, id := range c.order {
		c.nodes[id].st.refuse = func(op, key string) error {
			if op == "put-if-match" && key == bKey && broken.Load() {
				return errNoSuchKey(key)
			}
			return nil
		}
		// A create-if-absent goes through and, a whole new version,
		// ends the disagreement.
		c.nodes[id].st.createsOver = func(key string) bool { return key == bKey && broken.CompareAndSwap(true, false) }
	}
	c.outageForAll()
	broken.Store(true)
	for range 3 {
		c.round([]string{"b", "a"}, nil)
	}
	if st, _ := c.nodes["b"].n.State(); st != fence.StateFenced {
		t.Fatalf("b is %s 3 s into its lease refusing writes, want still fenced", st)
	}
	for range 20 {
		c.round([]string{"b", "a"}, nil)
	}
	if st, epoch := c.nodes["b"].n.State(); st != fence.StateLive || epoch < 3 {
		t.Fatalf("b is %s at epoch %d, want live under a new lease past its attempts", st, epoch)
	}
	c.wantAllVisible(10)
}

// errNoSuchKey is MinIO's answer to a conditional write on a key it says
// is not there, as the stores classify it.
func errNoSuchKey(key string) error {
	return &store.OpError{Op: "put", Key: key, Kind: store.KindPrecondition, Code: store.CodeMissing, Err: errors.New("the specified key does not exist")}
}
