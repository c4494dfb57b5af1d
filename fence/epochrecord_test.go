package fence_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// memRecord is an epoch record kept in memory (fence.EpochRecord): the
// test cluster keeps one per node disk, across restarts.
type memRecord struct {
	mu    sync.Mutex
	epoch uint64
	saves int
	fail  error
}

func (r *memRecord) Last() (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.epoch, nil
}

func (r *memRecord) Save(epoch uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.epoch, r.saves = epoch, r.saves+1
	return nil
}

func (r *memRecord) last() uint64 {
	e, _ := r.Last()
	return e
}

// leaseOf reads id's lease from the store.
func (c *cluster) leaseOf(id string) fence.Lease {
	c.t.Helper()
	data, _, err := store.GetBytes(context.Background(), c.shared, c.layout.LeaseKey(id))
	if err != nil {
		c.t.Fatalf("read %s's lease: %v", id, err)
	}
	l, err := fence.DecodeLease(data)
	if err != nil {
		c.t.Fatal(err)
	}
	return l
}

// restartWaiting restarts id's coordinator on its old disk, advancing the
// clock while Start waits (it retries on the clock), and settles it.
func (c *cluster) restartWaiting(id string) *tnode {
	c.t.Helper()
	old := c.nodes[id]
	tn := &tnode{id: id, st: old.st, alive: true, local: old.local}
	old.local.SetGate(func() fence.Gate { return tn.n.Gate() })
	n, err := fence.New(fence.Config{Node: id, Layout: c.layout, TTL: ttl, Grace: grace, Margin: margin, MaxTransfers: 3, Epochs: c.records[id]},
		tn.st, tn.local, c.clock, rand.New(rand.NewPCG(99, 7)), nil, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	tn.n = n
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	started := make(chan error, 1)
	go func() { started <- n.Start(ctx, false) }()
	for waited := time.Duration(0); ; waited += 100 * time.Millisecond {
		select {
		case err := <-started:
			if err != nil {
				c.t.Fatalf("start %s: %v", id, err)
			}
			if err := n.SettleStep(ctx); err != nil {
				c.t.Fatalf("settle %s: %v", id, err)
			}
			c.nodes[id] = tn
			return tn
		case <-time.After(time.Millisecond):
			if waited > 10*(ttl+grace) {
				c.t.Fatalf("start %s still waiting after %v of clock", id, waited)
			}
			c.clock.Advance(100 * time.Millisecond)
		}
	}
}

// TestRestartNeverReusesAnEpoch: a node restarts on its old disk after
// the store lost its lease (an operator removed it, or an incident). It
// must not start again at epoch 1: its old copies, and claims naming
// them, live under the epochs it had. It waits until the lease has been
// missing for TTL + grace, comes back above every epoch it tried, with
// those marked taken over, and every entry ends up on one node.
func TestRestartNeverReusesAnEpoch(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.nodes["b"].alive = false
	c.start("b", c.nodes["b"].local, false) // epoch 2 now, on the same disk
	c.runFor(time.Second)
	c.enqueue("b", 0, 10)
	c.runFor(time.Second)
	before := c.leaseOf("b").Epoch
	if before < 2 || c.records["b"].last() != before {
		t.Fatalf("b at epoch %d, record %d: want the record to follow the lease from epoch 2", before, c.records["b"].last())
	}
	c.nodes["b"].alive = false // SIGKILL
	if err := c.shared.Delete(context.Background(), c.layout.LeaseKey("b")); err != nil {
		t.Fatal(err)
	}
	b := c.restartWaiting("b")
	l := c.leaseOf("b")
	if l.Epoch <= before || l.DeadEpoch != before {
		t.Fatalf("b restarted at epoch %d dead_epoch %d; want above %d with %d taken over", l.Epoch, l.DeadEpoch, before, before)
	}
	if got := c.records["b"].last(); got != l.Epoch {
		t.Errorf("record holds %d, lease epoch %d", got, l.Epoch)
	}
	c.runFor(ttl + grace + 3*time.Second)
	c.wantAllVisible(10)
	if st, _ := b.n.State(); st != fence.StateLive {
		t.Fatalf("b is %s, want live", st)
	}
}

// TestRestartAboveARolledBackLease: the lease the store serves carries
// an older epoch than the node has tried (a lost write, or a store
// restored from a backup): the node goes above both.
func TestRestartAboveARolledBackLease(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.nodes["b"].alive = false
	c.records["b"].Save(7)
	c.start("b", c.nodes["b"].local, false)
	if got := c.leaseOf("b").Epoch; got != 8 {
		t.Fatalf("b restarted at epoch %d over a lease at 1 and a record at 7, want 8", got)
	}
	c.runFor(2 * time.Second)
}

// TestUnrecordableEpochIsNotWritten: a node that cannot record an epoch
// on its disk does not write a lease under it.
func TestUnrecordableEpochIsNotWritten(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.nodes["b"].alive = false
	c.records["b"].fail = errors.New("disk full")
	old := c.nodes["b"]
	n, err := fence.New(fence.Config{Node: "b", Layout: c.layout, TTL: ttl, Grace: grace, Margin: margin, MaxTransfers: 3, Epochs: c.records["b"]},
		old.st, old.local, c.clock, rand.New(rand.NewPCG(98, 7)), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := n.Start(ctx, false); err == nil {
		t.Fatal("start succeeded without recording its epoch")
	}
	if got := c.leaseOf("b").Epoch; got != 1 {
		t.Fatalf("lease at epoch %d, want still 1", got)
	}
}
