package gatefile

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// BootIDPath is where Linux publishes the current boot's id.
const BootIDPath = "/proc/sys/kernel/random/boot_id"

// ReadBootID returns the kernel's boot id, trimmed. It is the same for
// every process and container on one kernel and changes at every boot.
func ReadBootID() (string, error) {
	b, err := os.ReadFile(BootIDPath)
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("read boot id: %s is empty", BootIDPath)
	}
	return id, nil
}

// BootTime returns CLOCK_BOOTTIME: time since boot, counting time the host
// spent suspended (CLOCK_MONOTONIC, Go's own, does not). Gate deadlines are
// on this clock; Duration.Seconds gives the value Admit compares.
func BootTime() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, fmt.Errorf("clock_gettime(CLOCK_BOOTTIME): %w", err)
	}
	return time.Duration(ts.Nano()), nil
}

// statKey identifies one version of a file: the writer replaces the record
// by rename, so a new version has a new inode, and a rewrite in place
// changes its size or times.
type statKey struct {
	dev, ino, size int64
	mtime, ctime   int64 // nanoseconds
}

func keyOf(fi os.FileInfo) (statKey, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return statKey{}, false
	}
	return statKey{
		dev: int64(st.Dev), ino: int64(st.Ino), size: st.Size, //nolint:unconvert // types differ by platform
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(),
	}, true
}

// Reader reads one gate record file and keeps what it decoded for as long
// as the file's identity (device, inode, size, modification and change
// times) stays the same, so a check costs one stat when nothing changed.
// It keeps the decoded version's file open: that inode cannot be freed and
// handed to a later version, which could otherwise match it in every field
// (timestamps are coarse). It is safe for concurrent use.
type Reader struct {
	path string

	mu  sync.Mutex
	f   *os.File // the cached version, held open; nil: nothing cached
	key statKey
	rec *Record
	err error
}

// NewReader returns a Reader of the record at path (typically
// <state dir>/gate.json).
func NewReader(path string) *Reader { return &Reader{path: path} }

// Path is the record file the Reader reads.
func (r *Reader) Path() string { return r.path }

// Read returns the current record, or the error Admit turns into a reason:
// one wrapping fs.ErrNotExist when there is no record, ErrMalformed when it
// does not decode, any other when it cannot be read.
func (r *Reader) Read() (*Record, error) {
	fi, err := os.Stat(r.path)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.forget()
		return nil, fmt.Errorf("stat gate record: %w", err)
	}
	if key, ok := keyOf(fi); ok && r.f != nil && key == r.key {
		return r.rec, r.err
	}
	f, key, rec, err := readRecord(r.path)
	r.forget()
	if f == nil { // unreadable, or nothing to know the version by
		return rec, err
	}
	r.f, r.key, r.rec, r.err = f, key, rec, err
	return rec, err
}

// Close releases the file the Reader holds; a later Read reads afresh.
func (r *Reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.forget()
	return nil
}

func (r *Reader) forget() {
	if r.f != nil {
		r.f.Close()
	}
	r.f, r.rec, r.err = nil, nil, nil
}

// readRecord opens, identifies and decodes the record, and returns the
// open file to cache it by (nil when it could not be read or identified);
// the key comes from the open file, so it always describes the bytes
// decoded.
func readRecord(path string) (*os.File, statKey, *Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, statKey{}, nil, fmt.Errorf("open gate record: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, statKey{}, nil, fmt.Errorf("stat gate record: %w", err)
	}
	key, ok := keyOf(fi)
	data, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil || !ok {
		f.Close()
		if err == nil {
			rec, derr := Decode(data) // no identity to cache it by
			return nil, statKey{}, rec, derr
		}
		return nil, statKey{}, nil, fmt.Errorf("read gate record: %w", err)
	}
	rec, err := Decode(data)
	return f, key, rec, err
}

// Checker applies the rule the way a runner does before each dequeue: the
// record through a Reader, this process's boot id (read once) and
// CLOCK_BOOTTIME at every check. It is safe for concurrent use.
type Checker struct {
	reader *Reader
	bootID string
	clock  func() (time.Duration, error)
}

// NewChecker returns a Checker of the record at path. A boot id that
// cannot be read is "", which no valid record carries.
func NewChecker(path string) *Checker {
	id, _ := ReadBootID()
	return &Checker{reader: NewReader(path), bootID: id, clock: BootTime}
}

// Check is Admit for the entry base of queue, now; a clock that cannot be
// read gives ReasonCheckFailed (not admitted).
func (c *Checker) Check(queue, base string) (admitted bool, reason string) {
	now, err := c.clock()
	if err != nil {
		return false, ReasonCheckFailed
	}
	rec, err := c.reader.Read()
	return Admit(rec, err, queue, base, now.Seconds(), c.bootID)
}
