package runner

import "sync"

// nameSet remembers up to about max names, forgetting the oldest half
// when full, so each odd name is logged once without unbounded memory.
type nameSet struct {
	mu        sync.Mutex
	max       int
	cur, prev map[string]struct{}
}

func newNameSet(max int) *nameSet {
	return &nameSet{max: max, cur: make(map[string]struct{})}
}

// add records name and reports whether it was new.
func (s *nameSet) add(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.cur[name]; ok {
		return false
	}
	_, old := s.prev[name]
	if len(s.cur) >= s.max/2 {
		s.prev, s.cur = s.cur, make(map[string]struct{})
	}
	s.cur[name] = struct{}{}
	return !old
}

// Reasons for leaving a file alone, the label of mmsidecar_ignored_files_total.
const (
	reasonBadName    = "bad_name"    // not <time>+<sha1>.pck|.bak|.psv
	reasonTmp        = "tmp"         // a temp file still there at a rescan
	reasonNotRegular = "not_regular" // a directory, symlink, fifo... with a valid name
	reasonEmpty      = "empty"       // a zero-byte entry (mirrored all the same)
	reasonUnreadable = "unreadable"  // cannot be opened or read; retried at rescans
)

// noteOnce logs and counts an odd file the first time it is seen.
func (m *Mirror) noteOnce(reason, queue, name string, err error) {
	if !m.ignored.add(reason + "\x00" + queue + "\x00" + name) {
		return
	}
	m.met.Ignored.WithLabelValues(reason).Inc()
	args := []any{"queue", queue, "name", name, "reason", reason}
	if err != nil {
		args = append(args, "err", err)
	}
	switch reason {
	case reasonEmpty:
		m.log.Warn("zero-byte queue entry (mirrored as is)", args...)
	case reasonUnreadable:
		m.log.Warn("cannot read queue entry; retrying at the next rescan", args...)
	default:
		m.log.Warn("ignoring file in queue directory", args...)
	}
}

// forgetNote lets a name be logged again (it became readable).
func (m *Mirror) forgetNote(reason, queue, name string) {
	key := reason + "\x00" + queue + "\x00" + name
	m.ignored.mu.Lock()
	delete(m.ignored.cur, key)
	delete(m.ignored.prev, key)
	m.ignored.mu.Unlock()
}
