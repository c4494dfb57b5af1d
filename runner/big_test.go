package runner

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
	"github.com/mmsidecar/mmsidecar/store"
)

// sinkStore streams the bodies of large PUTs into an MD5 instead of
// keeping them, and stores "md5 size" in their place.
type sinkStore struct {
	store.Store
	mu     sync.Mutex
	hashes map[string]string
}

func (s *sinkStore) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	if size < 1<<20 {
		return s.Store.Put(ctx, key, body, size, cond)
	}
	h := md5.New()
	n, err := io.Copy(h, body)
	if err != nil {
		return store.Info{}, err
	}
	if n != size {
		return store.Info{}, fmt.Errorf("body %d bytes, size %d", n, size)
	}
	s.mu.Lock()
	s.hashes[key] = hex.EncodeToString(h.Sum(nil))
	s.mu.Unlock()
	return store.PutBytes(ctx, s.Store, key, []byte("big"), cond)
}

func (s *sinkStore) hash(key string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hashes[key]
}

// TestHundredMiBEntryIsStreamed mirrors a 100 MiB entry without reading it
// into memory, and without holding up a small entry written after it.
func TestHundredMiBEntryIsStreamed(t *testing.T) {
	const size = 100 << 20
	var sink *sinkStore
	h := newHarness(t, withStore(func(s store.Store) store.Store {
		sink = &sinkStore{Store: s, hashes: map[string]string{}}
		return sink
	}))
	dir := filepath.Join(h.qdir, "in")
	base := runnertest.NewBase(time.Now(), []byte("big"))
	tmp := filepath.Join(dir, base+".pck.tmp")
	f, err := os.Create(tmp)
	if err != nil {
		t.Fatal(err)
	}
	// A sparse file with a header and a tail: cheap on disk, 100 MiB to read.
	head := []byte("id: big\n")
	f.Write(head)
	f.WriteAt([]byte("tail"), size-4)
	f.Sync()
	f.Close()
	want := md5.New()
	rf, _ := os.Open(tmp)
	io.Copy(want, rf)
	rf.Close()
	big := fence.Entry{Queue: "in", Base: base, Kind: fence.KindPck}

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := os.Rename(tmp, filepath.Join(dir, base+".pck")); err != nil {
		t.Fatal(err)
	}
	small := h.enqueue("in", "small")
	h.waitKeys(h.key(1, big), h.key(1, small))
	runtime.ReadMemStats(&after)
	if got := sink.hash(h.key(1, big)); got != hex.EncodeToString(want.Sum(nil)) {
		t.Errorf("streamed md5 %s, want %x", got, want.Sum(nil))
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %.1f MiB while mirroring a %d MiB entry", float64(alloc)/(1<<20), size>>20)
	if alloc > 16<<20 {
		t.Errorf("allocated %d bytes while mirroring: the entry was read into memory", alloc)
	}
	if !strings.HasPrefix(h.object(h.key(1, big)), "big") {
		t.Error("sink did not store the marker")
	}
}
