package runner

import (
	"context"
	"sync"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// delKind says why a copy is deleted.
type delKind uint8

const (
	// delFinished: the entry is finished locally. Runs once every upload
	// queued before the entry was seen gone is done (barrier), so that
	// its successor is in the store first. Needs no open gate.
	delFinished delKind = iota + 1
	// delCleanup: an older copy of a live entry that has a newer one.
	// Left alone if its epoch is below the gate's OwnFrom (a peer's
	// takeover owns it).
	delCleanup
)

// maxDeleteBatch is the most keys passed to one DeleteMany.
const maxDeleteBatch = 1000

// delItem is one queued delete.
type delItem struct {
	seq     uint64
	kind    delKind
	key     string
	e       fence.Entry
	barrier uint64
}

// queueDeleteLocked queues the delete of key, a copy of e.
func (m *Mirror) queueDeleteLocked(kind delKind, key string, e fence.Entry, barrier uint64) {
	m.delQueue = append(m.delQueue, &delItem{seq: m.dels.add(m.clock.Now()), kind: kind, key: key, e: e, barrier: barrier})
	m.met.DeletesPending.Set(float64(m.dels.pending()))
	signal(m.delWake)
}

// deleteWorker confirms finished entries and deletes their copies in
// batches until ctx ends. A batch goes at once when none went within the
// last DeleteBatchDelay, and otherwise that long after the last one: an
// idle node deletes a finished entry's copy within a request's time, a
// busy one sends at most one batch per DeleteBatchDelay.
func (m *Mirror) deleteWorker(ctx context.Context) {
	var last time.Time // when the last batch was gathered
	var retry <-chan time.Time
	for {
		select {
		case <-m.delWake:
		case <-retry:
			retry = nil
		case <-ctx.Done():
			return
		}
		if !last.IsZero() {
			if wait := m.cfg.DeleteBatchDelay - m.clock.Now().Sub(last); wait > 0 && !m.sleep(ctx, wait) {
				return
			}
		}
		began := m.clock.Now()
		if m.confirmGone() && retry == nil {
			retry = m.clock.After(m.cfg.DeleteBatchDelay)
		}
		if !m.awaitBarriers(ctx, m.cfg.DeleteBatchDelay) {
			return
		}
		batch := m.takeDeletes()
		if len(batch) == 0 {
			continue
		}
		last = began
		if !m.runDeletes(ctx, batch) {
			return
		}
		signal(m.delWake) // more may be due
	}
}

// awaitBarriers waits, at most d, until the uploads that the queued
// deletes of finished entries wait for are done: usually no longer than
// an upload takes, since confirmGone queues them behind the uploads in
// flight. It reports false if ctx ended.
func (m *Mirror) awaitBarriers(ctx context.Context, d time.Duration) bool {
	m.mu.Lock()
	need := uint64(0)
	for _, it := range m.delQueue {
		if it.kind == delFinished {
			need = max(need, it.barrier)
		}
	}
	if m.ups.low >= need {
		m.mu.Unlock()
		return true
	}
	m.mu.Unlock()
	timeout := m.clock.After(d)
	for {
		m.mu.Lock()
		ch, reached := m.progress, m.ups.low >= need
		m.mu.Unlock()
		if reached {
			return true
		}
		select {
		case <-ch:
		case <-timeout:
			return true
		case <-ctx.Done():
			return false
		}
	}
}

// takeDeletes removes the due deletes from the queue and settles those
// that are no longer wanted.
func (m *Mirror) takeDeletes() []*delItem {
	g := m.gate()
	m.mu.Lock()
	defer m.mu.Unlock()
	var batch []*delItem
	rest := make([]*delItem, 0, len(m.delQueue))
	for _, it := range m.delQueue {
		if len(batch) >= maxDeleteBatch || it.kind == delFinished && it.barrier > m.ups.low {
			rest = append(rest, it)
			continue
		}
		if m.unwantedLocked(it, g) {
			m.dels.done(it.seq)
			continue
		}
		batch = append(batch, it)
	}
	m.delQueue = rest
	m.met.DeletesPending.Set(float64(m.dels.pending()))
	m.notifyLocked()
	return batch
}

// unwantedLocked reports whether a queued delete must not run anymore.
func (m *Mirror) unwantedLocked(it *delItem, g fence.Gate) bool {
	cur := m.index[it.e]
	switch it.kind {
	case delFinished:
		// The entry is back (restored or released): keep its copy.
		return cur != nil && !cur.gone && (cur.durable == it.key || cur.up != nil)
	default:
		if cur != nil && cur.durable == it.key {
			return true
		}
		ref, ok := m.cfg.Layout.ParseMirrorKey(it.key)
		return !ok || ref.Epoch < g.OwnFrom
	}
}

// runDeletes deletes batch in one request. If that fails, the batch
// moves to the retry lane (retryWorker) and the worker goes on with the
// next one. It reports false if ctx ended.
func (m *Mirror) runDeletes(ctx context.Context, batch []*delItem) bool {
	keys := make([]string, len(batch))
	for i, it := range batch {
		keys[i] = it.key
	}
	if err := m.st.DeleteMany(ctx, keys); err != nil {
		if ctx.Err() != nil {
			return false
		}
		code := store.CodeOf(err)
		m.met.DeleteErrors.WithLabelValues(code).Inc()
		m.log.Warn("delete failed; retrying each key on its own", "keys", len(keys), "first", keys[0], "code", code, "err", err)
		m.mu.Lock()
		m.delRetry = append(m.delRetry, batch...)
		m.mu.Unlock()
		signal(m.retryWake)
		return true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.deletedLocked(batch)
	m.log.Debug("deleted copies of finished entries", "count", len(batch), "first", keys[0])
	return true
}

// retryWorker retries failed deletes one key at a time, with backoff
// after a pass in which any failed, until each succeeds or ctx ends.
func (m *Mirror) retryWorker(ctx context.Context) {
	bo := backoff{r: m.rand}
	for {
		m.mu.Lock()
		items := m.delRetry
		m.delRetry = nil
		m.mu.Unlock()
		if len(items) == 0 {
			select {
			case <-m.retryWake:
				continue
			case <-ctx.Done():
				return
			}
		}
		failed, lastErr := m.retryDeletes(ctx, items)
		if ctx.Err() != nil {
			return
		}
		if len(failed) == 0 {
			bo = backoff{r: m.rand}
			continue
		}
		m.log.Warn("deletes failed; retrying", "keys", len(failed), "first", failed[0].key, "code", store.CodeOf(lastErr), "err", lastErr)
		m.mu.Lock()
		m.delRetry = append(failed, m.delRetry...)
		m.mu.Unlock()
		if !m.sleep(ctx, bo.next()) {
			return
		}
	}
}

// retryConcurrency is how many single-key deletes the retry lane has
// under way at once: after a store incident some keys can stay locked
// for a minute, each try of them waiting out the request timeout, and
// the others should not queue behind them.
const retryConcurrency = 8

// retryDeletes deletes each item's key on its own, retryConcurrency at a
// time, and returns the items that failed with the last error.
func (m *Mirror) retryDeletes(ctx context.Context, items []*delItem) (failed []*delItem, lastErr error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, retryConcurrency)
	for _, it := range items {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return failed, ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			err := m.st.DeleteMany(ctx, []string{it.key})
			if err != nil {
				if ctx.Err() == nil {
					m.met.DeleteErrors.WithLabelValues(store.CodeOf(err)).Inc()
				}
				mu.Lock()
				failed, lastErr = append(failed, it), err
				mu.Unlock()
				return
			}
			m.mu.Lock()
			m.deletedLocked([]*delItem{it})
			m.mu.Unlock()
		}()
	}
	wg.Wait()
	return failed, lastErr
}

// deletedLocked records that the copies of batch are deleted.
func (m *Mirror) deletedLocked(batch []*delItem) {
	m.met.Deletes.Add(float64(len(batch)))
	for _, it := range batch {
		m.dels.done(it.seq)
		cur := m.index[it.e]
		if cur == nil || cur.durable != it.key {
			continue
		}
		// The copy we know of is gone now.
		cur.durable, cur.durVer, cur.delQueued = "", version{}, false
		if cur.gone {
			m.forgetLocked(cur)
			continue
		}
		// The entry came back while its copy was being deleted.
		m.log.Info("entry came back while its copy was deleted: uploading again", "queue", it.e.Queue, "entry", it.e.FileName())
		m.requestUploadLocked(cur)
	}
	m.met.DeletesPending.Set(float64(m.dels.pending()))
	m.notifyLocked()
}
