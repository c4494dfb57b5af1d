package fence

import (
	crand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"sync"
	"time"
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
