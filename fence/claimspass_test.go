package fence_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// TestLightClaimsPassReadsOnlyKnownClaims: a claims pass that runs while
// a takeover has entries left reads no claim it does not already know
// (on a large takeover every survivor read every other survivor's
// claims), and leaves them to the next pass, which handles them: here,
// entries a draining peer handed off to the node.
func TestLightClaimsPassReadsOnlyKnownClaims(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, 10)
	c.runFor(time.Second)
	ctx := context.Background()
	a, b := c.nodes["a"], c.nodes["b"]
	a.n.StartDrain(ctx)
	for i := 0; i < 20 && c.storeKeys("claims/") < 10; i++ {
		c.clock.Advance(200 * time.Millisecond)
		c.stepNode(ctx, a)
	}
	if n := c.storeKeys("claims/"); n != 10 {
		t.Fatalf("a handed off %d entries, want 10", n)
	}
	var claimReads atomic.Int64
	b.st.onGet = func(key string) {
		if strings.Contains(key, "/claims/") {
			claimReads.Add(1)
		}
	}
	if err := fence.ClaimsPassNow(ctx, b.n, true); err != nil {
		t.Fatal(err)
	}
	if n := claimReads.Load(); n != 0 {
		t.Fatalf("light pass read %d claims it did not know", n)
	}
	if v, _ := c.count("b"); v != 0 {
		t.Fatalf("light pass restored %d entries from claims it did not read", v)
	}
	if err := fence.ClaimsPassNow(ctx, b.n, false); err != nil {
		t.Fatal(err)
	}
	if n := claimReads.Load(); n != 10 {
		t.Errorf("full pass read %d claims, want the 10 handoffs", n)
	}
	if v, _ := c.count("b"); v != 10 {
		t.Fatalf("full pass: b has %d of the 10 handed-off entries", v)
	}
	// Known now: a second light pass reads nothing again.
	claimReads.Store(0)
	if err := fence.ClaimsPassNow(ctx, b.n, true); err != nil {
		t.Fatal(err)
	}
	if n := claimReads.Load(); n != 0 {
		t.Errorf("light pass re-read %d known claims", n)
	}
}
