package fence_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// TestDrainWithoutPeerRefused: a drain with no live peer refuses at once
// and holds nothing (issue 22: the entries went to the hold area, out of
// Mailman's reach, with nobody to hand them to).
func TestDrainWithoutPeerRefused(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, 10)
	c.runFor(time.Second)
	c.nodes["b"].alive = false // b's lease goes silent, then dead
	c.runFor(ttl + grace + 2*time.Second)
	a := c.nodes["a"]
	if err := a.n.TryStartDrain(context.Background()); !errors.Is(err, fence.ErrNoPeer) {
		t.Fatalf("TryStartDrain with no live peer: %v, want ErrNoPeer", err)
	}
	c.runFor(2 * time.Second)
	if st, _ := a.n.State(); st != fence.StateLive {
		t.Errorf("a is %s, want live", st)
	}
	if d := a.n.Drain(); d.Draining {
		t.Errorf("drain under way after the refusal: %+v", d)
	}
	if v, h := c.count("a"); v != 10 || h != 0 {
		t.Errorf("a: %d visible, %d held; want the 10 entries left to Mailman", v, h)
	}
	if l := c.leaseOf("a"); l.State != fence.StateLive {
		t.Errorf("a's lease says %s", l.State)
	}
}

// TestDrainCancel: a drain cancelled part way puts the entries it still
// held back into Mailman's queues, leaves those already handed off with
// their new owner (every entry on exactly one node), and the node is
// live again, in its lease too.
func TestDrainCancel(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(2 * time.Second)
	c.enqueue("a", 0, 20)
	c.runFor(time.Second)
	a := c.nodes["a"]
	ctx := context.Background()
	// Cancel as soon as the third handoff claim is written: the drain
	// step under way must stop handing off.
	handed := 0
	claims := c.layout.ClaimPrefix()
	a.st.onPut = func(key string) {
		if strings.HasPrefix(key, claims) {
			if handed++; handed == 3 {
				if !a.n.CancelDrain(ctx) {
					t.Error("CancelDrain found no drain under way")
				}
			}
		}
	}
	if err := a.n.TryStartDrain(ctx); err != nil {
		t.Fatalf("TryStartDrain with a live peer: %v", err)
	}
	if st, _ := a.n.State(); st != fence.StateDraining {
		t.Fatalf("a is %s, want draining", st)
	}
	if l := c.leaseOf("a"); l.State != fence.StateDraining {
		t.Fatalf("a's lease says %s, want draining", l.State)
	}
	// The peer's claims pass (every 2 TTL) restores what was handed off.
	c.runFor(4 * ttl)
	a.st.onPut = nil
	va, ha := c.count("a")
	vb, hb := c.count("b")
	if va+vb != 20 || ha+hb != 0 {
		t.Fatalf("a %d visible %d held, b %d visible %d held; want 20 visible in all, none held", va, ha, vb, hb)
	}
	if vb < 1 || vb > 3 || va < 17 {
		t.Errorf("b has %d entries, a %d: want the (up to 3) handed off before the cancel on b, the rest back on a", vb, va)
	}
	if st, _ := a.n.State(); st != fence.StateLive {
		t.Errorf("a is %s, want live", st)
	}
	if l := c.leaseOf("a"); l.State != fence.StateLive {
		t.Errorf("a's lease says %s, want live", l.State)
	}
	if d := a.n.Drain(); d.Draining || d.Done {
		t.Errorf("drain status after the cancel: %+v", d)
	}
	if a.n.CancelDrain(ctx) {
		t.Error("a second CancelDrain found a drain")
	}
}
