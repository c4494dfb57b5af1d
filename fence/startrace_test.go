package fence_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// TestStartLeaseWriteLosesARace: the first lease write of a restarting
// node answers 412 (issue 21: a sidecar restarted while a MinIO server
// was down exited with "write lease: ... pre-conditions ... did not
// hold"). Each cause a 412 can have at start is resolved as acquire
// resolves it anywhere else, and the node starts: it never gives up.
func TestStartLeaseWriteLosesARace(t *testing.T) {
	precondition := func(key string) error {
		return &store.OpError{Op: "put", Key: key, Kind: store.KindPrecondition, Code: "PreconditionFailed",
			Err: errors.New("At least one of the pre-conditions you specified did not hold")}
	}
	tests := []struct {
		name string
		// race runs in place of b's first start-up lease write; put
		// does that write.
		race func(c *cluster, key string, put func() (store.Info, error)) (store.Info, error)
		// deadAfter says b must come back with its old epochs taken over.
		deadAfter bool
	}{
		{
			// minio-go retried a write that had committed: the retry
			// met b's own lease.
			name: "own write committed, answer lost",
			race: func(c *cluster, key string, put func() (store.Info, error)) (store.Info, error) {
				if _, err := put(); err != nil {
					c.t.Fatalf("first lease write: %v", err)
				}
				return store.Info{}, precondition(key)
			},
		},
		{
			name: "a peer declared b dead meanwhile",
			race: func(c *cluster, key string, put func() (store.Info, error)) (store.Info, error) {
				c.rewriteLease("b", func(l *fence.Lease) {
					l.State, l.DeadBy, l.DeadEpoch, l.Nonce = fence.StateDead, "a", l.Epoch, "declaration"
				})
				return put()
			},
			deadAfter: true,
		},
		{
			// A process that is not this one wrote b's lease: at start
			// that is taken for an earlier run of b, as a lease read at
			// start always is.
			name: "another process wrote b's lease",
			race: func(c *cluster, key string, put func() (store.Info, error)) (store.Info, error) {
				c.rewriteLease("b", func(l *fence.Lease) { l.Epoch, l.Seq, l.Nonce = l.Epoch+5, 0, "other-process" })
				return put()
			},
		},
		{
			// The lease vanished between the read and the write (412 on
			// If-Match of a missing key): it is waited for as any
			// missing lease, TTL + grace, and b starts above it.
			name: "lease gone between read and write",
			race: func(c *cluster, key string, put func() (store.Info, error)) (store.Info, error) {
				if err := c.shared.Delete(context.Background(), key); err != nil {
					c.t.Fatal(err)
				}
				return put()
			},
			deadAfter: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := backlogOnB(t)
			before := c.leaseOf("b")
			c.nodes["b"].alive = false // SIGKILL
			key := c.layout.LeaseKey("b")
			var raced, lost atomic.Bool
			c.nodes["b"].st.aroundPut = func(k string, _ store.Condition, put func() (store.Info, error)) (store.Info, error) {
				if k != key || raced.Swap(true) {
					return put()
				}
				info, err := tc.race(c, k, put)
				lost.Store(errors.Is(err, store.ErrPrecondition))
				return info, err
			}
			b := c.restartWaiting("b")
			if !raced.Load() || !lost.Load() {
				t.Fatalf("the race was not run (raced %v, first write lost %v)", raced.Load(), lost.Load())
			}
			after := c.leaseOf("b")
			if after.Node != "b" || after.State == fence.StateDead || after.Epoch <= before.Epoch {
				t.Fatalf("b's lease after the start: %+v; want b's own, above epoch %d", after, before.Epoch)
			}
			if got := c.records["b"].last(); got < after.Epoch {
				t.Errorf("epoch record %d below the lease's epoch %d", got, after.Epoch)
			}
			if tc.deadAfter != (after.DeadEpoch >= before.Epoch) {
				t.Errorf("b came back with dead_epoch %d (was at epoch %d); want its old epochs taken over: %v", after.DeadEpoch, before.Epoch, tc.deadAfter)
			}
			c.runFor(ttl + grace + 3*time.Second)
			c.wantAllVisible(10)
			if st, _ := b.n.State(); st != fence.StateLive {
				t.Fatalf("b is %s, want live", st)
			}
		})
	}
}

// rewriteLease writes id's lease over its current version, changed by
// edit, as another writer would.
func (c *cluster) rewriteLease(id string, edit func(*fence.Lease)) {
	c.t.Helper()
	ctx := context.Background()
	key := c.layout.LeaseKey(id)
	data, info, err := store.GetBytes(ctx, c.shared, key)
	if err != nil {
		c.t.Fatalf("read %s's lease: %v", id, err)
	}
	l, err := fence.DecodeLease(data)
	if err != nil {
		c.t.Fatal(err)
	}
	edit(&l)
	body, err := json.Marshal(l)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := store.PutBytes(ctx, c.shared, key, body, store.Condition{IfMatch: info.ETag}); err != nil {
		c.t.Fatalf("rewrite %s's lease: %v", id, err)
	}
}
