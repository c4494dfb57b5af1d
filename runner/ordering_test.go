package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
	"github.com/mmsidecar/mmsidecar/store"
)

// recordingStore logs puts and deletes in order and can hold back the
// PUTs of matching keys until released.
type recordingStore struct {
	store.Store
	mu      sync.Mutex
	log     []string
	hold    func(key string) bool
	started chan string
	release chan struct{}
	deleted chan []string
}

func newRecordingStore(s store.Store) *recordingStore {
	return &recordingStore{Store: s, started: make(chan string, 16), release: make(chan struct{}), deleted: make(chan []string, 64)}
}

func (r *recordingStore) record(s string) {
	r.mu.Lock()
	r.log = append(r.log, s)
	r.mu.Unlock()
}

func (r *recordingStore) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.log...)
}

func (r *recordingStore) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	r.mu.Lock()
	held := r.hold != nil && r.hold(key)
	r.mu.Unlock()
	if held {
		r.started <- key
		select {
		case <-r.release:
		case <-ctx.Done():
			return store.Info{}, ctx.Err()
		}
	}
	info, err := r.Store.Put(ctx, key, body, size, cond)
	if err == nil {
		r.record("put " + key)
	}
	return info, err
}

func (r *recordingStore) DeleteMany(ctx context.Context, keys []string) error {
	for _, k := range keys {
		r.record("delete " + k)
	}
	r.deleted <- keys
	return r.Store.DeleteMany(ctx, keys)
}

// TestSuccessorDurableBeforePredecessorDeleted is issue 2's ordering: a
// finished entry's copy is deleted only after its successor's PUT has
// returned, however the mirror learns of the hop.
func TestSuccessorDurableBeforePredecessorDeleted(t *testing.T) {
	tests := []struct {
		name string
		// hop moves x on and returns the successor.
		hop      func(h *harness, x fence.Entry) fence.Entry
		overflow bool // events are lost: only a rescan sees the hop
		holdKey  string
		// lateDir: events in this directory come too late (never): only
		// the sweep before deletes finds the successor.
		lateDir string
	}{
		{"successor in next queue", hopToNext, false, "/out/", ""},
		{"preserved into bad", hopToBad, false, "/bad/", ""},
		{"successor in next queue, events lost", hopToNext, true, "/out/", ""},
		{"preserved into bad, events lost", hopToBad, true, "/bad/", ""},
		{"successor's event late", hopToNext, false, "/out/", "/queue/out/"},
		{"preserved entry's event late", hopToBad, false, "/bad/", "/queue/bad/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rs *recordingStore
			h := newHarness(t, withStore(func(s store.Store) store.Store {
				rs = newRecordingStore(s)
				return rs
			}))
			x := h.enqueue("in", "h1")
			h.waitKeys(h.key(1, x))
			rs.mu.Lock()
			rs.hold = func(key string) bool { return strings.Contains(key, tt.holdKey) }
			rs.mu.Unlock()
			if tt.overflow {
				h.watcher.mute.Store(true)
			}
			if tt.lateDir != "" {
				h.watcher.drop.Store(&tt.lateDir)
			}
			y := tt.hop(h, x)
			if tt.overflow {
				h.watcher.mute.Store(false)
				h.watcher.injectOverflow()
			}
			select {
			case k := <-rs.started:
				if k != h.key(1, y) {
					t.Fatalf("held put of %s, want %s", k, h.key(1, y))
				}
			case <-time.After(15 * time.Second):
				t.Fatal("successor's PUT never started")
			}
			waitFor(t, "predecessor's delete queued", func() bool { return h.m.Stats().PendingDeletes > 0 || len(rs.deleted) > 0 })
			// The delete must not be issued while the successor's PUT is
			// outstanding: give a wrong implementation ample time to do so.
			select {
			case keys := <-rs.deleted:
				t.Fatalf("delete of %v issued while the successor's PUT is outstanding", keys)
			case <-time.After(300 * time.Millisecond):
			}
			close(rs.release)
			h.waitKeys(h.key(1, y))
			ev := rs.events()
			put, del := indexOf(ev, "put "+h.key(1, y)), indexOf(ev, "delete "+h.key(1, x))
			if put < 0 || del < 0 || del < put {
				t.Fatalf("order: %v", ev)
			}
		})
	}
}

func hopToNext(h *harness, x fence.Entry) fence.Entry {
	os.Rename(h.path(x, "pck"), h.path(x, "bak"))
	y := h.enqueue("out", "h1")
	if err := os.Remove(h.path(x, "bak")); err != nil {
		h.t.Fatal(err)
	}
	return y
}

func hopToBad(h *harness, x fence.Entry) fence.Entry {
	os.Rename(h.path(x, "pck"), h.path(x, "bak"))
	p := fence.Entry{Queue: "bad", Base: x.Base, Kind: fence.KindPsv}
	if err := os.Rename(h.path(x, "bak"), h.path(p, "psv")); err != nil {
		h.t.Fatal(err)
	}
	return p
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// flakyStore fails every call with a transient error while down.
type flakyStore struct {
	store.Store
	down  atomic.Bool
	fails atomic.Int64
}

func (f *flakyStore) fail(op string) error {
	if !f.down.Load() {
		return nil
	}
	f.fails.Add(1)
	return &store.OpError{Op: op, Kind: store.KindTransient, Code: "ServiceUnavailable", Err: fmt.Errorf("store down")}
}

func (f *flakyStore) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	if err := f.fail("put"); err != nil {
		return store.Info{}, err
	}
	return f.Store.Put(ctx, key, body, size, cond)
}

func (f *flakyStore) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	if err := f.fail("list"); err != nil {
		return err
	}
	return f.Store.List(ctx, prefix, fn)
}

func (f *flakyStore) DeleteMany(ctx context.Context, keys []string) error {
	if err := f.fail("delete_many"); err != nil {
		return err
	}
	return f.Store.DeleteMany(ctx, keys)
}

// liveKeys lists the valid entries in the queue directories as keys.
func (h *harness) liveKeys(epoch uint64) []string {
	var keys []string
	for _, q := range []string{"in", "pipeline", "out", "bad"} {
		ents, _ := os.ReadDir(filepath.Join(h.qdir, q))
		for _, de := range ents {
			base, ext, ok := fence.ParseFileName(de.Name())
			if ok {
				keys = append(keys, h.key(epoch, fence.Entry{Queue: q, Base: base, Kind: fence.KindOfExt(ext)}))
			}
		}
	}
	sort.Strings(keys)
	return keys
}

func TestStoreOutageDropsNothing(t *testing.T) {
	var fs *flakyStore
	h := newHarness(t, withStore(func(s store.Store) store.Store {
		fs = &flakyStore{Store: s}
		return fs
	}))
	// Mirrored before the outage; finished during it.
	early := h.enqueue("out", "early")
	h.waitKeys(h.key(1, early))
	fs.down.Store(true)
	os.Remove(h.path(early, "pck"))
	waitFor(t, "delete errors", func() bool {
		return testutil.ToFloat64(h.met.DeleteErrors.WithLabelValues("ServiceUnavailable")) > 0
	})
	for i := 0; i < 20; i++ {
		h.enqueue("in", fmt.Sprintf("o%d", i))
	}
	ctx := context.Background()
	w := &runnertest.Worker{QueueDir: h.qdir, Queue: "in", Next: "out", Node: testNode, PreserveEvery: 4}
	if _, err := w.Step(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "upload errors", func() bool {
		return testutil.ToFloat64(h.met.UploadErrors.WithLabelValues("ServiceUnavailable")) > 0
	})
	for i := 0; i < 5; i++ {
		h.enqueue("pipeline", fmt.Sprintf("p%d", i))
	}
	// The outage shows as the age of the oldest pending upload and delete.
	waitFor(t, "oldest pending upload and delete ages grow", func() bool {
		return testutil.ToFloat64(h.met.OldestUpload) > 0.05 && testutil.ToFloat64(h.met.OldestDelete) > 0.05
	})
	fs.down.Store(false)
	live := h.liveKeys(1)
	if len(live) != 25 {
		t.Fatalf("%d live entries, want 25", len(live))
	}
	h.waitKeys(live...)
	fctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := h.m.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	if s := h.m.Stats(); s.PendingUploads != 0 || s.PendingDeletes != 0 {
		t.Errorf("pending after flush: %+v", s)
	}
	if up, del := testutil.ToFloat64(h.met.OldestUpload), testutil.ToFloat64(h.met.OldestDelete); up != 0 || del != 0 {
		t.Errorf("oldest pending upload %vs, delete %vs after flush, want 0", up, del)
	}
}

// TestChurnConverges runs a fast producer and workers against the mirror
// and checks that the store ends up holding exactly the live entries.
func TestChurnConverges(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for _, w := range []*runnertest.Worker{
		{Queue: "in", Next: "pipeline", Poll: time.Millisecond},
		{Queue: "pipeline", Next: "out", Poll: 2 * time.Millisecond, PreserveEvery: 7},
		{Queue: "out", Poll: 5 * time.Millisecond},
	} {
		w.QueueDir, w.Node = h.qdir, testNode
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()
	}
	p := &runnertest.Producer{Dir: filepath.Join(h.qdir, "in"), Count: 400, Rate: 2000}
	if _, err := p.Run(ctx); err != nil {
		t.Fatal(err)
	}
	// Stop the workers part-way through the queues.
	cancel()
	wg.Wait()
	live := h.liveKeys(1)
	t.Logf("%d entries live at the end, %d uploads", len(live), int(testutil.ToFloat64(h.met.Uploads)))
	h.waitKeys(live...)
}

// lossyStore commits every Put but answers it with a transient error while
// lossy is set: the answer was lost (a timeout, a store that committed a
// write it reported failed).
type lossyStore struct {
	store.Store
	lossy atomic.Bool
	lost  atomic.Int64
}

func (l *lossyStore) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	info, err := l.Store.Put(ctx, key, body, size, cond)
	if err == nil && l.lossy.Load() {
		l.lost.Add(1)
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindTransient, Code: "RequestTimeout", Err: fmt.Errorf("answer lost")}
	}
	return info, err
}

// lossyHarness is a harness on a lossyStore.
func lossyHarness(t *testing.T) (*harness, *lossyStore) {
	var ls *lossyStore
	h := newHarness(t, withStore(func(s store.Store) store.Store {
		ls = &lossyStore{Store: s}
		return ls
	}))
	return h, ls
}

// TestFailedUploadThatCommittedIsDeleted: an upload whose answer is lost
// may have committed; if the entry finishes before a retry succeeds, that
// copy must still go, or a later takeover of the node re-runs the entry.
func TestFailedUploadThatCommittedIsDeleted(t *testing.T) {
	h, ls := lossyHarness(t)
	ls.lossy.Store(true)
	e := h.enqueue("in", "committed but unanswered")
	waitFor(t, "a lost upload answer", func() bool { return ls.lost.Load() > 0 })
	if err := os.Remove(h.path(e, "pck")); err != nil { // Mailman finished it
		t.Fatal(err)
	}
	ls.lossy.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	waitFor(t, "the copy of the finished entry deleted", func() bool {
		_, err := h.st.Stat(ctx, h.key(1, e))
		return errors.Is(err, store.ErrNotFound)
	})
	if err := h.m.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// stuckStore times out every delete that includes one key, as MinIO does
// for an object whose lock a killed server held.
type stuckStore struct {
	store.Store
	mu    sync.Mutex
	stuck string
}

func (s *stuckStore) DeleteMany(ctx context.Context, keys []string) error {
	s.mu.Lock()
	stuck := s.stuck
	s.mu.Unlock()
	for _, k := range keys {
		if k == stuck {
			return &store.OpError{Op: "delete_many", Key: k, Kind: store.KindTransient, Code: "timeout", Err: fmt.Errorf("no answer")}
		}
	}
	return s.Store.DeleteMany(ctx, keys)
}

// TestStuckDeleteHoldsUpNoOther: one key the store will not delete must
// not keep the copies of other finished entries in the store.
func TestStuckDeleteHoldsUpNoOther(t *testing.T) {
	var ss *stuckStore
	h := newHarness(t, withStore(func(s store.Store) store.Store {
		ss = &stuckStore{Store: s}
		return ss
	}))
	stuck := h.enqueue("in", "stuck")
	h.waitKeys(h.key(1, stuck))
	ss.mu.Lock()
	ss.stuck = h.key(1, stuck)
	ss.mu.Unlock()
	if err := os.Remove(h.path(stuck, "pck")); err != nil {
		t.Fatal(err)
	}
	var others []fence.Entry
	for i := 0; i < 10; i++ {
		others = append(others, h.enqueue("in", fmt.Sprintf("other %d", i)))
	}
	want := []string{h.key(1, stuck)}
	for _, e := range others {
		want = append(want, h.key(1, e))
	}
	h.waitKeys(want...)
	for _, e := range others {
		if err := os.Remove(h.path(e, "pck")); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	waitFor(t, "the other copies deleted while one key is stuck", func() bool {
		for _, e := range others {
			if _, err := h.st.Stat(ctx, h.key(1, e)); !errors.Is(err, store.ErrNotFound) {
				return false
			}
		}
		return true
	})
	if _, err := h.st.Stat(ctx, h.key(1, stuck)); err != nil {
		t.Fatalf("the stuck copy: %v, want it still there", err)
	}
	ss.mu.Lock()
	ss.stuck = ""
	ss.mu.Unlock()
	waitFor(t, "the stuck copy deleted once the store lets it go", func() bool {
		_, err := h.st.Stat(ctx, h.key(1, stuck))
		return errors.Is(err, store.ErrNotFound)
	})
}

// TestFailedHeldUploadThatCommittedIsDeleted: an upload of a held entry
// (a takeover's or a settle's) whose answer is lost, here because a fence
// cancelled it on the wire, may have committed under that epoch. Mirrored
// again under the next epoch, released and finished, the entry must leave
// no copy behind: the old one would be re-run by a takeover of the node.
func TestFailedHeldUploadThatCommittedIsDeleted(t *testing.T) {
	h, ls := lossyHarness(t)
	body := runnertest.Body("held", 100)
	e := fence.Entry{Queue: "in", Base: runnertest.NewBase(time.Now(), body), Kind: fence.KindPck}
	if err := h.m.Stage(e, body); err != nil {
		t.Fatal(err)
	}
	ls.lossy.Store(true)
	fenced, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err := h.m.Mirror(fenced, e)
	cancel()
	if err == nil || ls.lost.Load() == 0 {
		t.Fatalf("mirror while every answer is lost: %v after %d lost answers, want an error", err, ls.lost.Load())
	}
	if !h.has(h.key(1, e)) {
		t.Fatal("the unanswered upload did not commit")
	}
	ls.lossy.Store(false)
	h.setGate(fence.Gate{Epoch: 2, Writable: true, OwnFrom: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := h.m.Release(ctx, e); err != nil {
		t.Fatal(err)
	}
	if !h.has(h.key(2, e)) {
		t.Fatal("released entry not mirrored under epoch 2")
	}
	if err := os.Remove(h.path(e, "pck")); err != nil { // Mailman finished it
		t.Fatal(err)
	}
	waitFor(t, "both copies of the finished entry deleted", func() bool {
		return !h.has(h.key(1, e)) && !h.has(h.key(2, e))
	})
}
