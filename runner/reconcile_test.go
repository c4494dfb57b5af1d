package runner

import (
	"context"
	"os"
	"sort"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// crashScene mirrors entries, stops the mirror as a crash would, and
// changes the queues and the store while it is down.
type crashScene struct {
	a, b, c, e, d, b2 fence.Entry
	z, z2, s          fence.Entry // store-only entries
}

func setUpCrash(t *testing.T, h *harness) crashScene {
	t.Helper()
	var sc crashScene
	sc.a, sc.b, sc.c, sc.e = h.enqueue("in", "a"), h.enqueue("in", "b"), h.enqueue("in", "c"), h.enqueue("in", "e")
	h.waitKeys(h.key(1, sc.a), h.key(1, sc.b), h.key(1, sc.c), h.key(1, sc.e))
	h.stop()
	ctx := context.Background()
	// While down: a finished, b hopped to out, d new, e's copy replaced
	// by one of another size, copies of entries that are not local.
	os.Remove(h.path(sc.a, "pck"))
	sc.b2 = h.enqueue("out", "b")
	os.Remove(h.path(sc.b, "pck"))
	sc.d = h.enqueue("pipeline", "d")
	store.PutBytes(ctx, h.mem, h.key(1, sc.e), []byte("other size"), store.Condition{})
	sc.z = fence.Entry{Queue: "out", Base: "1700000000.1+" + hex40(1), Kind: fence.KindPck}
	sc.z2 = fence.Entry{Queue: "out", Base: "1700000000.2+" + hex40(2), Kind: fence.KindPck}
	sc.s = fence.Entry{Queue: "out", Base: "1700000000.3+" + hex40(3), Kind: fence.KindPck}
	store.PutBytes(ctx, h.mem, h.key(1, sc.z), []byte("z"), store.Condition{})
	store.PutBytes(ctx, h.mem, h.key(1, sc.z2), []byte("z2"), store.Condition{})
	store.PutBytes(ctx, h.mem, h.key(0, sc.s), []byte("s"), store.Condition{})
	return sc
}

func hex40(n int) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 40)
	for i := range b {
		b[i] = '0'
	}
	b[39] = digits[n%16]
	return string(b)
}

func TestReconcileAfterCrash(t *testing.T) {
	t.Run("same node adopts its copies", func(t *testing.T) {
		h := newHarness(t)
		sc := setUpCrash(t, h)
		var offered []string
		h.orphans = func(_ context.Context, refs []fence.MirrorRef) ([]fence.MirrorRef, error) {
			var keep []fence.MirrorRef
			for _, r := range refs {
				offered = append(offered, testLayout.MirrorKey(r.Node, r.Epoch, r.Entry))
				if r.Entry != sc.z2 { // z2 was handed to a peer
					keep = append(keep, r)
				}
			}
			return keep, nil
		}
		h.setGate(fence.Gate{Epoch: 2, Writable: true, OwnFrom: 1})
		h.start()
		h.waitKeys(
			h.key(1, sc.c),  // live, already mirrored: kept
			h.key(2, sc.e),  // copy of another size: replaced
			h.key(2, sc.b2), // new while down
			h.key(2, sc.d),
			h.key(1, sc.z2), // kept by the orphans filter
			h.key(0, sc.s),  // epoch below OwnFrom: not ours
		)
		sort.Strings(offered)
		want := []string{h.key(1, sc.a), h.key(1, sc.b), h.key(1, sc.z), h.key(1, sc.z2)}
		sort.Strings(want)
		if len(offered) != len(want) {
			t.Fatalf("orphans offered %v, want %v", offered, want)
		}
		for i := range want {
			if offered[i] != want[i] {
				t.Fatalf("orphans offered %v, want %v", offered, want)
			}
		}
		if got := testutil.ToFloat64(h.met.Uploads); got != 3 {
			t.Errorf("uploads after restart = %v, want 3 (e, b2, d)", got)
		}
	})
	t.Run("copies below OwnFrom are left alone", func(t *testing.T) {
		h := newHarness(t)
		sc := setUpCrash(t, h)
		h.setGate(fence.Gate{Epoch: 2, Writable: true, OwnFrom: 2})
		h.start()
		h.waitKeys(
			h.key(1, sc.a), h.key(1, sc.b), h.key(1, sc.c), h.key(1, sc.e), h.key(1, sc.z), h.key(1, sc.z2), h.key(0, sc.s),
			h.key(2, sc.c), h.key(2, sc.e), h.key(2, sc.b2), h.key(2, sc.d),
		)
	})
	t.Run("converges to the live set", func(t *testing.T) {
		h := newHarness(t)
		setUpCrash(t, h)
		h.start()
		for i := 0; i < 3; i++ {
			h.restart()
		}
		h.waitKeys(append(h.liveKeys(1), h.key(0, fence.Entry{Queue: "out", Base: "1700000000.3+" + hex40(3), Kind: fence.KindPck}))...)
	})
}
