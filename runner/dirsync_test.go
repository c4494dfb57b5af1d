package runner

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

func TestDirSyncer(t *testing.T) {
	t.Run("one caller, one fsync", func(t *testing.T) {
		var n atomic.Int32
		s := newDirSyncer(func(string) error { n.Add(1); return nil })
		if err := s.Sync("d"); err != nil {
			t.Fatal(err)
		}
		if n.Load() != 1 {
			t.Fatalf("fsyncs = %d, want 1", n.Load())
		}
	})
	t.Run("callers during a running fsync share the next", func(t *testing.T) {
		started := make(chan struct{})
		unblock := make(chan struct{})
		var n atomic.Int32
		s := newDirSyncer(func(string) error {
			if n.Add(1) == 1 {
				close(started)
				<-unblock
			}
			return nil
		})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.Sync("d") }()
		<-started
		const waiters = 20
		for i := 0; i < waiters; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); _ = s.Sync("d") }()
		}
		// Every waiter has its ticket once it waits on the condition;
		// poll until all asked (no fixed sleep).
		for {
			s.mu.Lock()
			asked := s.dirs["d"].asked
			s.mu.Unlock()
			if asked == waiters+1 {
				break
			}
			runtime.Gosched()
		}
		close(unblock)
		wg.Wait()
		if got := n.Load(); got != 2 {
			t.Fatalf("fsyncs = %d, want 2 (the running one and one for all %d waiters)", got, waiters)
		}
		if len(s.dirs) != 0 {
			t.Fatalf("state kept for %d directories after everyone left", len(s.dirs))
		}
	})
	t.Run("the error reaches the caller", func(t *testing.T) {
		boom := errors.New("boom")
		s := newDirSyncer(func(string) error { return boom })
		if err := s.Sync("d"); !errors.Is(err, boom) {
			t.Fatalf("err = %v, want %v", err, boom)
		}
	})
	t.Run("directories do not wait for each other", func(t *testing.T) {
		unblock := make(chan struct{})
		s := newDirSyncer(func(dir string) error {
			if dir == "slow" {
				<-unblock
			}
			return nil
		})
		done := make(chan struct{})
		go func() { _ = s.Sync("slow"); close(done) }()
		if err := s.Sync("fast"); err != nil {
			t.Fatal(err)
		}
		close(unblock)
		<-done
	})
}
