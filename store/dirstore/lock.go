package dirstore

import (
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// stripes is the number of lock files. Every write and delete of a key
// holds the lock of its stripe, between processes (flock) and between
// goroutines (a mutex: flock does not exclude a second lock through the
// same open file).
const stripes = 64

// stripeLocks are the open lock files of one Store.
type stripeLocks struct {
	files [stripes]*os.File
	mu    [stripes]sync.Mutex
}

// openLocks creates (if needed) and opens the stripe lock files in dir.
func openLocks(dir string) (*stripeLocks, error) {
	l := &stripeLocks{}
	for i := range l.files {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("%02x", i)), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			l.close()
			return nil, fmt.Errorf("open lock file: %w", err)
		}
		l.files[i] = f
	}
	return l, nil
}

func (l *stripeLocks) close() {
	for i, f := range l.files {
		if f != nil {
			f.Close()
			l.files[i] = nil
		}
	}
}

func stripeOf(key string) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % stripes)
}

// lock takes the exclusive lock of key's stripe and returns its release.
func (l *stripeLocks) lock(key string) (unlock func(), err error) {
	i := stripeOf(key)
	l.mu[i].Lock()
	fd := int(l.files[i].Fd())
	if err := flock(fd, unix.LOCK_EX); err != nil {
		l.mu[i].Unlock()
		return nil, fmt.Errorf("lock stripe %02x: %w", i, err)
	}
	return func() {
		// Closing the file would release the lock too; an unlock error
		// leaves the lock held, so report nothing and let the next
		// flock on this descriptor convert it.
		_ = flock(fd, unix.LOCK_UN)
		l.mu[i].Unlock()
	}, nil
}

// flock calls flock(2), retrying when interrupted by a signal.
func flock(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if err != unix.EINTR {
			return err
		}
	}
}
