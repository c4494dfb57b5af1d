package fence_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// TestNoReleaseAfterAStall: a node that stands still in the middle of a
// takeover (between reading the copy and releasing it) for longer than
// TTL - margin wakes up as an owner no more: the release is refused and
// the entry stays held, even before its watchdog has fenced it; the fence
// and the next epoch settle it.
func TestNoReleaseAfterAStall(t *testing.T) {
	c, b := killedWithBacklog(t, 1)
	copies := c.layout.NodePrefix("a")
	stalled := false
	b.st.onGet = func(key string) {
		if strings.HasPrefix(key, copies) && !stalled {
			stalled = true
			c.clock.Advance(ttl) // the process stood still
		}
	}
	ctx := context.Background()
	for i := 0; i < 100 && !stalled; i++ {
		c.clock.Advance(200 * time.Millisecond)
		b.n.CheckFence(ctx)
		_ = b.n.Renew(ctx)
		b.n.ScanStep(ctx)
		_ = b.local.Sync(ctx)
	}
	if !stalled {
		t.Fatal("b never read the dead node's copy")
	}
	if v, h := c.count("b"); v != 0 || h != 1 {
		t.Fatalf("after the stall: b has %d visible and %d held, want the entry held", v, h)
	}
	b.n.CheckFence(ctx)
	if st, _ := b.n.State(); st != fence.StateFenced {
		t.Fatalf("after the stall: b is %s, want fenced", st)
	}
	b.st.onGet = nil
	c.runFor(ttl + grace + 3*time.Second)
	if v, h := c.count("b"); v != 1 || h != 0 {
		t.Fatalf("b came back: %d visible and %d held, want the entry visible once", v, h)
	}
}
