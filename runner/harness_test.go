package runner

import (
	"context"
	"fmt"
	"io"
	"log/slog"
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
	"github.com/mmsidecar/mmsidecar/store/memstore"
)

const testNode = "n1"

var testLayout = fence.NewLayout("t")

// harness runs a Mirror on a temp queue root and an in-memory store.
type harness struct {
	t       *testing.T
	root    string
	qdir    string
	state   string
	mem     *memstore.Store
	st      store.Store
	fs      FS
	watcher *testWatcher
	met     *Metrics
	gate    atomic.Pointer[fence.Gate]
	cfg     Config
	m       *Mirror
	cancel  context.CancelFunc
	runDone chan error
	// orphans is passed to Reconcile at start.
	orphans func(context.Context, []fence.MirrorRef) ([]fence.MirrorRef, error)
}

type harnessOpt func(h *harness)

func withStore(wrap func(store.Store) store.Store) harnessOpt {
	return func(h *harness) { h.st = wrap(h.st) }
}

func withFS(wrap func(FS) FS) harnessOpt { return func(h *harness) { h.fs = wrap(h.fs) } }

func withConfig(f func(*Config)) harnessOpt { return func(h *harness) { f(&h.cfg) } }

func withGate(g fence.Gate) harnessOpt { return func(h *harness) { h.gate.Store(&g) } }

// newHarness creates queue directories in, pipeline, out and bad, and
// starts a Mirror on them (Run, then Reconcile).
func newHarness(t *testing.T, opts ...harnessOpt) *harness {
	t.Helper()
	root := t.TempDir()
	h := &harness{t: t, root: root, qdir: filepath.Join(root, "queue"), state: filepath.Join(root, "state"), mem: memstore.New()}
	for _, q := range []string{"in", "pipeline", "out", "bad"} {
		if err := os.MkdirAll(filepath.Join(h.qdir, q), 0o770); err != nil {
			t.Fatal(err)
		}
	}
	h.st = h.mem
	h.fs = OSFS{}
	h.gate.Store(&fence.Gate{Epoch: 1, Writable: true, OwnFrom: 1})
	h.cfg = Config{
		Node: testNode, QueueDir: h.qdir, StateDir: h.state, UID: -1, GID: -1,
		UploadConcurrency: 4, RescanInterval: time.Hour, DeleteBatchDelay: 10 * time.Millisecond,
		Layout: testLayout,
	}
	for _, o := range opts {
		o(h)
	}
	h.start()
	return h
}

// start creates and runs a new Mirror on the harness's dirs and store.
func (h *harness) start() {
	t := h.t
	t.Helper()
	w, err := newTestWatcher()
	if err != nil {
		t.Fatal(err)
	}
	h.watcher = w
	cfg := h.cfg
	cfg.Watcher = w
	h.met = NewMetrics(nil)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := New(cfg, h.st, h.fs, fence.SystemClock{}, func() fence.Gate { return *h.gate.Load() }, h.met, log)
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.runDone = make(chan error, 1)
	go func() { h.runDone <- m.Run(ctx) }()
	t.Cleanup(h.stop)
	if err := m.Reconcile(ctx, h.orphans); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	waitFor(t, "start rescan", func() bool { return testutil.ToFloat64(h.met.Rescans.WithLabelValues("start")) == 1 })
}

// stop ends Run, as a crash would (nothing is flushed).
func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case <-h.runDone:
	case <-time.After(10 * time.Second):
		h.t.Error("Run did not return")
	}
}

// restart simulates a crash and a restart on the same dirs and store.
func (h *harness) restart() {
	h.stop()
	h.start()
}

func (h *harness) setGate(g fence.Gate) { h.gate.Store(&g) }

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// enqueue writes a new entry into queue the way Mailman does.
func (h *harness) enqueue(queue, id string) fence.Entry {
	h.t.Helper()
	body := runnertest.Body(id, 64)
	base := runnertest.NewBase(time.Now(), body)
	if err := runnertest.WriteEntry(filepath.Join(h.qdir, queue), base, body, nil); err != nil {
		h.t.Fatal(err)
	}
	return fence.Entry{Queue: queue, Base: base, Kind: fence.KindPck}
}

func (h *harness) path(e fence.Entry, ext string) string {
	return filepath.Join(h.qdir, e.Queue, e.Base+"."+ext)
}

func (h *harness) key(epoch uint64, e fence.Entry) string {
	return testLayout.MirrorKey(testNode, epoch, e)
}

// keys lists the node's namespace.
func (h *harness) keys() []string {
	var ks []string
	h.mem.List(context.Background(), testLayout.NodePrefix(testNode), func(i store.Info) error {
		ks = append(ks, i.Key)
		return nil
	})
	return ks
}

func (h *harness) has(key string) bool {
	_, err := h.mem.Stat(context.Background(), key)
	return err == nil
}

// waitKeys waits until the node's namespace holds exactly want.
func (h *harness) waitKeys(want ...string) {
	h.t.Helper()
	sort.Strings(want)
	waitFor(h.t, fmt.Sprintf("store keys = %v", want), func() bool {
		got := h.keys()
		return strings.Join(got, "\n") == strings.Join(want, "\n")
	}, func() string { return fmt.Sprintf("have %v", h.keys()) })
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			msg := "timed out waiting for " + what
			for _, d := range detail {
				msg += ": " + d()
			}
			t.Fatal(msg)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testWatcher wraps the fsnotify watcher so a test can mute events (as if
// the kernel dropped them) and inject an overflow.
type testWatcher struct {
	real     Watcher
	events   chan string
	overflow chan struct{}
	mute     atomic.Bool
	drop     atomic.Pointer[string] // drop events whose path contains it
	done     chan struct{}
	once     sync.Once
}

func newTestWatcher() (*testWatcher, error) {
	real, err := NewFSNotifyWatcher()
	if err != nil {
		return nil, err
	}
	w := &testWatcher{real: real, events: make(chan string), overflow: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		for {
			select {
			case p := <-real.Events():
				if w.mute.Load() {
					continue
				}
				if d := w.drop.Load(); d != nil && strings.Contains(p, *d) {
					continue
				}
				select {
				case w.events <- p:
				case <-w.done:
					return
				}
			case <-real.Overflow():
				w.injectOverflow()
			case <-w.done:
				return
			}
		}
	}()
	return w, nil
}

func (w *testWatcher) injectOverflow() {
	select {
	case w.overflow <- struct{}{}:
	default:
	}
}

func (w *testWatcher) Add(dir string) error      { return w.real.Add(dir) }
func (w *testWatcher) Events() <-chan string     { return w.events }
func (w *testWatcher) Overflow() <-chan struct{} { return w.overflow }
func (w *testWatcher) Errors() <-chan error      { return w.real.Errors() }
func (w *testWatcher) Close() error {
	w.once.Do(func() { close(w.done) })
	return w.real.Close()
}

// hookFS lets a test fail opens or act before renames.
type hookFS struct {
	FS
	openErr      func(path string) error
	beforeRename func(oldpath, newpath string)
}

func (f *hookFS) Open(path string) (File, error) {
	if f.openErr != nil {
		if err := f.openErr(path); err != nil {
			return nil, err
		}
	}
	return f.FS.Open(path)
}

func (f *hookFS) Rename(oldpath, newpath string) error {
	if f.beforeRename != nil {
		f.beforeRename(oldpath, newpath)
	}
	return f.FS.Rename(oldpath, newpath)
}

// readAll reads a stored object.
func (h *harness) object(key string) string {
	h.t.Helper()
	rc, _, err := h.mem.Get(context.Background(), key)
	if err != nil {
		h.t.Fatalf("get %s: %v", key, err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}
