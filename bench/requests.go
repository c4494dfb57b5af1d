package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
)

// requestConcurrency is the takeover's default restore concurrency: the
// request kinds below are measured as a restore sends them.
const requestConcurrency = 16

// requestKind is one kind of store request the sidecar sends, measured
// alone: n of them, and MinIO's CPU time while they ran.
type requestKind struct {
	name string
	run  func(ctx context.Context, s *s3store.Store, prefix string, n int) error
}

// requestKinds are the requests a takeover makes per restored entry, one
// of each (a key listed or deleted in a batch counts as one), in the
// order that leaves each one's objects for the next: mirror PUTs first
// (the copies the GETs, the listing and the deletes use).
var requestKinds = []requestKind{
	{"PUT 4 KiB, unconditional (a mirror copy)", func(ctx context.Context, s *s3store.Store, p string, n int) error {
		body := bytes.Repeat([]byte("m"), 4<<10)
		return forN(ctx, n, func(i int) error {
			_, err := s.Put(ctx, p+"m/"+strconv.Itoa(i), bytes.NewReader(body), int64(len(body)), store.Condition{})
			return err
		})
	}},
	{"PUT 250 B, If-None-Match (a claim)", func(ctx context.Context, s *s3store.Store, p string, n int) error {
		body := bytes.Repeat([]byte("c"), 250)
		return forN(ctx, n, func(i int) error {
			_, err := s.Put(ctx, p+"c/"+strconv.Itoa(i), bytes.NewReader(body), int64(len(body)), store.Condition{IfAbsent: true})
			return err
		})
	}},
	{"GET 4 KiB (a copy to restore)", func(ctx context.Context, s *s3store.Store, p string, n int) error {
		return forN(ctx, n, func(i int) error {
			_, _, err := store.GetBytes(ctx, s, p+"m/"+strconv.Itoa(i))
			return err
		})
	}},
	{"LIST, per key listed", func(ctx context.Context, s *s3store.Store, p string, n int) error {
		k := 0
		err := s.List(ctx, p+"m/", func(store.Info) error { k++; return nil })
		if err == nil && k != n {
			err = fmt.Errorf("listed %d keys, want %d", k, n)
		}
		return err
	}},
	{"DELETE in batches of 500, per key", func(ctx context.Context, s *s3store.Store, p string, n int) error {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = p + "m/" + strconv.Itoa(i)
		}
		for i := 0; i < n; i += 500 {
			if err := s.DeleteMany(ctx, keys[i:min(i+500, n)]); err != nil {
				return err
			}
		}
		return nil
	}},
}

// forN runs f(0..n-1), requestConcurrency at a time, and returns the
// first error.
func forN(ctx context.Context, n int, f func(int) error) error {
	sem := make(chan struct{}, requestConcurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for i := 0; i < n && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(i); err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// requestCost is one kind's figures.
type requestCost struct {
	cpu  time.Duration // the store's CPU per request
	rate float64       // requests per second
}

// measureRequests runs every kind n times against a fresh bucket (the
// sidecar's own store client, straight to the store) and reads the
// store's CPU time around each.
func measureRequests(ctx context.Context, e *env, n int) ([]requestCost, error) {
	if _, err := e.store.cpu(); err != nil {
		return nil, err
	}
	_, s, err := e.newBucket(ctx, "requests")
	if err != nil {
		return nil, err
	}
	out := make([]requestCost, len(requestKinds))
	for i, k := range requestKinds {
		c0, err := e.store.cpu()
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		if err := k.run(ctx, s, "r/", n); err != nil {
			return nil, fmt.Errorf("%s: %w", k.name, err)
		}
		took := time.Since(t0)
		c1, err := e.store.cpu()
		if err != nil {
			return nil, err
		}
		out[i] = requestCost{cpu: (c1 - c0) / time.Duration(n), rate: float64(n) / took.Seconds()}
	}
	return out, nil
}

// runRequests measures the store's CPU per request kind: what a takeover's
// restore costs the store per entry, and so the shortest restore this
// machine allows.
func runRequests(ctx context.Context, e *env, c config, t *table) error {
	costs, err := measureRequests(ctx, e, c.requestCount)
	if err != nil {
		return err
	}
	var perEntry time.Duration
	for i, k := range requestKinds {
		r := costs[i]
		e.log("requests: %s: %s %s CPU per request, %.0f/s at concurrency %d", k.name, e.store.label, ms(r.cpu), r.rate, requestConcurrency)
		t.add(row2("6 requests", k.name, fmt.Sprintf("%s %s CPU per request (%.0f/s at concurrency %d)", e.store.label, ms(r.cpu), r.rate, requestConcurrency)))
		perEntry += r.cpu
	}
	floor := perEntry * 10000 / time.Duration(runtime.NumCPU())
	t.add(row2("6 requests", e.store.label+" CPU per restored entry (claim + GET + mirror PUT + listed + deleted)",
		fmt.Sprintf("%s: 10,000 entries take ≥ %s of %s's work alone on %d cores", ms(perEntry), secs(floor), e.store.label, runtime.NumCPU())))
	create, open, err := fileCosts(e, c.requestCount)
	if err != nil {
		return err
	}
	e.log("requests: this disk: creating a file costs %s of CPU, opening an existing one %s", ms(create), ms(open))
	t.add(row2("6 requests", "CPU to create a file / open an existing one, on this disk (each new object costs MinIO a create; SeaweedFS appends to a volume)",
		fmt.Sprintf("%s / %s", ms(create), ms(open))))
	return nil
}

// fileCosts measures this process's CPU time per file created (open with
// O_CREAT|O_EXCL, close) and per existing file opened, n of each, in the
// scratch directory: the file system MinIO writes to. Every new object
// costs MinIO a created file (and directories), so where creating a file
// is dear, so is every PUT.
func fileCosts(e *env, n int) (create, open time.Duration, err error) {
	dir, err := e.workDir("files")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	each := func(f func(path string) error) (time.Duration, error) {
		c0, err := threadCPU()
		if err != nil {
			return 0, err
		}
		for i := range n {
			if err := f(filepath.Join(dir, strconv.Itoa(i))); err != nil {
				return 0, err
			}
		}
		c1, err := threadCPU()
		return (c1 - c0) / time.Duration(n), err
	}
	create, err = each(func(p string) error {
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		return f.Close()
	})
	if err != nil {
		return 0, 0, err
	}
	open, err = each(func(p string) error {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		return f.Close()
	})
	return create, open, err
}

// threadCPU is the calling OS thread's CPU time (user + system).
func threadCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_THREAD, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
