package runner

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// holdLocked moves st's Mailman-visible .pck (or .psv) into the hold
// area. It reports false, with no error, if the file is not there (a
// runner renamed it to .bak first: in flight).
func (m *Mirror) holdLocked(st *entryState) (bool, error) {
	ok, err := m.holdFileLocked(st, st.e.FileName())
	if ok {
		m.syncHoldLocked(st.e)
	}
	return ok, err
}

// syncHoldLocked makes a hold of e durable at once (the rare holds of the
// watcher: draining, fenced).
func (m *Mirror) syncHoldLocked(e fence.Entry) {
	for _, dir := range []string{filepath.Join(m.holdDir, e.Queue), m.queueDir(e.Queue)} {
		if err := m.fs.SyncDir(dir); err != nil {
			m.log.Warn("fsync directory", "queue", e.Queue, "dir", dir, "err", err)
		}
	}
}

// holdFileLocked moves the file name of st's queue directory into the
// hold area as st's entry (a .bak is held as its .pck). The caller makes
// the rename durable (fsync of both directories).
func (m *Mirror) holdFileLocked(st *entryState, name string) (bool, error) {
	e := st.e
	qdir := m.queueDir(e.Queue)
	src := filepath.Join(qdir, name)
	hdir := filepath.Join(m.holdDir, e.Queue)
	if err := m.fs.MkdirAll(hdir, 0o750); err != nil {
		return false, fmt.Errorf("hold %s: %w", e, err)
	}
	if _, err := m.fs.Lstat(src); isNotExist(err) {
		// Held by the watcher meanwhile, or renamed to .bak: in flight.
		return false, nil
	}
	dst := filepath.Join(hdir, e.FileName())
	if _, err := m.fs.Lstat(dst); err == nil {
		return false, fmt.Errorf("hold %s: %w", e, fs.ErrExist)
	}
	if err := m.fs.Rename(src, dst); err != nil {
		if isNotExist(err) {
			return false, nil
		}
		return false, fmt.Errorf("hold %s: %w", e, err)
	}
	if fi, err := m.fs.Lstat(dst); err == nil {
		st.seen, st.seenCtime = versionOf(fi), fi.Ctime.UnixNano()
	}
	if st.gone {
		st.gone, st.delQueued = false, false
	}
	m.setWhereLocked(st, locHeld)
	m.cancelUploadLocked(st)
	m.log.Debug("entry held", "queue", e.Queue, "entry", e.FileName(), "mirrored", st.durable != "")
	return true, nil
}

// Quarantine implements fence.Local: it moves Mailman-visible .pck files
// into the hold area, only those the store may know (mayBeStored: a
// durable copy, an upload past the gate, or one whose lost answer may
// have committed); a .pck that a runner renames to .bak first is in
// flight and left alone. With all true — only at start-up, after the node
// was declared dead while it was down and before Mailman's runners start,
// so that nothing can be in flight — it moves every entry: .pck, .bak
// (held as its .pck: Mailman's recovery would re-run it, but a peer may
// have taken it over) and .psv.
func (m *Mirror) Quarantine(ctx context.Context, all bool) ([]fence.Entry, error) {
	var moved []fence.Entry
	var errs []error
	// The renames are made durable once per directory at the end: they
	// take effect for the runners at once, and one fsync covers them all.
	defer func() {
		touched := make(map[string]bool)
		for _, e := range moved {
			touched[e.Queue] = true
		}
		for q := range touched {
			for _, dir := range []string{filepath.Join(m.holdDir, q), m.queueDir(q)} {
				if err := m.fs.SyncDir(dir); err != nil {
					m.log.Warn("fsync directory", "queue", q, "dir", dir, "err", err)
				}
			}
		}
	}()
	for _, q := range m.watchedQueues() {
		names, err := m.fs.ReadDir(m.queueDir(q))
		if err != nil {
			if !isNotExist(err) {
				errs = append(errs, fmt.Errorf("quarantine: list %s: %w", q, err))
			}
			continue
		}
		for _, name := range names {
			if err := ctx.Err(); err != nil {
				return moved, fmt.Errorf("quarantine: %w", err)
			}
			base, ext, ok := fence.ParseFileName(name)
			if !ok || ext != fence.ExtPck && !all {
				continue
			}
			if fi, err := m.fs.Lstat(filepath.Join(m.queueDir(q), name)); err != nil || !fi.Regular() {
				continue // gone, or a symlink or directory: not an entry
			}
			if ext == fence.ExtBak {
				if fi, err := m.fs.Lstat(filepath.Join(m.queueDir(q), base+".pck")); err == nil && fi.Regular() {
					continue // both: Mailman's recovery is mid-way; the .pck is held
				}
			}
			e := fence.Entry{Queue: q, Base: base, Kind: fence.KindOfExt(ext)}
			m.mu.Lock()
			st := m.index[e]
			known := st != nil && st.mayBeStored()
			if all || known {
				if st == nil {
					st = m.entryLocked(e)
				}
				ok, err := m.holdFileLocked(st, name)
				switch {
				case err != nil:
					errs = append(errs, fmt.Errorf("quarantine: %w", err))
				case ok:
					moved = append(moved, e)
				}
				m.forgetLocked(st)
			}
			m.mu.Unlock()
		}
	}
	if len(moved) > 0 {
		// Info: the coordinator's fence says at WARN when this is news
		// (not for a clean stop).
		m.log.Info("quarantined entries", "count", len(moved), "all", all)
	}
	return moved, errors.Join(errs...)
}

// Hold implements fence.Local: it moves e's Mailman-visible .pck into the
// hold area; false when e is not there as a .pck (a runner has it as a
// .bak, or it is gone).
func (m *Mirror) Hold(e fence.Entry) (bool, error) {
	if err := validEntry(e); err != nil {
		return false, fmt.Errorf("hold: %w", err)
	}
	if e.Kind != fence.KindPck {
		return false, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.entryLocked(e)
	ok, err := m.holdFileLocked(st, e.FileName())
	if ok {
		m.syncHoldLocked(e)
	} else if st.where == locNone {
		m.forgetLocked(st)
	}
	return ok, err
}

// HoldOlder implements fence.Local: the .pck and .psv files born no later
// than the runner gate's settling rule's start go to the hold area; the
// .bak files of that age are returned, untouched (a runner may hold them).
func (m *Mirror) HoldOlder(ctx context.Context) (held, inFlight []fence.Entry, err error) {
	before := time.Unix(1<<40, 0)
	if m.cfg.Gate != nil {
		if t, ok := m.cfg.Gate.HoldBefore(); ok {
			before = t
		}
	}
	var errs []error
	touched := make(map[string]bool)
	for _, q := range m.watchedQueues() {
		names, err := m.fs.ReadDir(m.queueDir(q))
		if err != nil {
			if !isNotExist(err) {
				errs = append(errs, fmt.Errorf("hold older: list %s: %w", q, err))
			}
			continue
		}
		for _, name := range names {
			if err := ctx.Err(); err != nil {
				return held, inFlight, fmt.Errorf("hold older: %w", err)
			}
			base, ext, ok := fence.ParseFileName(name)
			if !ok {
				continue
			}
			e := fence.Entry{Queue: q, Base: base, Kind: fence.KindOfExt(ext)}
			if e.Born().After(before) {
				continue
			}
			if ext == fence.ExtBak {
				inFlight = append(inFlight, e)
				continue
			}
			if fi, err := m.fs.Lstat(filepath.Join(m.queueDir(q), name)); err != nil || !fi.Regular() {
				continue
			}
			m.mu.Lock()
			st := m.entryLocked(e)
			ok, err := m.holdFileLocked(st, name)
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("hold older: %w", err))
			case ok:
				held = append(held, e)
				touched[q] = true
			}
			if st.where == locNone {
				m.forgetLocked(st)
			}
			m.mu.Unlock()
		}
	}
	for q := range touched {
		for _, dir := range []string{filepath.Join(m.holdDir, q), m.queueDir(q)} {
			if err := m.fs.SyncDir(dir); err != nil {
				m.log.Warn("fsync directory", "queue", q, "dir", dir, "err", err)
			}
		}
	}
	if len(held)+len(inFlight) > 0 {
		m.log.Warn("held entries older than the node's death", "held", len(held), "in_flight", len(inFlight))
	}
	return held, inFlight, errors.Join(errs...)
}
