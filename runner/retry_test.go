package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// hangStore fails every delete while down; afterwards a delete of one of
// the locked keys alone hangs until released (or its context ends), as
// MinIO does for a key whose lock outlived a lost quorum, and a batch
// holding one fails at once.
type hangStore struct {
	store.Store
	down    atomic.Bool
	mu      sync.Mutex
	locked  map[string]bool
	release chan struct{}
}

func (s *hangStore) DeleteMany(ctx context.Context, keys []string) error {
	timeout := &store.OpError{Op: "delete_many", Key: keys[0], Kind: store.KindTransient, Code: "timeout", Err: fmt.Errorf("no answer")}
	if s.down.Load() {
		return timeout
	}
	s.mu.Lock()
	locked := false
	for _, k := range keys {
		locked = locked || s.locked[k]
	}
	s.mu.Unlock()
	switch {
	case locked && len(keys) > 1:
		return timeout
	case locked:
		select {
		case <-s.release:
			return s.Store.DeleteMany(ctx, keys)
		case <-ctx.Done():
			return timeout
		}
	}
	return s.Store.DeleteMany(ctx, keys)
}

// TestHangingDeletesHoldUpNoOther: after a store incident, deletes that
// hang on locked keys must not keep the copies of other finished entries
// in the store: the retry lane has several deletes under way at once.
func TestHangingDeletesHoldUpNoOther(t *testing.T) {
	hs := &hangStore{locked: map[string]bool{}, release: make(chan struct{})}
	h := newHarness(t, withStore(func(s store.Store) store.Store {
		hs.Store = s
		return hs
	}))
	var stuck, others []fence.Entry
	for i := range 3 {
		stuck = append(stuck, h.enqueue("in", fmt.Sprintf("stuck %d", i)))
	}
	for i := range 10 {
		others = append(others, h.enqueue("in", fmt.Sprintf("other %d", i)))
	}
	var keys []string
	for _, e := range append(append([]fence.Entry{}, stuck...), others...) {
		keys = append(keys, h.key(1, e))
	}
	h.waitKeys(keys...)
	hs.mu.Lock()
	for _, e := range stuck {
		hs.locked[h.key(1, e)] = true
	}
	hs.mu.Unlock()
	// Every delete fails for a while, so that all of them, the locked
	// ones first, are in the retry lane when the store comes back.
	hs.down.Store(true)
	for _, e := range append(append([]fence.Entry{}, stuck...), others...) {
		if err := os.Remove(h.path(e, "pck")); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every delete failed once", func() bool {
		return testutil.ToFloat64(h.met.DeleteErrors.WithLabelValues("timeout")) >= 13
	})
	hs.down.Store(false)
	ctx := context.Background()
	gone := func(es []fence.Entry) bool {
		for _, e := range es {
			if _, err := h.st.Stat(ctx, h.key(1, e)); !errors.Is(err, store.ErrNotFound) {
				return false
			}
		}
		return true
	}
	waitFor(t, "the other copies deleted while three deletes hang", func() bool { return gone(others) })
	close(hs.release)
	waitFor(t, "the locked copies deleted once the store lets them go", func() bool { return gone(stuck) })
}
