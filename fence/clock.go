package fence

import (
	crand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Clock is the node's view of time. Durations are measured with Now's
// monotonic reading; wall-clock offsets between nodes never matter.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// After delivers the time after d has passed.
	After(d time.Duration) <-chan time.Time
}

// Rand is the node's source of randomness: nonces and jitter.
type Rand interface {
	// Uint64 returns a uniformly random 64-bit number.
	Uint64() uint64
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// After returns time.After(d).
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// lockedRand makes a rand.Rand safe for concurrent use.
type lockedRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

// NewSystemRand returns a Rand seeded from the operating system, safe for
// concurrent use.
func NewSystemRand() Rand {
	var seed [32]byte
	if _, err := crand.Read(seed[:]); err != nil {
		binary.LittleEndian.PutUint64(seed[:], uint64(time.Now().UnixNano()))
	}
	return &lockedRand{r: rand.New(rand.NewChaCha8(seed))}
}

// Uint64 returns a random number.
func (l *lockedRand) Uint64() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Uint64()
}

// syncRand serializes a Rand that may not be safe for concurrent use.
type syncRand struct {
	mu sync.Mutex
	r  Rand
}

func (s *syncRand) Uint64() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.r.Uint64()
}

// Nonce returns a 128-bit random hex string from r.
func Nonce(r Rand) string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], r.Uint64())
	binary.LittleEndian.PutUint64(b[8:], r.Uint64())
	return hex.EncodeToString(b[:])
}

// BootClock is the real clock on CLOCK_BOOTTIME, which keeps counting
// while the host is suspended (CLOCK_MONOTONIC, Go's own, stops): a lease
// deadline taken on it is not stretched by a suspend. Now is the time
// since boot, as a time.Time from the Unix epoch; only differences mean
// anything. It falls back to the monotonic clock if the kernel has no
// CLOCK_BOOTTIME.
type BootClock struct{}

// Now returns CLOCK_BOOTTIME.
func (BootClock) Now() time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Unix(0, int64(time.Since(processStart)))
	}
	return time.Unix(0, ts.Nano())
}

// After returns time.After(d).
func (BootClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

var processStart = time.Now()
