package runner

import (
	"context"
	"io"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
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

// wireStore holds every Put on the wire while hold is set, until the
// network heals (release) or the caller gives up (its context ends); a
// held Put that is still waiting at the heal commits, as minio-go's
// retry of a request whose connection failed does.
type wireStore struct {
	store.Store
	hold    atomic.Bool
	onWire  chan string
	release chan struct{}
}

func (s *wireStore) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	if s.hold.Load() {
		s.onWire <- key
		select {
		case <-s.release:
		case <-ctx.Done():
			return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindTransient, Code: "canceled", Err: ctx.Err()}
		}
	}
	return s.Store.Put(ctx, key, body, size, cond)
}

// TestFenceEndsUploadOnTheWire: an upload still on the wire when the node
// fences must end there. Left to retry, it commits once a partition heals,
// into a namespace the peers have taken over and emptied; once the
// entry's claim is collected, that copy is claimed afresh and the entry
// runs again (G2; seen in chaos 7-partition-node).
func TestFenceEndsUploadOnTheWire(t *testing.T) {
	ws := &wireStore{onWire: make(chan string, 16), release: make(chan struct{})}
	live := make(chan struct{})
	h := newHarness(t,
		withStore(func(s store.Store) store.Store { ws.Store = s; return ws }),
		withGate(fence.Gate{Epoch: 1, Writable: true, OwnFrom: 1, Done: live}))
	ws.hold.Store(true)
	e := h.enqueue("in", "on the wire at the fence")
	select {
	case <-ws.onWire:
	case <-time.After(10 * time.Second):
		t.Fatal("the upload never reached the store")
	}
	h.setGate(fence.Gate{Epoch: 1, Writable: false, OwnFrom: 1, Done: live})
	close(live) // the fence
	waitFor(t, "the upload waiting for the gate", func() bool {
		h.m.mu.Lock()
		defer h.m.mu.Unlock()
		st := h.m.index[e]
		return st != nil && st.up != nil && !st.up.started
	})
	ws.hold.Store(false)
	close(ws.release) // the partition heals
	h.setGate(fence.Gate{Epoch: 2, Writable: true, OwnFrom: 1, Done: make(chan struct{})})
	h.waitKeys(h.key(2, e))
	if h.has(h.key(1, e)) {
		t.Fatal("the upload begun under epoch 1 committed after the fence")
	}
}
