package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// timing returns lease timing in the proportions of the defaults
// (15 s / 5 s / 3 s) for ttl.
func timing(ttl time.Duration) (grace, margin time.Duration) {
	return ttl / 3, ttl / 5
}

// runIdle runs two idle nodes with a short TTL, counts their store
// requests, and scales the figure to the default TTL (every periodic
// store request of an idle node is paced by the TTL).
func runIdle(ctx context.Context, e *env, c config, t *table) error {
	bucket, _, err := e.newBucket(ctx, "idle")
	if err != nil {
		return err
	}
	grace, margin := timing(c.idleTTL)
	var scs []sidecar
	defer func() {
		for _, sc := range scs {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			sc.stop(sctx)
			cancel()
		}
	}()
	for _, node := range []string{"idle-a", "idle-b"} {
		root, err := e.workDir(node)
		if err != nil {
			return err
		}
		defer os.RemoveAll(root)
		if err := os.MkdirAll(filepath.Join(root, "in"), 0o770); err != nil {
			return err
		}
		sc, err := e.startSidecar(ctx, sidecarOpts{Node: node, QueueDir: root, Bucket: bucket, TTL: c.idleTTL, Grace: grace, Margin: margin})
		if err != nil {
			return err
		}
		scs = append(scs, sc)
	}
	// Both started at once: the time to ready is the start-up probe (16
	// writers racing 5 conditional-create and 5 CAS rounds, both nodes'
	// probes at once), the first lease and the first scan.
	started := time.Now()
	for _, sc := range scs {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		err := sc.waitReady(rctx)
		cancel()
		if err != nil {
			return err
		}
	}
	ready := time.Since(started)
	e.log("idle: both sidecars ready %s after their start", secs(ready))
	t.add(row{Workload: "3 cost", Figure: "two sidecars started at once → both ready (start-up probe: 16 writers, 5 create + 5 CAS rounds)",
		Sidecar: secs(ready)})
	// Let the start-up traffic pass: the first scans and lease reads, and
	// the claims passes that follow a peer's start (its lease changes from
	// settling to live, which may come with claims: one pass, 2 TTL after
	// the node's first).
	time.Sleep(4 * c.idleTTL)
	before := make([]metrics, len(scs))
	for i, sc := range scs {
		if before[i], err = sc.metrics(ctx); err != nil {
			return err
		}
	}
	e.log("idle: 2 nodes, TTL %s, for %s", c.idleTTL, c.idleFor)
	start := time.Now()
	select {
	case <-time.After(c.idleFor):
	case <-ctx.Done():
		return ctx.Err()
	}
	minutes := time.Since(start).Minutes()
	total := 0.0
	ops := map[string]float64{}
	for i, sc := range scs {
		after, err := sc.metrics(ctx)
		if err != nil {
			return err
		}
		d, n := opsDelta(before[i], after)
		total += n
		for op, v := range d {
			ops[op] += v
		}
	}
	perNode := total / float64(len(scs)) / minutes
	scale := float64(c.idleTTL) / float64(defaultTTL)
	// Target: one renewal and one scan (a LIST) per TTL/3.
	target := 2 * 3 * (time.Minute.Seconds() / defaultTTL.Seconds())
	e.log("idle: %.1f requests/min per node at TTL %s (%s)", perNode, c.idleTTL, formatOps(ops, float64(len(scs))*minutes))
	t.add(row{Workload: "3 cost", Figure: fmt.Sprintf("idle requests/min per node, measured (TTL %s, 2 nodes)", c.idleTTL),
		Sidecar: fmt.Sprintf("%.1f (%s)", perNode, formatOps(ops, float64(len(scs))*minutes))})
	scaled := perNode * scale
	t.add(row{Workload: "3 cost", Figure: "idle requests/min per node, scaled to TTL 15 s",
		Sidecar: fmt.Sprintf("%.1f (%s)", scaled, formatOps(ops, float64(len(scs))*minutes/scale)),
		Limit:   fmt.Sprintf("%.0f (renewal + scan per TTL/3)", target), VsLimit: ratio(scaled, target),
		Target: fmt.Sprintf("≤ %.0f", target), Met: verdict(scaled <= target*1.001, fmt.Sprintf("%.2f× target", scaled/target))})
	return nil
}
