package runner

import "sync"

// dirSyncer makes renames durable with group commit: a caller that needs
// the renames it did in a directory to be durable asks for a sync; if one
// is running, it waits for the next, which covers every caller that asked
// meanwhile. Parallel takeovers into one queue directory then share their
// fsyncs instead of queuing one each.
type dirSyncer struct {
	sync func(dir string) error

	mu   sync.Mutex
	dirs map[string]*dirState
}

type dirState struct {
	asked   uint64 // tickets handed out
	done    uint64 // every ticket up to done is covered by a finished sync
	err     error  // the error of the sync that finished last
	running bool
	cond    *sync.Cond
}

func newDirSyncer(sync func(dir string) error) *dirSyncer {
	return &dirSyncer{sync: sync, dirs: make(map[string]*dirState)}
}

// Sync returns once a directory fsync that started after the call has
// finished, with that fsync's error.
func (s *dirSyncer) Sync(dir string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.dirs[dir]
	if d == nil {
		d = &dirState{cond: sync.NewCond(&s.mu)}
		s.dirs[dir] = d
	}
	d.asked++
	ticket := d.asked
	for d.done < ticket {
		if d.running {
			d.cond.Wait()
			continue
		}
		d.running = true
		covers := d.asked // every rename behind these tickets happened already
		s.mu.Unlock()
		err := s.sync(dir)
		s.mu.Lock()
		d.running = false
		d.done, d.err = covers, err
		d.cond.Broadcast()
	}
	err := d.err
	if d.done == d.asked && !d.running {
		delete(s.dirs, dir) // nobody waits: forget it
	}
	return err
}
