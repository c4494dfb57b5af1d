package runner

import (
	"slices"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// loc is where an entry is locally.
type loc uint8

const (
	locNone loc = iota
	locPck      // Mailman-visible .pck
	locBak      // in flight: .bak
	locPsv      // preserved: .psv
	locHeld     // in the hold area
)

func (l loc) String() string {
	switch l {
	case locPck:
		return "pck"
	case locBak:
		return "bak"
	case locPsv:
		return "psv"
	case locHeld:
		return "held"
	}
	return "none"
}

// version identifies the contents of a local file: renames (Mailman's
// .pck to .bak, the mirror's own moves to and from the hold area) keep
// it; Mailman's recovery, which rewrites a .bak in place, changes it.
type version struct {
	ino   uint64
	size  int64
	mtime int64
}

func versionOf(s FileStat) version {
	return version{ino: s.Ino, size: s.Size, mtime: s.Mtime.UnixNano()}
}

// entryState is the mirror's record of one entry. Guarded by Mirror.mu.
type entryState struct {
	e     fence.Entry
	where loc
	// seen is the version of the file at where when last observed, and
	// seenCtime its ctime (when it was renamed into place).
	seen      version
	seenCtime int64
	// durable is the key of the entry's durable copy in the node's
	// namespace ("" for none known); durVer the local version it holds.
	durable  string
	durEpoch uint64
	durVer   version
	// maybe lists keys of uploads that failed but may have committed (a
	// timeout, a 5xx, a store that lost write quorum): deleted once the
	// entry is finished or has a copy elsewhere, so none is left behind.
	maybe []string
	// up is the queued or running upload.
	up *upload
	// again asks for another upload once up is done (the file changed).
	again bool
	// candidate: the file was missing; gone once a sweep confirms it.
	candidate bool
	// gone: finished locally; its copy is deleted once goneBarrier is
	// reached.
	gone        bool
	goneBarrier uint64
	delQueued   bool
}

// mayHaveCommitted records key, the key of an upload that failed but may
// have committed, among the entry's maybe copies.
func (st *entryState) mayHaveCommitted(key string) {
	if !slices.Contains(st.maybe, key) {
		st.maybe = append(st.maybe, key)
	}
}

// mayBeStored says whether the store may hold a copy of the entry that a
// peer could restore: a durable copy, an upload past the gate, or one
// whose answer was lost and that may have committed.
func (st *entryState) mayBeStored() bool {
	return st.durable != "" || st.up != nil && st.up.started || len(st.maybe) > 0
}

// upload is one queued or running upload of an entry.
type upload struct {
	seq uint64
	st  *entryState
	// since is when the file was renamed into place (for the lag).
	since time.Time
	// started: the worker passed the gate and may be writing; canceled:
	// the entry went to the hold area before that.
	started  bool
	canceled bool
}

// tracker hands out increasing sequence numbers and tracks the lowest one
// not yet done (the low watermark), with the time each was handed out.
type tracker struct {
	next, low uint64
	open      map[uint64]time.Time
}

func newTracker() tracker { return tracker{next: 1, low: 1, open: make(map[uint64]time.Time)} }

func (t *tracker) add(now time.Time) uint64 {
	s := t.next
	t.next++
	t.open[s] = now
	return s
}

// done resolves s and reports whether the watermark moved.
func (t *tracker) done(s uint64) bool {
	delete(t.open, s)
	moved := false
	for t.low < t.next {
		if _, ok := t.open[t.low]; ok {
			break
		}
		t.low++
		moved = true
	}
	return moved
}

// oldest is when the lowest open sequence number was handed out.
func (t *tracker) oldest() (time.Time, bool) {
	at, ok := t.open[t.low]
	return at, ok
}

func (t *tracker) pending() int { return len(t.open) }

// queueState is what the mirror knows of one queue. Guarded by Mirror.mu.
type queueState struct {
	name       string
	dir        string
	watched    bool
	ino        uint64 // of the directory, once seen by a root event
	count      [locHeld + 1]int
	lastMirror time.Time
}

// entry returns e's record, creating it.
func (m *Mirror) entryLocked(e fence.Entry) *entryState {
	st := m.index[e]
	if st == nil {
		st = &entryState{e: e}
		m.index[e] = st
	}
	return st
}

// setWhereLocked moves st to l, keeping the per-queue counts and gauges.
func (m *Mirror) setWhereLocked(st *entryState, l loc) {
	if st.where == l {
		return
	}
	q := m.queueLocked(st.e.Queue)
	q.count[st.where]--
	q.count[l]++
	m.gaugeLoc(q.name, st.where, -1)
	m.gaugeLoc(q.name, l, 1)
	st.where = l
}

func (m *Mirror) gaugeLoc(queue string, l loc, d float64) {
	switch l {
	case locPck, locBak, locPsv:
		m.met.Entries.WithLabelValues(queue).Add(d)
	case locHeld:
		m.met.Held.Add(d)
	}
}

// queueLocked returns the record of queue name, creating an unwatched one.
func (m *Mirror) queueLocked(name string) *queueState {
	q := m.queues[name]
	if q == nil {
		q = &queueState{name: name, dir: m.queueDir(name)}
		m.queues[name] = q
	}
	return q
}

// forgetLocked drops st from the index if nothing refers to it anymore.
func (m *Mirror) forgetLocked(st *entryState) {
	if st.where != locNone || st.up != nil || st.durable != "" || st.candidate {
		return
	}
	if m.index[st.e] == st {
		delete(m.index, st.e)
	}
}
