package runner

import (
	"context"
	"io"
	"path/filepath"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// requestUploadLocked queues an upload of st, or asks for another one
// after the running one. Before the first Reconcile nothing is queued:
// Reconcile knows which entries the store already has.
func (m *Mirror) requestUploadLocked(st *entryState) {
	if !m.reconciled || st.where == locHeld || st.where == locNone {
		return
	}
	if st.up != nil {
		st.again = true
		return
	}
	u := &upload{seq: m.ups.add(m.clock.Now()), st: st}
	if st.seenCtime != 0 {
		u.since = time.Unix(0, st.seenCtime)
	}
	st.up = u
	m.upQueue = append(m.upQueue, u)
	m.met.UploadsPending.Set(float64(m.ups.pending()))
	signal(m.upWake)
}

// cancelUploadLocked withdraws st's upload if it has not passed the gate
// yet (the entry went to the hold area, which the coordinator manages).
func (m *Mirror) cancelUploadLocked(st *entryState) {
	u := st.up
	st.again = false
	if u == nil || u.started {
		return
	}
	u.canceled = true
	st.up = nil
	m.resolveUploadLocked(u)
}

// resolveUploadLocked takes u out of the ordering of deletes.
func (m *Mirror) resolveUploadLocked(u *upload) {
	if m.ups.done(u.seq) {
		signal(m.delWake)
	}
	m.met.UploadsPending.Set(float64(m.ups.pending()))
	m.notifyLocked()
}

// finishUploadLocked records the end of u: with ok, its copy under key
// is durable and holds version v of the file.
func (m *Mirror) finishUploadLocked(u *upload, key string, epoch uint64, v version, ok bool) {
	st := u.st
	if ok {
		old := st.durable
		st.durable, st.durEpoch, st.durVer = key, epoch, v
		if old != "" && old != key {
			m.queueDeleteLocked(delCleanup, old, st.e, 0)
		}
		for _, k := range st.maybe {
			if k != key && k != old {
				m.queueDeleteLocked(delCleanup, k, st.e, 0)
			}
		}
		st.maybe = nil
	}
	if st.up == u {
		st.up = nil
	}
	m.resolveUploadLocked(u)
	if st.gone {
		m.settleGoneLocked(st)
		return
	}
	if st.again {
		st.again = false
		if (st.where == locPck || st.where == locPsv) && st.seen != st.durVer {
			m.requestUploadLocked(st)
		}
	}
}

// uploadWorker runs queued uploads until ctx ends.
func (m *Mirror) uploadWorker(ctx context.Context) {
	for {
		m.mu.Lock()
		var u *upload
		for len(m.upQueue) > 0 && u == nil {
			u = m.upQueue[0]
			m.upQueue[0] = nil
			m.upQueue = m.upQueue[1:]
			if u.canceled {
				u = nil
			}
		}
		more := len(m.upQueue) > 0
		m.mu.Unlock()
		if u == nil {
			select {
			case <-m.upWake:
				continue
			case <-ctx.Done():
				return
			}
		}
		if more {
			signal(m.upWake)
		}
		m.runUpload(ctx, u)
	}
}

// runUpload writes u's entry into the store, waiting for an open gate and
// retrying store failures with backoff until it is durable, the file is
// gone, or ctx ends.
func (m *Mirror) runUpload(ctx context.Context, u *upload) {
	bo := backoff{r: m.rand}
	for {
		m.mu.Lock()
		if u.canceled {
			m.mu.Unlock()
			return
		}
		u.started = true
		m.mu.Unlock()
		// Marked started before the gate is read: a Quarantine that runs
		// after the gate closed sees this upload as possibly in the store.
		g := m.gate()
		if !g.Writable {
			m.mu.Lock()
			u.started = false
			m.mu.Unlock()
			if !m.sleep(ctx, gatePoll) {
				return
			}
			continue
		}
		if !m.putOnce(ctx, u, g) {
			return
		}
		if !m.sleep(ctx, bo.next()) {
			return
		}
	}
}

// putOnce makes one attempt at u and reports whether to retry.
func (m *Mirror) putOnce(ctx context.Context, u *upload, g fence.Gate) (retry bool) {
	e := u.st.e
	f, fi, err := m.openEntry(e)
	if err != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		if !isNotExist(err) {
			m.noteOnce(reasonUnreadable, e.Queue, e.FileName(), err)
		}
		m.finishUploadLocked(u, "", 0, version{}, false)
		return false
	}
	defer f.Close()
	v := versionOf(fi)
	key := m.cfg.Layout.MirrorKey(m.cfg.Node, g.Epoch, e)
	m.mu.Lock()
	if u.st.durable == key && u.st.durVer == v && !u.st.delQueued {
		m.finishUploadLocked(u, key, g.Epoch, v, true)
		m.mu.Unlock()
		return false
	}
	m.mu.Unlock()
	// Bound to the epoch: minio-go retries a request whose connection
	// failed, and in a partition such a retry would commit once the
	// network heals, long after the fence and the peers' takeover.
	pctx, cancel := g.Bind(ctx)
	defer cancel()
	_, err = m.st.Put(pctx, key, io.NewSectionReader(f, 0, fi.Size), fi.Size, store.Condition{})
	if err != nil {
		m.mu.Lock()
		u.st.mayHaveCommitted(key)
		m.mu.Unlock()
		if ctx.Err() != nil {
			return true
		}
		if pctx.Err() != nil {
			m.log.Info("upload abandoned at the fence; it runs again once the node is back", "queue", e.Queue, "entry", e.FileName(), "epoch", g.Epoch)
			return true
		}
		code := store.CodeOf(err)
		m.met.UploadErrors.WithLabelValues(code).Inc()
		m.log.Warn("upload failed; retrying", "queue", e.Queue, "entry", e.FileName(), "epoch", g.Epoch, "code", code, "err", err)
		return true
	}
	now := m.clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.met.Uploads.Inc()
	m.met.UploadBytes.Add(float64(fi.Size))
	if !u.since.IsZero() {
		m.met.Lag.Observe(max(now.Sub(u.since).Seconds(), 0))
	}
	m.queueLocked(e.Queue).lastMirror = now
	m.log.Debug("mirrored", "queue", e.Queue, "entry", e.FileName(), "epoch", g.Epoch, "bytes", fi.Size)
	m.forgetNote(reasonUnreadable, e.Queue, e.FileName())
	m.finishUploadLocked(u, key, g.Epoch, v, true)
	return false
}

// openEntry opens e's file in its queue directory: for a queued entry the
// .pck, or the .bak if a runner has renamed it since. Only regular files
// are opened; anything else counts as missing.
func (m *Mirror) openEntry(e fence.Entry) (File, FileStat, error) {
	dir := m.queueDir(e.Queue)
	names := []string{e.Base + ".psv"}
	if e.Kind == fence.KindPck {
		names = []string{e.Base + ".pck", e.Base + ".bak"}
	}
	var lastErr error
	for _, n := range names {
		f, err := m.fs.Open(filepath.Join(dir, n))
		if err != nil {
			lastErr = err
			if isNotExist(err) {
				continue
			}
			return nil, FileStat{}, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, FileStat{}, err
		}
		if !fi.Regular() {
			f.Close()
			lastErr = errNotRegular
			continue
		}
		return f, fi, nil
	}
	return nil, FileStat{}, lastErr
}

// sleep waits d on the mirror's clock and reports false if ctx ended.
func (m *Mirror) sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-m.clock.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

// backoff is a capped, jittered exponential delay.
type backoff struct {
	d time.Duration
	r fence.Rand
}

// next returns the next delay: doubling from backoffMin to backoffMax,
// each drawn from [d/2, d].
func (b *backoff) next() time.Duration {
	if b.d == 0 {
		b.d = backoffMin
	} else {
		b.d = min(2*b.d, backoffMax)
	}
	half := b.d / 2
	return half + time.Duration(b.r.Uint64()%uint64(half+1))
}
