package runner

import (
	"context"
	"os"
	"testing"

	"github.com/mmsidecar/mmsidecar/fence"
)

// TestFenceHoldsEntryWithUnansweredUpload: an upload whose answer was
// lost may have committed, so a peer that takes the node over can find
// and restore that copy. When the node fences while the upload waits for
// its retry, the entry must be held like any mirrored one; left in the
// queue, the node's runners and the peer's would both see it (G2; seen
// in chaos 7-partition-node).
func TestFenceHoldsEntryWithUnansweredUpload(t *testing.T) {
	h, ls := lossyHarness(t)
	ls.lossy.Store(true)
	e := h.enqueue("in", "committed but unanswered")
	waitFor(t, "a lost upload answer", func() bool { return ls.lost.Load() > 0 })
	h.setGate(fence.Gate{Epoch: 1, Writable: false, OwnFrom: 1}) // the fence
	waitFor(t, "the upload waiting for the gate", func() bool {
		h.m.mu.Lock()
		defer h.m.mu.Unlock()
		st := h.m.index[e]
		return st != nil && st.up != nil && !st.up.started
	})
	if !h.has(h.key(1, e)) {
		t.Fatal("the unanswered upload did not commit")
	}
	moved, err := h.m.Quarantine(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if len(moved) != 1 || moved[0] != e {
		t.Fatalf("quarantined %v, want [%v]", moved, e)
	}
	if _, err := os.Lstat(h.path(e, "pck")); !os.IsNotExist(err) {
		t.Fatalf("the entry is still in the queue directory: %v", err)
	}
}
