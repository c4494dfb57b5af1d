package fence_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// TestLateCopyOfFinishedEntryIsNotRunAgain: uploads a partitioned node
// began before its fence can commit once the network heals (a client that
// retries a failed connection), after the survivor restored the entries,
// deleted their copies and finished them. The survivor must delete such a
// copy before it collects the entry's claim: without the claim, the copy
// is claimed afresh by the next takeover round of the node's old epoch
// and the message runs again (seen in chaos 7-partition-node).
func TestLateCopyOfFinishedEntryIsNotRunAgain(t *testing.T) {
	const entries = 20
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, entries)
	c.runFor(time.Second)
	a, b := c.nodes["a"], c.nodes["b"]
	a.st.down.Store(true)
	c.runFor(ttl + grace + 3*time.Second)
	if v, _ := c.count("b"); v != entries {
		t.Fatalf("survivor restored %d entries, want %d", v, entries)
	}
	for i := range entries {
		b.local.Dequeue(entry(i))
		b.local.Finish(entry(i))
	}
	a.st.down.Store(false)
	c.runFor(2 * time.Second)
	if st, epoch := a.n.State(); st != fence.StateLive || epoch < 2 {
		t.Fatalf("healed node state %s epoch %d, want live at 2 or later", st, epoch)
	}
	ctx := context.Background()
	for i := range entries { // the uploads that were on the wire commit
		key := c.layout.MirrorKey("a", 1, entry(i))
		if _, err := store.PutBytes(ctx, c.shared, key, []byte(fmt.Sprintf("message %d", i)), store.Condition{}); err != nil {
			t.Fatal(err)
		}
	}
	c.runFor(8 * ttl)
	for _, id := range c.order {
		if v, h := c.count(id); v+h != 0 {
			t.Fatalf("%s has %d visible and %d held entries: finished messages run again", id, v, h)
		}
	}
	if n := c.storeKeys("q/a/"); n != 0 {
		t.Errorf("%d late copies left in the healed node's namespace", n)
	}
	if n := c.storeKeys("claims/"); n != 0 {
		t.Errorf("%d claims left", n)
	}
}
