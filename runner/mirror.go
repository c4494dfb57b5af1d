// Package runner mirrors one node's Mailman queue directories into the
// node's namespace in the store, and implements fence.Local so that the
// cluster coordinator can fence, hold, stage, release and drop entries.
//
// Everything it touches comes in as a parameter (filesystem, watcher,
// store, clock, gate), so a deterministic simulator can drive it.
// The protocol's design and the entry states it tracks: docs/design.md.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// Defaults for the zero values of Config.
const (
	DefaultUploadConcurrency = 16
	DefaultRescanInterval    = 60 * time.Second
	DefaultDeleteBatchDelay  = 100 * time.Millisecond
)

// Retry timing for store failures and for waiting on a closed gate.
const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 5 * time.Second
	gatePoll   = 100 * time.Millisecond
)

// Config says what to mirror and how.
type Config struct {
	// Node is this node's id (a fence.ValidName).
	Node string
	// QueueDir is Mailman's queue root; its subdirectories are the queues.
	QueueDir string
	// Queues names the queues to mirror. Empty: every subdirectory of
	// QueueDir with a valid name not starting with "." (present at start
	// or appearing later), except StateDir.
	Queues []string
	// StateDir holds the hold area (StateDir/hold/<queue>/<file>). It must
	// be on the same filesystem as QueueDir.
	StateDir string
	// UID and GID own the files the mirror puts into queue directories
	// (-1: leave as is). The mode is always 0660.
	UID, GID int
	// UploadConcurrency is the number of concurrent uploads (default 8).
	UploadConcurrency int
	// RescanInterval is the period of full rescans (default 60s).
	RescanInterval time.Duration
	// DeleteBatchDelay is the shortest time between two requests that
	// delete finished entries' copies (default 100ms; negative: none): a
	// copy goes at once when no such request went within it, and with
	// the next batch otherwise.
	DeleteBatchDelay time.Duration
	// Layout maps entries to keys.
	Layout fence.Layout
	// Watcher reports changes in the queue directories; nil: fsnotify.
	// The Mirror owns it: Run closes it when it returns.
	Watcher Watcher
	// Rand jitters retry delays; nil: seeded from the system.
	Rand fence.Rand
	// Gate is the runner gate's publisher: entries restored here raise
	// its cutoff to their birth, and HoldOlder reads its settling rule.
	// Nil: no gate (HoldOlder then holds every entry not in flight).
	Gate *GateFile
}

// Mirror mirrors one node's queue directories into the store. Create it
// with New, start Run, and call Reconcile: uploads start once the first
// Reconcile has told the mirror what the store already holds. All methods
// are safe for concurrent use.
type Mirror struct {
	cfg     Config
	st      store.Store
	fs      FS
	clock   fence.Clock
	gate    func() fence.Gate
	met     *Metrics
	log     *slog.Logger
	watcher Watcher
	rand    fence.Rand
	holdDir string
	ignored *nameSet
	dirSync *dirSyncer

	ready atomic.Bool

	mu         sync.Mutex
	index      map[fence.Entry]*entryState
	queues     map[string]*queueState
	candidates []*entryState
	reconciled bool
	ups        tracker
	upQueue    []*upload
	dels       tracker
	delQueue   []*delItem
	progress   chan struct{} // closed and replaced whenever work completes

	upWake  chan struct{}
	delWake chan struct{}
	// delRetry holds deletes whose batch failed: retried one by one on
	// their own, so that a key the store keeps locked (a MinIO server
	// killed mid-operation) holds up no other delete.
	delRetry  []*delItem
	retryWake chan struct{}
	scanWake  chan string // queue names that need a rescan
	// rescanWake asks for a full rescan.
	rescanWake chan struct{}
}

// New checks cfg, watches the queue directories and reads the hold area.
// gate is called before every upload and delete batch, never with the
// mirror's lock held, but often: it should be cheap. m may be nil
// (metrics not exported), log too (discarded).
func New(cfg Config, st store.Store, fsys FS, clock fence.Clock, gate func() fence.Gate, m *Metrics, log *slog.Logger) (*Mirror, error) {
	if !fence.ValidName(cfg.Node) {
		return nil, fmt.Errorf("mirror config: invalid node id %q", cfg.Node)
	}
	if cfg.QueueDir == "" || cfg.StateDir == "" {
		return nil, errors.New("mirror config: queue dir and state dir are required")
	}
	for _, q := range cfg.Queues {
		if !fence.ValidName(q) {
			return nil, fmt.Errorf("mirror config: invalid queue name %q", q)
		}
	}
	if cfg.UploadConcurrency <= 0 {
		cfg.UploadConcurrency = DefaultUploadConcurrency
	}
	if cfg.RescanInterval <= 0 {
		cfg.RescanInterval = DefaultRescanInterval
	}
	switch {
	case cfg.DeleteBatchDelay == 0:
		cfg.DeleteBatchDelay = DefaultDeleteBatchDelay
	case cfg.DeleteBatchDelay < 0:
		cfg.DeleteBatchDelay = 0
	}
	cfg.QueueDir = filepath.Clean(cfg.QueueDir)
	cfg.StateDir = filepath.Clean(cfg.StateDir)
	if m == nil {
		m = NewMetrics(nil)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Rand == nil {
		cfg.Rand = fence.NewSystemRand()
	}
	mr := &Mirror{
		cfg: cfg, st: st, fs: fsys, clock: clock, gate: gate, met: m, dirSync: newDirSyncer(fsys.SyncDir),
		log:        log.With("node", cfg.Node),
		rand:       cfg.Rand,
		holdDir:    filepath.Join(cfg.StateDir, "hold"),
		ignored:    newNameSet(4096),
		index:      make(map[fence.Entry]*entryState),
		queues:     make(map[string]*queueState),
		ups:        newTracker(),
		dels:       newTracker(),
		progress:   make(chan struct{}),
		upWake:     make(chan struct{}, 1),
		delWake:    make(chan struct{}, 1),
		retryWake:  make(chan struct{}, 1),
		scanWake:   make(chan string, 64),
		rescanWake: make(chan struct{}, 1),
	}
	ages := mr.pendingAges
	m.ages.Store(&ages)
	if err := fsys.MkdirAll(mr.holdDir, 0o750); err != nil {
		return nil, fmt.Errorf("create hold area: %w", err)
	}
	// Entries move between the queues and the hold area by rename.
	qfi, err := fsys.Lstat(cfg.QueueDir)
	if err != nil {
		return nil, fmt.Errorf("queue dir: %w", err)
	}
	hfi, err := fsys.Lstat(mr.holdDir)
	if err != nil {
		return nil, fmt.Errorf("hold area: %w", err)
	}
	if qfi.Dev != hfi.Dev {
		return nil, fmt.Errorf("mirror config: state dir %s is not on the filesystem of queue dir %s", cfg.StateDir, cfg.QueueDir)
	}
	mr.watcher = cfg.Watcher
	if mr.watcher == nil {
		w, err := NewFSNotifyWatcher()
		if err != nil {
			return nil, fmt.Errorf("watch queues: %w", err)
		}
		mr.watcher = w
	}
	if err := mr.watcher.Add(cfg.QueueDir); err != nil {
		mr.watcher.Close()
		return nil, fmt.Errorf("watch queue root: %w", err)
	}
	names := cfg.Queues
	if len(names) == 0 {
		found, err := mr.discoverQueues()
		if err != nil {
			mr.watcher.Close()
			return nil, err
		}
		names = found
	}
	mr.mu.Lock()
	for _, q := range names {
		mr.queueLocked(q).watched = true
	}
	mr.mu.Unlock()
	mr.watchQueues()
	if err := mr.scanHold(); err != nil {
		mr.watcher.Close()
		return nil, err
	}
	return mr, nil
}

// queueDir is the directory of queue q.
func (m *Mirror) queueDir(q string) string { return filepath.Join(m.cfg.QueueDir, q) }

// holdPath is where e is kept in the hold area.
func (m *Mirror) holdPath(e fence.Entry) string {
	return filepath.Join(m.holdDir, e.Queue, e.FileName())
}

// isQueueName reports whether a subdirectory of QueueDir named name is
// (or would be) a queue to mirror.
func (m *Mirror) isQueueName(name string) bool {
	if len(m.cfg.Queues) > 0 {
		for _, q := range m.cfg.Queues {
			if q == name {
				return true
			}
		}
		return false
	}
	return fence.ValidName(name) && !strings.HasPrefix(name, ".") &&
		filepath.Join(m.cfg.QueueDir, name) != m.cfg.StateDir
}

// discoverQueues lists QueueDir's subdirectories that are queues.
func (m *Mirror) discoverQueues() ([]string, error) {
	names, err := m.fs.ReadDir(m.cfg.QueueDir)
	if err != nil {
		return nil, fmt.Errorf("list queue root: %w", err)
	}
	var qs []string
	for _, n := range names {
		if !m.isQueueName(n) {
			continue
		}
		if fi, err := m.fs.Lstat(m.queueDir(n)); err == nil && fi.Mode.IsDir() {
			qs = append(qs, n)
		}
	}
	return qs, nil
}

// watchQueues adds a watch on every watched queue directory that exists.
func (m *Mirror) watchQueues() {
	m.mu.Lock()
	var dirs []*queueState
	for _, q := range m.queues {
		if q.watched {
			dirs = append(dirs, q)
		}
	}
	m.mu.Unlock()
	for _, q := range dirs {
		if err := m.watcher.Add(q.dir); err != nil && !isNotExist(err) {
			m.log.Warn("cannot watch queue directory", "queue", q.name, "err", err)
		}
	}
}

// Ready reports whether the first Reconcile is done.
func (m *Mirror) Ready() bool { return m.ready.Load() }

// pendingAges returns the ages of the oldest pending upload and delete.
func (m *Mirror) pendingAges() (up, del time.Duration) {
	now := m.clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if at, ok := m.ups.oldest(); ok {
		up = max(now.Sub(at), 0)
	}
	if at, ok := m.dels.oldest(); ok {
		del = max(now.Sub(at), 0)
	}
	return up, del
}

// notifyLocked wakes Flush waiters.
func (m *Mirror) notifyLocked() {
	close(m.progress)
	m.progress = make(chan struct{})
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Flush waits until every upload and delete queued before the call is
// done, or ctx ends. Uploads wait for an open gate, so Flush does too.
func (m *Mirror) Flush(ctx context.Context) error {
	m.mu.Lock()
	upTarget, delTarget := m.ups.next, m.dels.next
	for {
		if m.ups.low >= upTarget && m.dels.low >= delTarget {
			m.mu.Unlock()
			return nil
		}
		ch := m.progress
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("flush: %w", ctx.Err())
		}
		m.mu.Lock()
	}
}

// Rescan asks Run for a full rescan of the queue directories now, e.g.
// when a drain starts and every queued entry is to be held at once.
func (m *Mirror) Rescan() {
	select {
	case m.rescanWake <- struct{}{}:
	default:
	}
}

// Run watches the queue directories and runs the upload and delete
// workers until ctx ends. Uploads start after the first Reconcile.
func (m *Mirror) Run(ctx context.Context) error {
	defer m.watcher.Close()
	var wg sync.WaitGroup
	for i := 0; i < m.cfg.UploadConcurrency; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); m.uploadWorker(ctx) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); m.deleteWorker(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); m.retryWorker(ctx) }()
	defer wg.Wait()

	m.rescan("start")
	rescanTick := m.clock.After(m.cfg.RescanInterval)
	for {
		select {
		case <-ctx.Done():
			return nil
		case p := <-m.watcher.Events():
			m.handleEvent(p)
		case <-m.watcher.Overflow():
			m.log.Warn("watcher overflow: rescanning")
			m.rescan("overflow")
		case err := <-m.watcher.Errors():
			m.log.Warn("watcher error: rescanning", "err", err)
			m.rescan("watch_error")
		case q := <-m.scanWake:
			m.log.Info("new queue directory: rescanning", "queue", q)
			m.watchQueues()
			m.rescan("new_queue")
		case <-m.rescanWake:
			m.rescan("requested")
		case <-rescanTick:
			m.rescan("periodic")
			rescanTick = m.clock.After(m.cfg.RescanInterval)
		}
	}
}
