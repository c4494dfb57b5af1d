package runner

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
	"github.com/mmsidecar/mmsidecar/store"
)

func (h *harness) holdFile(e fence.Entry) string {
	return filepath.Join(h.state, "hold", e.Queue, e.FileName())
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func entrySet(es []fence.Entry) map[fence.Entry]bool {
	m := make(map[fence.Entry]bool)
	for _, e := range es {
		m[e] = true
	}
	return m
}

func TestQuarantine(t *testing.T) {
	for _, all := range []bool{false, true} {
		name := "mirrored only"
		if all {
			name = "all"
		}
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			m1, m2, inflight := h.enqueue("in", "m1"), h.enqueue("out", "m2"), h.enqueue("in", "f")
			h.waitKeys(h.key(1, m1), h.key(1, m2), h.key(1, inflight))
			os.Rename(h.path(inflight, "pck"), h.path(inflight, "bak"))
			h.setGate(fence.Gate{Epoch: 1, OwnFrom: 1}) // fenced
			fresh := h.enqueue("in", "fresh")           // born while fenced: unknown to the store
			waitFor(t, "fresh entry seen", func() bool { return h.m.Has(fresh) && h.m.Counts().Unmirrored == 1 })

			moved, err := h.m.Quarantine(context.Background(), all)
			if err != nil {
				t.Fatal(err)
			}
			want := map[fence.Entry]bool{m1: true, m2: true}
			if all {
				// At start-up after a takeover nothing is in flight:
				// the .bak is held too.
				want[fresh], want[inflight] = true, true
			}
			got := entrySet(moved)
			if len(got) != len(want) {
				t.Fatalf("moved %v, want %v", moved, want)
			}
			for e := range want {
				if !got[e] || exists(h.path(e, "pck")) || !exists(h.holdFile(e)) {
					t.Errorf("%v: moved=%v pck=%v held=%v", e, got[e], exists(h.path(e, "pck")), exists(h.holdFile(e)))
				}
			}
			if !all && !exists(h.path(inflight, "bak")) {
				t.Error("the .bak was touched")
			}
			if !all && !exists(h.path(fresh, "pck")) {
				t.Error("an entry unknown to the store was quarantined")
			}
			if held := entrySet(h.m.Held()); len(held) != len(want) {
				t.Errorf("Held() = %v", h.m.Held())
			}
			c := h.m.Counts()
			if bak := map[bool]int{false: 1, true: 0}[all]; c.Held != len(want) || c.Bak != bak {
				t.Errorf("counts %+v", c)
			}
			// Copies stay in the store.
			for _, e := range []fence.Entry{m1, m2, inflight} {
				if !h.has(h.key(1, e)) {
					t.Errorf("copy of %v gone", e)
				}
			}
		})
	}
}

func TestQuarantineRaceWithRunner(t *testing.T) {
	var race atomicEntry
	h := newHarness(t, withFS(func(f FS) FS {
		return &hookFS{FS: f, beforeRename: func(oldpath, newpath string) {
			// A runner dequeues the entry just before the mirror moves it.
			if e, ok := race.get(); ok && filepath.Base(oldpath) == e.Base+".pck" && strings.Contains(newpath, "/hold/") {
				os.Rename(oldpath, strings.TrimSuffix(oldpath, ".pck")+".bak")
			}
		}}
	}))
	x, y := h.enqueue("in", "x"), h.enqueue("in", "y")
	h.waitKeys(h.key(1, x), h.key(1, y))
	race.set(x)
	h.setGate(fence.Gate{Epoch: 1, OwnFrom: 1})
	moved, err := h.m.Quarantine(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if len(moved) != 1 || moved[0] != y {
		t.Fatalf("moved %v, want only %v", moved, y)
	}
	if !exists(h.path(x, "bak")) || exists(h.holdFile(x)) {
		t.Error("the entry a runner dequeued was moved")
	}
}

type atomicEntry struct{ v atomic.Pointer[fence.Entry] }

func (a *atomicEntry) set(e fence.Entry) { a.v.Store(&e) }

func (a *atomicEntry) get() (fence.Entry, bool) {
	if p := a.v.Load(); p != nil {
		return *p, true
	}
	return fence.Entry{}, false
}

func TestStageReleaseDrop(t *testing.T) {
	uid, gid := os.Getuid(), os.Getgid()
	if uid == 0 {
		uid, gid = 4242, 4343 // root can give files away: check it does
	}
	h := newHarness(t, withConfig(func(c *Config) { c.UID, c.GID = uid, gid }))
	ctx := context.Background()
	body := runnertest.Body("staged", 100)
	e := fence.Entry{Queue: "out", Base: runnertest.NewBase(time.Now(), body), Kind: fence.KindPck}
	if err := h.m.Stage(e, body); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Stage(e, []byte("other")); err != nil {
		t.Errorf("second stage: %v, want a no-op", err)
	}
	if !h.m.Has(e) || len(h.m.Held()) != 1 {
		t.Fatalf("staged entry not held: %v", h.m.Held())
	}
	if err := h.m.Release(ctx, e); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(h.path(e, "pck"))
	if err != nil {
		t.Fatal(err)
	}
	sys := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o660 || int(sys.Uid) != uid || int(sys.Gid) != gid {
		t.Errorf("released file mode %v owner %d:%d, want 0660 %d:%d", fi.Mode().Perm(), sys.Uid, sys.Gid, uid, gid)
	}
	if got, _ := os.ReadFile(h.path(e, "pck")); string(got) != string(body) {
		t.Error("released file differs")
	}
	if h.object(h.key(1, e)) != string(body) {
		t.Error("store copy differs")
	}
	// The watcher's event for the released file must not upload it again:
	// a marker written after it is mirrored after that event was handled.
	marker := h.enqueue("out", "marker")
	h.waitKeys(h.key(1, e), h.key(1, marker))
	if got := testutil.ToFloat64(h.met.Uploads); got != 2 {
		t.Errorf("uploads = %v, want 2 (staged entry once, marker)", got)
	}
	// Nothing but valid names ever appeared in the queue directory.
	ents, _ := os.ReadDir(filepath.Join(h.qdir, "out"))
	for _, de := range ents {
		if _, _, ok := fence.ParseFileName(de.Name()); !ok {
			t.Errorf("left %q in the queue directory", de.Name())
		}
	}

	// A preserved entry is released into bad as .psv.
	p := fence.Entry{Queue: "bad", Base: runnertest.NewBase(time.Now(), body), Kind: fence.KindPsv}
	if err := h.m.Stage(p, body); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Release(ctx, p); err != nil {
		t.Fatal(err)
	}
	if !exists(filepath.Join(h.qdir, "bad", p.Base+".psv")) {
		t.Error("psv not released into bad")
	}

	// Drop deletes the held file but keeps the store copy for the peer.
	h.setGate(fence.Gate{Epoch: 1, OwnFrom: 1})
	moved, err := h.m.Quarantine(ctx, false)
	if err != nil || len(moved) != 2 {
		t.Fatalf("quarantine: %v %v", moved, err)
	}
	if err := h.m.Drop(e); err != nil {
		t.Fatal(err)
	}
	if exists(h.holdFile(e)) || h.m.Has(e) {
		t.Error("dropped entry still held")
	}
	if !h.has(h.key(1, e)) {
		t.Error("drop deleted the store copy")
	}
	if c := h.m.Counts(); c.Held != 1 {
		t.Errorf("counts after drop: %+v", c)
	}
	if _, err := h.m.Mirror(ctx, marker); !errors.Is(err, ErrGateClosed) {
		t.Errorf("mirror with closed gate: %v", err)
	}
}

func TestMirrorHeldAtNewEpoch(t *testing.T) {
	for _, ownFrom := range []uint64{1, 2} {
		t.Run("own from "+string(rune('0'+ownFrom)), func(t *testing.T) {
			h := newHarness(t)
			ctx := context.Background()
			x := h.enqueue("in", "x")
			h.waitKeys(h.key(1, x))
			h.setGate(fence.Gate{Epoch: 1, OwnFrom: 1})
			if _, err := h.m.Quarantine(ctx, false); err != nil {
				t.Fatal(err)
			}
			h.setGate(fence.Gate{Epoch: 2, Writable: true, OwnFrom: ownFrom})
			key, err := h.m.Mirror(ctx, x)
			want := h.key(2, x)
			if ownFrom == 1 {
				want = h.key(1, x) // our own copy, out of any takeover's reach
			}
			if err != nil || key != want {
				t.Fatalf("mirror: %q %v, want %q", key, err, want)
			}
			if ownFrom == 1 {
				h.waitKeys(h.key(1, x)) // kept, not uploaded again
			} else {
				// A peer's takeover owns epoch 1: its copy stays.
				if err := h.m.Flush(ctx); err != nil {
					t.Fatal(err)
				}
				h.waitKeys(h.key(1, x), h.key(2, x))
			}
			// Mirroring again at the same epoch does not upload.
			before := testutil.ToFloat64(h.met.Uploads)
			if _, err := h.m.Mirror(ctx, x); err != nil {
				t.Fatal(err)
			}
			if testutil.ToFloat64(h.met.Uploads) != before {
				t.Error("mirrored again")
			}
		})
	}
}

func TestDrainingHoldsNewEntries(t *testing.T) {
	h := newHarness(t)
	h.setGate(fence.Gate{Epoch: 1, Writable: true, Draining: true, OwnFrom: 1})
	x := h.enqueue("in", "x")
	waitFor(t, "new entry held", func() bool { return exists(h.holdFile(x)) })
	if exists(h.path(x, "pck")) {
		t.Error("still visible to Mailman")
	}
	if held := h.m.Held(); len(held) != 1 || held[0] != x {
		t.Errorf("Held() = %v", held)
	}
	// Handed to a peer: mirrored, then dropped.
	if _, err := h.m.Mirror(context.Background(), x); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Drop(x); err != nil {
		t.Fatal(err)
	}
	if !h.has(h.key(1, x)) || h.m.Has(x) {
		t.Error("after handoff: copy missing or entry still here")
	}
}

func TestHoldAreaSurvivesRestart(t *testing.T) {
	h := newHarness(t)
	x, y := h.enqueue("in", "x"), h.enqueue("out", "y")
	h.waitKeys(h.key(1, x), h.key(1, y))
	h.setGate(fence.Gate{Epoch: 1, OwnFrom: 1})
	if _, err := h.m.Quarantine(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of a Stage leaves a temp file behind.
	leftover := filepath.Join(h.state, "hold", "in", ".junk"+tmpSuffix)
	writeFile(t, leftover, "partial")
	h.setGate(fence.Gate{Epoch: 2, Writable: true, OwnFrom: 1})
	h.restart()
	held := entrySet(h.m.Held())
	if len(held) != 2 || !held[x] || !held[y] {
		t.Fatalf("held after restart: %v", h.m.Held())
	}
	if exists(leftover) {
		t.Error("leftover temp file not removed")
	}
	// Held entries are not orphans: their copies stay; not re-uploaded.
	if err := h.m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.waitKeys(h.key(1, x), h.key(1, y))
	if err := h.m.Release(context.Background(), x); err != nil {
		t.Fatal(err)
	}
	// Epoch 1 is still the node's own (OwnFrom 1): the copy is kept.
	h.waitKeys(h.key(1, x), h.key(1, y))
	if !exists(h.path(x, "pck")) {
		t.Error("released entry not in its queue directory")
	}
	// Released twice (a resumed takeover): nothing happens.
	if err := h.m.Release(context.Background(), x); err != nil {
		t.Errorf("second release: %v", err)
	}
}

func TestGateClosedUploadsWait(t *testing.T) {
	h := newHarness(t, withGate(fence.Gate{Epoch: 1, OwnFrom: 1}))
	x := h.enqueue("in", "x")
	waitFor(t, "upload pending", func() bool { return h.m.Stats().PendingUploads == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := h.m.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("flush with closed gate: %v", err)
	}
	if len(h.keys()) != 0 {
		t.Fatal("uploaded through a closed gate")
	}
	h.setGate(fence.Gate{Epoch: 3, Writable: true, OwnFrom: 1})
	if err := h.m.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.waitKeys(h.key(3, x))
}

func TestMirrorRetriesTransientErrors(t *testing.T) {
	var fs *flakyStore
	h := newHarness(t, withStore(func(s store.Store) store.Store {
		fs = &flakyStore{Store: s}
		return fs
	}))
	x := h.enqueue("in", "x")
	h.waitKeys(h.key(1, x))
	h.setGate(fence.Gate{Epoch: 1, OwnFrom: 1})
	h.m.Quarantine(context.Background(), false)
	// Peers took epoch 1 over: the held entry needs a copy at epoch 2.
	h.setGate(fence.Gate{Epoch: 2, Writable: true, OwnFrom: 2})
	fs.down.Store(true)
	done := make(chan error, 1)
	go func() { _, err := h.m.Mirror(context.Background(), x); done <- err }()
	waitFor(t, "failures", func() bool { return fs.fails.Load() >= 2 })
	fs.down.Store(false)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !h.has(h.key(2, x)) {
		t.Error("not mirrored")
	}
}

// TestCopiesBelowOwnFromAreReplaced: when peers took over the node's old
// epoch, entries left in place (in flight, preserved) get new copies at
// the current epoch at the next rescan; the old ones are left to the peers.
func TestCopiesBelowOwnFromAreReplaced(t *testing.T) {
	h := newHarness(t)
	x := h.enqueue("in", "x")
	h.waitKeys(h.key(1, x))
	os.Rename(h.path(x, "pck"), h.path(x, "bak"))
	waitFor(t, "in flight seen", func() bool { return h.m.Counts().Bak == 1 })
	h.setGate(fence.Gate{Epoch: 2, Writable: true, OwnFrom: 2})
	h.watcher.injectOverflow()
	h.waitKeys(h.key(1, x), h.key(2, x))
}

// TestQuarantineAllAtStart: a node declared dead while it was down holds
// every entry before its runners start, .bak and .psv included, so that
// Mailman's recovery cannot re-run what a peer took over.
func TestQuarantineAllAtStart(t *testing.T) {
	h := newHarness(t)
	x, y := h.enqueue("in", "x"), h.enqueue("in", "y")
	h.waitKeys(h.key(1, x), h.key(1, y))
	if err := os.Rename(h.path(x, "pck"), h.path(x, "bak")); err != nil {
		t.Fatal(err)
	}
	body := runnertest.Body("kept", 10)
	p := fence.Entry{Queue: "bad", Base: runnertest.NewBase(time.Now(), body), Kind: fence.KindPsv}
	if err := os.MkdirAll(filepath.Dir(h.path(p, "psv")), 0o770); err != nil {
		t.Fatal(err)
	}
	writeFile(t, h.path(p, "psv"), string(body))
	h.setGate(fence.Gate{Epoch: 1, OwnFrom: 1})
	moved, err := h.m.Quarantine(context.Background(), true)
	if err != nil {
		t.Fatal(err)
	}
	if got := entrySet(moved); len(got) != 3 || !got[x] || !got[y] || !got[p] {
		t.Fatalf("moved %v, want x (from .bak), y and the .psv", moved)
	}
	for _, f := range []string{h.path(x, "bak"), h.path(y, "pck"), h.path(p, "psv")} {
		if exists(f) {
			t.Errorf("%s still in its queue directory", f)
		}
	}
	if !exists(h.holdFile(x)) || !exists(h.holdFile(p)) {
		t.Error("held files missing")
	}
}
