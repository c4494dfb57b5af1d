// Package runnertest provides Mailman-shaped queue producers and workers
// for tests: they write, dequeue and hand on entries the way Mailman's
// switchboard does (temp file + fsync + rename; .pck -> .bak -> successor
// in the next queue -> unlink). They can run in the test process or, for
// chaos tests, in a re-executed test binary (see MaybeRunWorker).
package runnertest

import (
	"context"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

var baseCounter atomic.Uint64

// NewBase returns a fresh Mailman-style file base "<time>+<sha1 hex>" for
// an entry enqueued at t, the time formatted like Python's repr(float).
func NewBase(t time.Time, seed []byte) string {
	when := strconv.FormatFloat(float64(t.UnixNano())/1e9, 'f', -1, 64)
	if !strings.Contains(when, ".") {
		when += ".0"
	}
	h := sha1.New()
	h.Write(seed)
	var n [16]byte
	binary.LittleEndian.PutUint64(n[:8], baseCounter.Add(1))
	binary.LittleEndian.PutUint64(n[8:], uint64(os.Getpid()))
	h.Write(n[:])
	h.Write([]byte(when))
	return when + "+" + hex.EncodeToString(h.Sum(nil))
}

// Owner says who should own written files; nil leaves them as created.
type Owner struct{ UID, GID int }

// WriteEntry enqueues body as dir/<base>.pck the way Mailman does: write
// <base>.pck.tmp, fsync, set mode 0660 (and owner), rename.
func WriteEntry(dir, base string, body []byte, owner *Owner) error {
	tmp := filepath.Join(dir, base+".pck.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o660)
	if err != nil {
		return err
	}
	_, err = f.Write(body)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = f.Chmod(0o660)
	}
	if err == nil && owner != nil {
		err = f.Chown(owner.UID, owner.GID)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, base+".pck"))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("enqueue %s: %w", base, err)
	}
	return nil
}

// Body returns an entry body carrying id on its first line, padded with
// filler to size bytes.
func Body(id string, size int) []byte {
	b := []byte("id: " + id + "\n")
	for len(b) < size {
		b = append(b, 'x')
	}
	return b
}

// BodyID returns the id on a body's first line, or "".
func BodyID(body []byte) string {
	line, _, _ := strings.Cut(string(body[:min(len(body), 256)]), "\n")
	id, ok := strings.CutPrefix(line, "id: ")
	if !ok {
		return ""
	}
	return id
}

// Producer enqueues entries into one queue directory at a steady rate.
type Producer struct {
	// Dir is the queue directory to write into.
	Dir string
	// Rate is entries per second; 0 means as fast as possible.
	Rate float64
	// Count is the number of entries to write; 0 means until ctx ends.
	Count int
	// Size is each body's size in bytes (default 512).
	Size int
	// IDPrefix starts every entry's id: "<IDPrefix><n>".
	IDPrefix string
	// Owner owns the files; nil leaves them as created.
	Owner *Owner
	// OnCreate is called after each entry exists (after its rename).
	OnCreate func(base, id string, at time.Time)
}

// Run writes entries until Count is reached or ctx ends and returns how
// many it wrote.
func (p *Producer) Run(ctx context.Context) (int, error) {
	size := p.Size
	if size <= 0 {
		size = 512
	}
	start := time.Now()
	for n := 0; p.Count == 0 || n < p.Count; n++ {
		if p.Rate > 0 {
			due := start.Add(time.Duration(float64(n) / p.Rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return n, nil
				}
			}
		}
		if ctx.Err() != nil {
			return n, nil
		}
		id := p.IDPrefix + strconv.Itoa(n)
		body := Body(id, size)
		base := NewBase(time.Now(), body)
		if err := WriteEntry(p.Dir, base, body, p.Owner); err != nil {
			return n, err
		}
		if p.OnCreate != nil {
			p.OnCreate(base, id, time.Now())
		}
	}
	return p.Count, nil
}
