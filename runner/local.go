package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"sort"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

var _ fence.Local = (*Mirror)(nil)

// Errors of the fence.Local methods; test with errors.Is.
var (
	// ErrGateClosed: Mirror or Release was called with the gate closed.
	ErrGateClosed = errors.New("gate closed")
	// ErrNotHeld: the entry is not in the hold area.
	ErrNotHeld = errors.New("entry not held")
	// ErrInvalidEntry: the entry's queue, base or kind is not valid.
	ErrInvalidEntry = errors.New("invalid entry")
)

// tmpSuffix ends the names of the mirror's temp files: never .pck or .bak.
const tmpSuffix = ".mmsidecar.tmp"

// fileMode is the mode of every file the mirror puts in a queue directory.
const fileMode fs.FileMode = 0o660

func validEntry(e fence.Entry) error {
	if !fence.ValidName(e.Queue) || !fence.ValidBase(e.Base) || e.Kind != fence.KindPck && e.Kind != fence.KindPsv {
		return fmt.Errorf("%w: %q", ErrInvalidEntry, e.String())
	}
	return nil
}

// Held implements fence.Local: the entries in the hold area, by queue and
// name.
func (m *Mirror) Held() []fence.Entry {
	m.mu.Lock()
	var out []fence.Entry
	for e, st := range m.index {
		if st.where == locHeld {
			out = append(out, e)
		}
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Queue != out[j].Queue {
			return out[i].Queue < out[j].Queue
		}
		return out[i].FileName() < out[j].FileName()
	})
	return out
}

// Stage implements fence.Local: it writes data for e into the hold area
// (temp file, fsync, rename, fsync of the directory). If the node already
// holds e anywhere (a takeover resumed after a crash) it does nothing: the
// local file is never replaced.
func (m *Mirror) Stage(e fence.Entry, data []byte) error {
	if err := validEntry(e); err != nil {
		return fmt.Errorf("stage: %w", err)
	}
	here := func() (bool, error) {
		l, _, err := m.locate(e)
		if err != nil {
			return false, fmt.Errorf("stage %s: %w", e, err)
		}
		if l != locNone {
			m.log.Debug("stage: entry already here", "queue", e.Queue, "entry", e.FileName(), "where", l.String())
		}
		return l != locNone, nil
	}
	m.mu.Lock()
	found, err := here()
	m.mu.Unlock()
	if err != nil || found {
		return err
	}
	// The file is written and synced without the mirror's lock, so that
	// parallel takeovers overlap their disk writes.
	dir := filepath.Join(m.holdDir, e.Queue)
	if err := m.fs.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("stage %s: %w", e, err)
	}
	tmp := filepath.Join(dir, "."+e.Base+tmpSuffix)
	if err := m.fs.Remove(tmp); err != nil && !isNotExist(err) {
		return fmt.Errorf("stage %s: remove old temp file: %w", e, err)
	}
	if err := m.fs.WriteTemp(dir, filepath.Base(tmp), data, m.cfg.UID, m.cfg.GID, fileMode); err != nil {
		return fmt.Errorf("stage %s: %w", e, err)
	}
	m.mu.Lock()
	if found, err := here(); err != nil || found {
		m.mu.Unlock()
		m.fs.Remove(tmp)
		return err
	}
	dst := filepath.Join(dir, e.FileName())
	if err := m.fs.Rename(tmp, dst); err != nil {
		m.mu.Unlock()
		m.fs.Remove(tmp)
		return fmt.Errorf("stage %s: %w", e, err)
	}
	fi, err := m.fs.Lstat(dst)
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("stage %s: %w", e, err)
	}
	st := m.entryLocked(e)
	st.gone, st.delQueued = false, false
	st.seen, st.seenCtime = versionOf(fi), fi.Ctime.UnixNano()
	m.setWhereLocked(st, locHeld)
	m.mu.Unlock()
	if err := m.dirSync.Sync(dir); err != nil {
		return fmt.Errorf("stage %s: fsync hold directory: %w", e, err)
	}
	return nil
}

// Mirror implements fence.Local: it makes the held entry e durable under
// the gate's epoch (unless that copy exists already) and returns the key.
// Transient store errors are retried with backoff until ctx ends. An older
// copy of the node (epoch >= OwnFrom) is deleted afterwards.
func (m *Mirror) Mirror(ctx context.Context, e fence.Entry) (string, error) {
	g := m.gate()
	if !g.Writable {
		return "", fmt.Errorf("mirror %s: %w", e, ErrGateClosed)
	}
	key := m.cfg.Layout.MirrorKey(m.cfg.Node, g.Epoch, e)
	bo := backoff{r: m.rand}
	for {
		m.mu.Lock()
		st := m.index[e]
		if st == nil || st.where != locHeld {
			m.mu.Unlock()
			return "", fmt.Errorf("mirror %s: %w", e, ErrNotHeld)
		}
		if hasOwnCopy(st, g) && st.durVer == st.seen && !st.delQueued {
			// A copy of this node's that no takeover can claim is
			// as good as a new one.
			own := st.durable
			m.mu.Unlock()
			return own, nil
		}
		m.mu.Unlock()
		err := m.putHeld(ctx, e, key, g.Epoch)
		if err == nil {
			return key, nil
		}
		if errors.Is(err, ErrNotHeld) || store.KindOf(err) != store.KindTransient {
			return "", fmt.Errorf("mirror %s: %w", e, err)
		}
		if !m.sleep(ctx, bo.next()) {
			return "", fmt.Errorf("mirror %s: %w (last error: %v)", e, ctx.Err(), err)
		}
	}
}

// putHeld uploads the held file of e under key once.
func (m *Mirror) putHeld(ctx context.Context, e fence.Entry, key string, epoch uint64) error {
	f, err := m.fs.Open(m.holdPath(e))
	if err != nil {
		if isNotExist(err) {
			return ErrNotHeld
		}
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Regular() {
		return ErrNotHeld
	}
	if _, err := m.st.Put(ctx, key, io.NewSectionReader(f, 0, fi.Size), fi.Size, store.Condition{}); err != nil {
		// It may have committed all the same (a timeout, a fence that
		// cancelled it on the wire): remembered, that copy is deleted
		// once the entry is finished, even if it is mirrored again under
		// a later epoch first.
		m.mu.Lock()
		if st := m.index[e]; st != nil {
			st.mayHaveCommitted(key)
		}
		m.mu.Unlock()
		m.met.UploadErrors.WithLabelValues(store.CodeOf(err)).Inc()
		m.log.Warn("upload of held entry failed", "queue", e.Queue, "entry", e.FileName(), "epoch", epoch, "code", store.CodeOf(err), "err", err)
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.met.Uploads.Inc()
	m.met.UploadBytes.Add(float64(fi.Size))
	m.queueLocked(e.Queue).lastMirror = m.clock.Now()
	if st := m.index[e]; st != nil {
		old := st.durable
		st.durable, st.durEpoch, st.durVer, st.delQueued = key, epoch, versionOf(fi), false
		if old != "" && old != key {
			m.queueDeleteLocked(delCleanup, old, e, 0)
		}
	}
	m.log.Debug("held entry mirrored", "queue", e.Queue, "entry", e.FileName(), "epoch", epoch)
	return nil
}

// Release implements fence.Local: it mirrors the held entry e, gives it
// Mailman's owner and mode 0660 and renames it into its queue directory
// (as <base>.pck, or <base>.psv for a preserved entry). The mirror knows
// the file is mirrored and does not upload it again. An entry that is
// already visible (a resumed takeover, or one in flight since before a
// fence) is left where it is, once it has a copy under this node's current
// namespace: the caller deletes the copy it came from next.
func (m *Mirror) Release(ctx context.Context, e fence.Entry) error {
	if err := validEntry(e); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	m.mu.Lock()
	if st := m.index[e]; st != nil && st.where != locHeld && st.where != locNone {
		return m.awaitOwnCopyLocked(ctx, e) // unlocks
	}
	m.mu.Unlock()
	if _, err := m.Mirror(ctx, e); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	if m.cfg.Gate != nil {
		// Born on a peer whose clock may be ahead: the runner gate's
		// cutoff must cover it before it is visible.
		if err := m.cfg.Gate.Cover(e.Born()); err != nil {
			return fmt.Errorf("release %s: %w", e, err)
		}
	}
	if err := m.releaseRename(ctx, e); err != nil {
		return err
	}
	// Durable once both directories are synced, with group commit: the
	// renames of parallel takeovers share their fsyncs.
	for _, dir := range []string{m.queueDir(e.Queue), filepath.Join(m.holdDir, e.Queue)} {
		if err := m.dirSync.Sync(dir); err != nil {
			m.log.Warn("fsync directory", "queue", e.Queue, "dir", dir, "err", err)
		}
	}
	return nil
}

// releaseRename moves the held entry e into its queue directory.
func (m *Mirror) releaseRename(ctx context.Context, e fence.Entry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.index[e]
	if st == nil || st.where != locHeld {
		return fmt.Errorf("release %s: %w", e, ErrNotHeld)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("release %s: %w", e, err)
	}
	qdir := m.queueDir(e.Queue)
	if fi, err := m.fs.Lstat(qdir); err != nil || !fi.Mode.IsDir() {
		if err := m.fs.MkdirAll(qdir, 0o770); err != nil {
			return fmt.Errorf("release %s: create queue directory: %w", e, err)
		}
		if err := m.fs.Chown(qdir, m.cfg.UID, m.cfg.GID); err != nil {
			return fmt.Errorf("release %s: chown queue directory: %w", e, err)
		}
	}
	dst := filepath.Join(qdir, e.FileName())
	others := []string{dst}
	if e.Kind == fence.KindPck {
		others = append(others, filepath.Join(qdir, e.Base+".bak"))
	}
	for _, p := range others {
		if _, err := m.fs.Lstat(p); err == nil {
			return fmt.Errorf("release %s: %s exists: %w", e, filepath.Base(p), fs.ErrExist)
		}
	}
	src := m.holdPath(e)
	if err := m.fs.Chown(src, m.cfg.UID, m.cfg.GID); err != nil {
		return fmt.Errorf("release %s: chown: %w", e, err)
	}
	if err := m.fs.Chmod(src, fileMode); err != nil {
		return fmt.Errorf("release %s: chmod: %w", e, err)
	}
	if err := m.fs.Rename(src, dst); err != nil {
		return fmt.Errorf("release %s: %w", e, err)
	}
	if fi, err := m.fs.Lstat(dst); err == nil {
		st.seen, st.seenCtime = versionOf(fi), fi.Ctime.UnixNano()
	}
	l := locPck
	if e.Kind == fence.KindPsv {
		l = locPsv
	}
	m.setWhereLocked(st, l)
	if q := m.queueLocked(e.Queue); !q.watched {
		q.watched = true
		select {
		case m.scanWake <- e.Queue:
		default:
		}
	}
	m.log.Debug("entry released", "queue", e.Queue, "entry", e.FileName(), "epoch", st.durEpoch)
	return nil
}

// Drop implements fence.Local: it deletes the held file of e and forgets
// the entry, leaving its store copy for the peer that takes it over.
func (m *Mirror) Drop(e fence.Entry) error {
	if err := validEntry(e); err != nil {
		return fmt.Errorf("drop: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	path := m.holdPath(e)
	if err := m.fs.Remove(path); err != nil && !isNotExist(err) {
		return fmt.Errorf("drop %s: %w", e, err)
	}
	if err := m.fs.SyncDir(filepath.Dir(path)); err != nil && !isNotExist(err) {
		m.log.Warn("fsync hold directory", "queue", e.Queue, "err", err)
	}
	if st := m.index[e]; st != nil && st.where == locHeld {
		m.cancelUploadLocked(st)
		m.setWhereLocked(st, locNone)
		delete(m.index, e)
	}
	m.log.Debug("held entry dropped", "queue", e.Queue, "entry", e.FileName())
	return nil
}

// Has implements fence.Local: whether e is in its queue directory (.pck,
// .bak or .psv) or in the hold area.
func (m *Mirror) Has(e fence.Entry) bool {
	if validEntry(e) != nil {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	l, _, err := m.locate(e)
	return err == nil && l != locNone
}

// Counts implements fence.Local.
func (m *Mirror) Counts() fence.Counts {
	m.mu.Lock()
	defer m.mu.Unlock()
	var c fence.Counts
	for _, st := range m.index {
		switch st.where {
		case locPck:
			c.Pck++
		case locBak:
			c.Bak++
		case locHeld:
			c.Held++
		case locNone:
			continue
		}
		if st.durable == "" {
			c.Unmirrored++
		}
	}
	return c
}

// awaitOwnCopyLocked waits until the visible entry e has a copy at an
// epoch that is still this node's, uploading it if needed, or until
// Mailman has finished it. It is called with m.mu held and releases it.
func (m *Mirror) awaitOwnCopyLocked(ctx context.Context, e fence.Entry) error {
	m.mu.Unlock()
	for {
		g := m.gate() // never with m.mu held
		if !g.Writable {
			return fmt.Errorf("release %s: %w", e, ErrGateClosed)
		}
		m.mu.Lock()
		st := m.index[e]
		switch {
		case st == nil || st.where == locNone || st.gone:
			m.mu.Unlock()
			return nil // finished meanwhile: nothing left to keep
		case st.where == locHeld:
			m.mu.Unlock()
			return fmt.Errorf("release %s: held again meanwhile: %w", e, ErrNotHeld)
		case hasOwnCopy(st, g) && st.up == nil:
			m.mu.Unlock()
			return nil
		case st.up == nil:
			m.requestUploadLocked(st)
		}
		ch := m.progress
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("release %s: %w", e, ctx.Err())
		}
	}
}
