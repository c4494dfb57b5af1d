package runner

import (
	"path/filepath"
	"strings"

	"github.com/mmsidecar/mmsidecar/fence"
)

// handleEvent acts on a watcher event for path. It never trusts what the
// event says happened: it looks at the files.
func (m *Mirror) handleEvent(path string) {
	dir, name := filepath.Split(path)
	dir = filepath.Clean(dir)
	if dir == m.cfg.QueueDir {
		m.rootEvent(name)
		return
	}
	if filepath.Dir(dir) != m.cfg.QueueDir {
		return
	}
	queue := filepath.Base(dir)
	m.mu.Lock()
	q := m.queues[queue]
	watched := q != nil && q.watched
	m.mu.Unlock()
	if !watched {
		return
	}
	base, ext, ok := fence.ParseFileName(name)
	if !ok {
		// Temp files come and go with every enqueue; a rescan notes
		// those that linger.
		if !strings.HasSuffix(name, ".tmp") {
			m.noteOnce(reasonBadName, queue, name, nil)
		}
		return
	}
	m.observe(fence.Entry{Queue: queue, Base: base, Kind: fence.KindOfExt(ext)}, m.gate(), false)
}

// rootEvent handles a change in QueueDir itself: a queue directory may
// have appeared (or been recreated, losing its watch).
func (m *Mirror) rootEvent(name string) {
	if !m.isQueueName(name) {
		return
	}
	fi, err := m.fs.Lstat(m.queueDir(name))
	if err != nil || !fi.Mode.IsDir() {
		return
	}
	m.mu.Lock()
	q := m.queueLocked(name)
	known := q.watched && q.ino == fi.Ino
	q.watched, q.ino = true, fi.Ino
	m.mu.Unlock()
	if known {
		return
	}
	m.log.Info("queue directory appeared: rescanning", "queue", name)
	m.rescan("new_queue")
}

// locate finds e on disk: in its queue directory, else in the hold area.
// Files of the wrong type (directories, symlinks, fifos) do not count.
func (m *Mirror) locate(e fence.Entry) (loc, FileStat, error) {
	dir := m.queueDir(e.Queue)
	type cand struct {
		path string
		l    loc
	}
	var cands [3]cand
	n := 0
	if e.Kind == fence.KindPsv {
		cands[0] = cand{filepath.Join(dir, e.Base+".psv"), locPsv}
		n = 1
	} else {
		cands[0] = cand{filepath.Join(dir, e.Base+".pck"), locPck}
		cands[1] = cand{filepath.Join(dir, e.Base+".bak"), locBak}
		n = 2
	}
	cands[n] = cand{m.holdPath(e), locHeld}
	n++
	for _, c := range cands[:n] {
		fi, err := m.fs.Lstat(c.path)
		if err != nil {
			if isNotExist(err) {
				continue
			}
			return locNone, FileStat{}, err
		}
		if !fi.Regular() {
			m.noteOnce(reasonNotRegular, e.Queue, filepath.Base(c.path), nil)
			continue
		}
		return c.l, fi, nil
	}
	return locNone, FileStat{}, nil
}

// observe looks at e's files and brings the index and the work queues in
// line with what is there.
func (m *Mirror) observe(e fence.Entry, g fence.Gate, full bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.observeLocked(e, g, full)
}

// observeLocked is observe with m.mu held. full marks a rescan, which
// also retries entries that have no copy and no upload (unreadable ones).
func (m *Mirror) observeLocked(e fence.Entry, g fence.Gate, full bool) {
	l, fi, err := m.locate(e)
	if err != nil {
		m.log.Warn("cannot stat queue entry", "queue", e.Queue, "entry", e.FileName(), "err", err)
		return
	}
	st := m.index[e]
	if l == locNone {
		if st == nil || st.gone || st.where == locNone {
			return
		}
		if !st.candidate {
			st.candidate = true
			m.candidates = append(m.candidates, st)
			signal(m.delWake)
		}
		return
	}
	st = m.entryLocked(e)
	if st.gone {
		st.gone, st.delQueued = false, false
	}
	v := versionOf(fi)
	st.seenCtime = fi.Ctime.UnixNano()
	switch l {
	case locHeld:
		m.setWhereLocked(st, locHeld)
		st.seen = v
		m.cancelUploadLocked(st)
	case locBak:
		m.setWhereLocked(st, locBak)
		st.seen = v
		if !hasOwnCopy(st, g) && st.up == nil {
			m.requestUploadLocked(st)
		}
	case locPck, locPsv:
		changed := st.where != l || st.seen != v
		m.setWhereLocked(st, l)
		st.seen = v
		// While draining every .pck is held for handoff; while fenced,
		// every .pck the store may know as this node's (Mailman's .bak
		// recovery can bring one back) is held until the node settles.
		// With the runner gate guarding the runners, the closed gate
		// keeps them from such entries where they are.
		fenced := !g.Writable && !g.Guarded && g.Epoch > 0 && st.mayBeStored()
		if l == locPck && (g.Draining || fenced) || l == locPsv && g.Draining {
			if _, err := m.holdLocked(st); err != nil {
				m.log.Error("cannot hold entry while draining", "queue", e.Queue, "entry", e.FileName(), "err", err)
			}
			return
		}
		if fi.Size == 0 {
			m.noteOnce(reasonEmpty, e.Queue, e.FileName(), nil)
		}
		if changed && st.durVer != v || full && !hasOwnCopy(st, g) && st.up == nil {
			m.requestUploadLocked(st)
		}
	}
}

// hasOwnCopy reports whether st has a durable copy that is still the
// node's own (not below the gate's OwnFrom, i.e. not a peer's takeover).
func hasOwnCopy(st *entryState, g fence.Gate) bool {
	return st.durable != "" && st.durEpoch >= g.OwnFrom
}

// watchedQueues returns the names of the watched queues.
func (m *Mirror) watchedQueues() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var qs []string
	for _, q := range m.queues {
		if q.watched {
			qs = append(qs, q.name)
		}
	}
	return qs
}

// rescan lists every queue directory, acts on every entry there and on
// every indexed entry that is not, then confirms the missing ones gone.
func (m *Mirror) rescan(reason string) {
	defer m.met.Rescans.WithLabelValues(reason).Inc()
	if len(m.cfg.Queues) == 0 {
		if found, err := m.discoverQueues(); err == nil {
			m.mu.Lock()
			for _, q := range found {
				m.queueLocked(q).watched = true
			}
			m.mu.Unlock()
		}
	}
	m.watchQueues()
	g := m.gate()
	seen := make(map[fence.Entry]bool)
	listed := make(map[string]bool)
	for _, q := range m.watchedQueues() {
		names, err := m.fs.ReadDir(m.queueDir(q))
		if err != nil && !isNotExist(err) {
			m.log.Warn("cannot list queue directory", "queue", q, "err", err)
			continue
		}
		listed[q] = true
		for _, name := range names {
			base, ext, ok := fence.ParseFileName(name)
			if !ok {
				reason := reasonBadName
				if strings.HasSuffix(name, ".tmp") {
					reason = reasonTmp
				}
				m.noteOnce(reason, q, name, nil)
				continue
			}
			e := fence.Entry{Queue: q, Base: base, Kind: fence.KindOfExt(ext)}
			if seen[e] {
				continue
			}
			seen[e] = true
			m.observe(e, g, true)
		}
	}
	m.mu.Lock()
	var missing []fence.Entry
	for e, st := range m.index {
		if listed[e.Queue] && !seen[e] && st.where != locNone && st.where != locHeld {
			missing = append(missing, e)
		}
	}
	m.mu.Unlock()
	for _, e := range missing {
		m.observe(e, g, true)
	}
	m.confirmGone()
}

// sweep lists every queue directory and observes the names the index does
// not know in that shape. Run before confirming entries gone, it makes
// sure every successor Mailman wrote before unlinking its predecessor has
// its upload queued ahead of the predecessor's delete.
func (m *Mirror) sweep(g fence.Gate) {
	for _, q := range m.watchedQueues() {
		names, err := m.fs.ReadDir(m.queueDir(q))
		if err != nil {
			continue
		}
		var todo []fence.Entry
		m.mu.Lock()
		for _, name := range names {
			base, ext, ok := fence.ParseFileName(name)
			if !ok {
				continue
			}
			e := fence.Entry{Queue: q, Base: base, Kind: fence.KindOfExt(ext)}
			st := m.index[e]
			if st != nil && !st.gone && !st.candidate && st.where == locOfExt(ext) {
				continue
			}
			todo = append(todo, e)
		}
		m.mu.Unlock()
		for _, e := range todo {
			m.observe(e, g, false)
		}
	}
}

func locOfExt(ext fence.Ext) loc {
	switch ext {
	case fence.ExtPck:
		return locPck
	case fence.ExtBak:
		return locBak
	default:
		return locPsv
	}
}

// confirmGone settles the entries whose files were missing: after a sweep,
// those still missing are finished, and their copies are deleted once every
// upload queued so far (their successors' included) is durable. It
// reports whether some are left to try again (their files could not be
// looked at).
func (m *Mirror) confirmGone() (again bool) {
	m.mu.Lock()
	n := len(m.candidates)
	m.mu.Unlock()
	if n == 0 {
		return false
	}
	g := m.gate()
	m.sweep(g)
	m.mu.Lock()
	defer m.mu.Unlock()
	barrier := m.ups.next
	cands := m.candidates
	m.candidates = nil
	for _, st := range cands {
		st.candidate = false
		if m.index[st.e] != st || st.gone {
			continue
		}
		l, _, err := m.locate(st.e)
		switch {
		case err != nil:
			st.candidate = true
			m.candidates = append(m.candidates, st)
		case l != locNone:
			m.observeLocked(st.e, g, false)
		default:
			m.markGoneLocked(st, barrier)
		}
	}
	return len(m.candidates) > 0
}

// markGoneLocked records that st was finished locally.
func (m *Mirror) markGoneLocked(st *entryState, barrier uint64) {
	m.setWhereLocked(st, locNone)
	st.gone, st.goneBarrier, st.again = true, barrier, false
	m.settleGoneLocked(st)
}

// settleGoneLocked queues the delete of a gone entry's copy once no
// upload of it is running, or forgets the entry if it has no copy.
func (m *Mirror) settleGoneLocked(st *entryState) {
	if st.up != nil {
		return
	}
	for _, k := range st.maybe {
		if k != st.durable {
			m.queueDeleteLocked(delFinished, k, st.e, st.goneBarrier)
		}
	}
	st.maybe = nil
	if st.durable != "" {
		if !st.delQueued {
			st.delQueued = true
			m.queueDeleteLocked(delFinished, st.durable, st.e, st.goneBarrier)
		}
		return
	}
	m.forgetLocked(st)
}

// scanHold indexes the entries in the hold area and removes temp files
// that a crash left there.
func (m *Mirror) scanHold() error {
	qs, err := m.fs.ReadDir(m.holdDir)
	if err != nil {
		return err
	}
	for _, q := range qs {
		if !fence.ValidName(q) {
			m.noteOnce(reasonBadName, "hold", q, nil)
			continue
		}
		dir := filepath.Join(m.holdDir, q)
		names, err := m.fs.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, name := range names {
			if strings.HasSuffix(name, tmpSuffix) {
				if err := m.fs.Remove(filepath.Join(dir, name)); err != nil && !isNotExist(err) {
					m.log.Warn("cannot remove leftover temp file", "queue", q, "name", name, "err", err)
				}
				continue
			}
			base, ext, ok := fence.ParseFileName(name)
			if !ok || ext == fence.ExtBak {
				m.noteOnce(reasonBadName, "hold/"+q, name, nil)
				continue
			}
			fi, err := m.fs.Lstat(filepath.Join(dir, name))
			if err != nil || !fi.Regular() {
				m.noteOnce(reasonNotRegular, "hold/"+q, name, err)
				continue
			}
			e := fence.Entry{Queue: q, Base: base, Kind: fence.KindOfExt(ext)}
			m.mu.Lock()
			st := m.entryLocked(e)
			if st.where == locNone {
				m.setWhereLocked(st, locHeld)
				st.seen = versionOf(fi)
			}
			m.mu.Unlock()
		}
	}
	return nil
}
