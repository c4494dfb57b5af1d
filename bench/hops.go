package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
)

// hopSize is the entry size of the hop workloads.
const hopSize = 4 << 10

// hopConcurrency is the sidecar's default upload concurrency, and so the
// concurrency of the raw baseline.
const hopConcurrency = 8

// rawPutDelete measures the raw PUT + DELETE pairs per second the MinIO
// behind the proxy sustains with conc workers doing nothing else.
func rawPutDelete(ctx context.Context, e *env, bucket string, conc int, d time.Duration) (float64, error) {
	c, err := newMinIOClient(e)
	if err != nil {
		return 0, err
	}
	body := bytes.Repeat([]byte("x"), hopSize)
	var pairs atomic.Int64
	var firstErr atomic.Pointer[error]
	rctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; rctx.Err() == nil; i++ {
				key := "raw/" + strconv.Itoa(w) + "/" + strconv.Itoa(i)
				if _, err := c.PutObject(rctx, bucket, key, bytes.NewReader(body), hopSize, minio.PutObjectOptions{}); err != nil {
					if rctx.Err() == nil {
						firstErr.CompareAndSwap(nil, &err)
					}
					return
				}
				if err := c.RemoveObject(rctx, bucket, key, minio.RemoveObjectOptions{}); err != nil {
					if rctx.Err() == nil {
						firstErr.CompareAndSwap(nil, &err)
					}
					return
				}
				pairs.Add(1)
			}
		}()
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return 0, *p
	}
	return float64(pairs.Load()) / time.Since(start).Seconds(), nil
}

// hopRun is one offered rate of the hop workload.
type hopRun struct {
	rate     float64 // entries per second offered into "in"
	hops     int     // queue files created (in and out): one PUT and one DELETE each
	hopRate  float64 // hops per second offered while the producer ran
	doneRate float64 // files finished per second until all were (or the deadline)
	stats    lagStats
	finished bool // every entry went through both queues
	settled  bool
	ops      map[string]float64 // sidecar store requests in the run, by op
	reqs     float64            // their total
	late     int64
}

func (h hopRun) keptUp(bound time.Duration) bool {
	return h.finished && h.settled && h.stats.overdueUp == 0 && h.stats.missingUp == 0 &&
		h.stats.up.pct(99) <= bound
}

func (h hopRun) String() string {
	return fmt.Sprintf("offered %.0f entries/s: %d hops at %.0f/s, upload lag p50 %s p99 %s, skipped %d (overdue %d), missing %d, late %d, finished %v, settled %v, requests/hop %.3f (%s)",
		h.rate, h.hops, h.hopRate, ms(h.stats.up.pct(50)), ms(h.stats.up.pct(99)), h.stats.skippedUp, h.stats.overdueUp,
		h.stats.missingUp, h.late, h.finished, h.settled, h.reqs/float64(max(h.hops, 1)), formatOps(h.ops, float64(max(h.hops, 1))))
}

// hopQueues prepares a queue root with in and out.
func hopQueues(e *env) (string, error) {
	root, err := e.workDir("hops")
	if err != nil {
		return "", err
	}
	for _, q := range []string{"in", "out"} {
		if err := os.MkdirAll(filepath.Join(root, q), 0o770); err != nil {
			return "", err
		}
	}
	return root, nil
}

// runHopRate offers rate entries per second into in for d; Mailman-shaped
// runners move each to out and then finish it there. sc may be nil (the
// harness alone).
func runHopRate(ctx context.Context, e *env, sc sidecar, root string, rate float64, d, bound time.Duration) (hopRun, error) {
	h := hopRun{rate: rate}
	rec := e.proxy.reset()
	var m0 metrics
	if sc != nil {
		var err error
		if m0, err = sc.metrics(ctx); err != nil {
			return h, err
		}
	}
	led := newLedger()
	wctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	var wg sync.WaitGroup
	werr := make(chan error, 2)
	for _, w := range []*hopWorker{
		{root: root, queue: "in", next: "out", slices: 2, poll: 250 * time.Millisecond, led: led},
		{root: root, queue: "out", slices: 2, poll: 250 * time.Millisecond, led: led},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.run(wctx); err != nil {
				werr <- err
			}
		}()
	}
	prod := &producer{dir: filepath.Join(root, "in"), rate: rate, size: hopSize, writers: 8, led: led}
	start := time.Now()
	n, err := prod.run(ctx, d)
	if err != nil {
		return h, err
	}
	span := led.span()
	// Every entry makes two files; wait until the runners finished all.
	deadline := time.Now().Add(max(d, 10*time.Second))
	for {
		c, f := led.counts()
		if c == 2*n && f == c {
			h.finished = true
			break
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case err := <-werr:
			return h, err
		case <-time.After(20 * time.Millisecond):
		}
	}
	_, done := led.counts()
	h.doneRate = float64(done) / time.Since(start).Seconds()
	if !h.finished {
		// Behind: let the runners empty the queues before the next run.
		emptyQueues(ctx, root, time.Minute)
	}
	stopWorkers()
	wg.Wait()
	h.late = prod.late.Load()
	c, _ := led.counts()
	h.hops = c
	// Sustained rate: the files made while the producer ran (when the
	// runners kept up, every entry's two files are made in that span).
	h.hopRate = float64(2*n) / max(span, d).Seconds()
	if sc != nil {
		h.settled = waitSettled(ctx, led, rec, true, 10*time.Second)
		h.stats = computeLagBound(led, rec, bound)
		m1, err := sc.metrics(ctx)
		if err != nil {
			return h, err
		}
		h.ops, h.reqs = opsDelta(m0, m1)
	}
	return h, nil
}

// runHops finds the highest rate of full entry lifecycles the sidecar
// keeps up with, measures the raw PUT + DELETE rate of the same MinIO at
// the same concurrency, and the store requests per hop.
func runHops(ctx context.Context, e *env, c config, t *table) error {
	bucket, _, err := e.newBucket(ctx, "raw")
	if err != nil {
		return err
	}
	e.log("hops: raw PUT+DELETE at concurrency %d for %s", hopConcurrency, c.rawDuration)
	raw, err := rawPutDelete(ctx, e, bucket, hopConcurrency, c.rawDuration)
	if err != nil {
		return fmt.Errorf("raw PUT+DELETE: %w", err)
	}
	e.log("hops: raw %.0f PUT+DELETE pairs/s", raw)
	t.add(row{Workload: "2 hops", Figure: fmt.Sprintf("raw PUT+DELETE pairs/s (4 KiB, concurrency %d)", hopConcurrency), Limit: fmt.Sprintf("%.0f/s", raw)})

	// The harness alone: how fast do the producer and runners go here?
	root, err := hopQueues(e)
	if err != nil {
		return err
	}
	alone, err := runHopRate(ctx, e, nil, root, max(2*raw, 1000), c.hopStep, c.hopLagBound)
	if err != nil {
		return fmt.Errorf("harness alone: %w", err)
	}
	os.RemoveAll(root)
	e.log("hops: harness alone at %.0f entries/s offered: %.0f hops/s done, finished %v", alone.rate, alone.doneRate, alone.finished)

	root, err = hopQueues(e)
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	bucket, _, err = e.newBucket(ctx, "hops")
	if err != nil {
		return err
	}
	sc, err := e.startSidecar(ctx, sidecarOpts{Node: "hops", QueueDir: root, Bucket: bucket})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		sc.stop(sctx)
	}()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := sc.waitReady(rctx); err != nil {
		return err
	}

	// Store cost at a moderate rate.
	cost, err := runHopRate(ctx, e, sc, root, c.costRate, c.hopStep, c.hopLagBound)
	if err != nil {
		return err
	}
	e.log("hops: cost run: %s", cost)
	perHop := cost.reqs / float64(max(cost.hops, 1))
	t.add(row{Workload: "3 cost", Figure: fmt.Sprintf("store requests per hop @%.0f hops/s (sidecar metrics)", cost.hopRate),
		Sidecar: fmt.Sprintf("%.3f (%s)", perHop, formatOps(cost.ops, float64(max(cost.hops, 1)))), Limit: "2 (PUT + DELETE)",
		VsLimit: ratio(perHop, 2), Target: "≤ 2", Met: verdict(perHop <= 2, fmt.Sprintf("%.2f", perHop))})

	// Rate search: in entries/s; each entry is two hops.
	var best, fail *hopRun
	rate := raw / 4
	for step := 0; step < c.hopMaxSteps && ctx.Err() == nil; step++ {
		h, err := runHopRate(ctx, e, sc, root, rate, c.hopStep, c.hopLagBound)
		if err != nil {
			return err
		}
		ok := h.keptUp(c.hopLagBound)
		e.log("hops: %s: kept up %v", h, ok)
		if ok {
			best = &h
		} else {
			fail = &h
		}
		switch {
		case ok && fail == nil:
			rate *= 1.4
		case best == nil:
			rate /= 2
		default:
			if fail.rate/best.rate < 1.1 {
				step = c.hopMaxSteps
			}
			rate = (best.rate + fail.rate) / 2
		}
		// Let the sidecar drain before the next step.
		if err := waitUploads(ctx, sc, 0); err != nil {
			return err
		}
	}
	if best == nil {
		t.add(row{Workload: "2 hops", Figure: "max sustained hops/s", Sidecar: "none kept up", Target: "≥ 0.8× raw", Met: "NO"})
		return nil
	}
	// The sidecar shares the CPUs with the Mailman-shaped runners; the raw
	// baseline above does not. Measure it again with the runners busy at
	// the rate found, for a like-for-like ratio.
	loaded, err := rawBesideHarness(ctx, e, best.rate, c)
	if err != nil {
		return err
	}
	e.log("hops: raw %.0f PUT+DELETE pairs/s beside the runners at %.0f entries/s", loaded, best.rate)
	limitNote := ""
	if fail == nil {
		limitNote = " (highest rate tried)"
	}
	t.add(row{Workload: "2 hops", Figure: fmt.Sprintf("max sustained hops/s (upload p99 ≤ %s)%s", c.hopLagBound, limitNote),
		Sidecar: fmt.Sprintf("%.0f/s (p99 %s; %.0f%% finished before a copy was due)", best.hopRate, ms(best.stats.up.pct(99)),
			100*float64(best.stats.skippedUp)/float64(max(best.hops, 1))), Limit: fmt.Sprintf("%.0f/s", raw),
		VsLimit: fmt.Sprintf("×%.2f", best.hopRate/raw), Target: "≥ 0.8× raw", Met: verdict(best.hopRate >= 0.8*raw, fmt.Sprintf("%.2f× raw", best.hopRate/raw))})
	t.add(row{Workload: "2 hops", Figure: fmt.Sprintf("same, vs raw PUT+DELETE beside the runners at %.0f entries/s", best.rate),
		Sidecar: fmt.Sprintf("%.0f/s", best.hopRate), Limit: fmt.Sprintf("%.0f/s", loaded), VsLimit: ratio(best.hopRate, loaded)})
	t.add(row{Workload: "2 hops", Figure: "lifecycles/s (in → out → finished)", Sidecar: fmt.Sprintf("%.0f/s", best.hopRate/2),
		Limit: fmt.Sprintf("harness alone: %.0f hops/s", alone.doneRate)})
	bestPer := best.reqs / float64(max(best.hops, 1))
	t.add(row{Workload: "3 cost", Figure: fmt.Sprintf("store requests per hop @%.0f hops/s", best.hopRate),
		Sidecar: fmt.Sprintf("%.3f (%s)", bestPer, formatOps(best.ops, float64(max(best.hops, 1)))), Limit: "2",
		VsLimit: ratio(bestPer, 2), Target: "≤ 2", Met: verdict(bestPer <= 2, fmt.Sprintf("%.2f", bestPer))})
	return nil
}

// emptyQueues waits until no queue of root holds a .pck or .bak, or the
// timeout passes.
func emptyQueues(ctx context.Context, root string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		left := 0
		for _, q := range []string{"in", "out"} {
			ents, _ := os.ReadDir(filepath.Join(root, q))
			left += len(ents)
		}
		if left == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rawBesideHarness measures the raw PUT + DELETE rate while the
// Mailman-shaped producer and runners run at rate without a sidecar.
func rawBesideHarness(ctx context.Context, e *env, rate float64, c config) (float64, error) {
	root, err := hopQueues(e)
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(root)
	bucket, _, err := e.newBucket(ctx, "raw-loaded")
	if err != nil {
		return 0, err
	}
	herr := make(chan error, 1)
	go func() {
		_, err := runHopRate(ctx, e, nil, root, rate, c.rawDuration, c.hopLagBound)
		herr <- err
	}()
	raw, err := rawPutDelete(ctx, e, bucket, hopConcurrency, c.rawDuration)
	if herr := <-herr; err == nil {
		err = herr
	}
	return raw, err
}
