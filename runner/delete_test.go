package runner

import (
	"os"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

// TestDeletesPaced: an idle mirror deletes a finished entry's copy at
// once, not after DeleteBatchDelay; one finished right after waits for
// the next batch, a DeleteBatchDelay (here an hour) after the first,
// unless there is no delay at all (negative).
func TestDeletesPaced(t *testing.T) {
	tests := []struct {
		name  string
		delay time.Duration
		waits bool // the second copy waits for the next batch
	}{
		{"an hour between batches", time.Hour, true},
		{"no delay", -1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rs *recordingStore
			h := newHarness(t, withConfig(func(c *Config) { c.DeleteBatchDelay = tt.delay }),
				withStore(func(s store.Store) store.Store {
					rs = newRecordingStore(s)
					return rs
				}))
			a, b := h.enqueue("in", "a"), h.enqueue("in", "b")
			h.waitKeys(h.key(1, a), h.key(1, b))
			if err := os.Remove(h.path(a, "pck")); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the finished entry's copy deleted at once", func() bool { return !h.has(h.key(1, a)) })
			if keys := <-rs.deleted; len(keys) != 1 || keys[0] != h.key(1, a) {
				t.Fatalf("first batch %v, want only %s", keys, h.key(1, a))
			}
			if err := os.Remove(h.path(b, "pck")); err != nil {
				t.Fatal(err)
			}
			if !tt.waits {
				waitFor(t, "the second copy deleted at once", func() bool { return !h.has(h.key(1, b)) })
				return
			}
			// Give a mirror that deletes at once every time ample time
			// to do so.
			select {
			case keys := <-rs.deleted:
				t.Fatalf("second batch %v sent within the batch delay of the first", keys)
			case <-time.After(500 * time.Millisecond):
			}
			if !h.has(h.key(1, b)) {
				t.Fatal("the second copy went without a batch")
			}
		})
	}
}
