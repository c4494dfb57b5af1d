package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// startTimes are the phases of a sidecar start, from its log.
type startTimes struct {
	ready     time.Duration // start -> /readyz 200 (as polled)
	probe     time.Duration // start -> store probe passed; -1 unknown
	reconcile time.Duration // lease acquired -> reconciled (settle included); -1 unknown
	cpu       time.Duration
	maxRSS    int64
}

// startAndTime starts a sidecar and times its start.
func startAndTime(ctx context.Context, e *env, o sidecarOpts, timeout time.Duration) (sidecar, startTimes, error) {
	st := startTimes{probe: -1, reconcile: -1, cpu: -1, maxRSS: -1}
	t0 := time.Now()
	sc, err := e.startSidecar(ctx, o)
	if err != nil {
		return nil, st, err
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := sc.waitReady(rctx); err != nil {
		sc.kill()
		return nil, st, err
	}
	st.ready = time.Since(t0)
	if b, ok := sc.(*binarySidecar); ok {
		lt := b.logTimes("store probe passed: conditional writes are honoured", "lease acquired", "reconciled")
		if p := lt["store probe passed: conditional writes are honoured"]; !p.IsZero() {
			st.probe = p.Sub(b.started)
		}
		if a, r := lt["lease acquired"], lt["reconciled"]; !a.IsZero() && !r.IsZero() {
			st.reconcile = r.Sub(a)
		}
	}
	if ps, err := procOf(sc); err == nil {
		st.cpu, st.maxRSS = ps.CPU, ps.MaxRSS
	}
	return sc, st, nil
}

// runScale measures the initial sync of n entries, the start-up reconcile
// with n entries on disk and in the store (after a crash), and a graceful
// restart (SIGTERM holds every mirrored entry; the next start settles
// them) with a smaller count.
func runScale(ctx context.Context, e *env, c config, t *table) error {
	n := c.scaleEntries
	root, err := e.workDir("scale")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	e.log("scale: writing %d entries", n)
	if err := writeEntries(filepath.Join(root, "in"), n, 4<<10); err != nil {
		return err
	}
	bucket, _, err := e.newBucket(ctx, "scale")
	if err != nil {
		return err
	}
	o := sidecarOpts{Node: "scale", QueueDir: root, Bucket: bucket}
	t0 := time.Now()
	sc, first, err := startAndTime(ctx, e, o, 5*time.Minute)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	err = waitUploads(wctx, sc, float64(n))
	cancel()
	if err != nil {
		sc.kill()
		return err
	}
	sync := time.Since(t0)
	ps, perr := procOf(sc)
	e.log("scale: initial sync of %d entries took %s (start to ready %s)", n, secs(sync), secs(first.ready))
	label := fmt.Sprintf("5 scale %d entries", n)
	syncRow := row{Workload: label, Figure: "initial sync into an empty store (start → all uploaded)",
		Sidecar: fmt.Sprintf("%s (%.0f entries/s)", secs(sync), float64(n)/sync.Seconds())}
	t.add(syncRow)
	if perr == nil {
		t.add(row{Workload: label, Figure: "CPU s per 1,000 entries mirrored (initial sync, upload only)",
			Sidecar: fmt.Sprintf("%.3f s (peak RSS %s)", ps.CPU.Seconds()/float64(n)*1000, mib(ps.MaxRSS))})
	}
	sc.kill()

	e.log("scale: restart after a crash with %d entries on disk and in the store", n)
	sc, restart, err := startAndTime(ctx, e, o, 10*time.Minute)
	if err != nil {
		return err
	}
	// Peak memory includes the first seconds of steady state.
	time.Sleep(2 * time.Second)
	if ps, err := procOf(sc); err == nil {
		restart.maxRSS = ps.MaxRSS
	}
	e.log("scale: restart: ready %s, probe %s, reconcile %s, cpu %s, peak RSS %s", secs(restart.ready), secs(restart.probe), secs(restart.reconcile), secs(restart.cpu), mib(restart.maxRSS))
	recon := restart.reconcile
	if recon < 0 {
		recon = restart.ready
	}
	t.add(row{Workload: label, Figure: "start-up reconcile after a crash (lease acquired → reconciled)",
		Sidecar: fmt.Sprintf("%s (start → ready %s, of which probe %s)", secs(recon), secs(restart.ready), secs(restart.probe)),
		Target:  "≤ 30 s @100,000", Met: scaleVerdict(n, recon <= 30*time.Second, fmt.Sprintf("%.1f× target", recon.Seconds()/30))})
	if restart.maxRSS >= 0 {
		t.add(row{Workload: label, Figure: "peak RSS through start-up reconcile",
			Sidecar: mib(restart.maxRSS), Target: "< 150 MiB @100,000",
			Met: scaleVerdict(n, restart.maxRSS < 150<<20, fmt.Sprintf("%s over", mib(restart.maxRSS-150<<20)))})
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	sc.stop(sctx)
	cancel()
	if err := gracefulRestart(ctx, e, c, t); err != nil {
		return err
	}
	return gateRestart(ctx, e, c, t)
}

// scaleVerdict judges a target stated for 100,000 entries only at that
// count.
func scaleVerdict(n int, ok bool, miss string) string {
	if n < 100000 {
		return "n/a (fewer entries)"
	}
	return verdict(ok, miss)
}

// gracefulRestart stops a node holding g entries with SIGTERM (which holds
// every mirrored .pck) and times the next start, which settles them.
func gracefulRestart(ctx context.Context, e *env, c config, t *table) error {
	g := c.gracefulEntries
	root, err := e.workDir("graceful")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	if err := writeEntries(filepath.Join(root, "in"), g, 4<<10); err != nil {
		return err
	}
	bucket, _, err := e.newBucket(ctx, "graceful")
	if err != nil {
		return err
	}
	o := sidecarOpts{Node: "graceful", QueueDir: root, Bucket: bucket}
	sc, _, err := startAndTime(ctx, e, o, 5*time.Minute)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	err = waitUploads(wctx, sc, float64(g))
	cancel()
	if err != nil {
		sc.kill()
		return err
	}
	t0 := time.Now()
	sctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	err = sc.stop(sctx)
	cancel()
	if err != nil {
		return err
	}
	stopTook := time.Since(t0)
	held, _ := countEntries(filepath.Join(root, ".mmsidecar", "hold", "in"))
	left, _ := countEntries(filepath.Join(root, "in"))
	e.log("scale: SIGTERM with %d entries took %s; %d held, %d left in the queue", g, secs(stopTook), len(held), len(left))
	sc, st, err := startAndTime(ctx, e, o, 30*time.Minute)
	if err != nil {
		return err
	}
	after, _ := countEntries(filepath.Join(root, "in"))
	e.log("scale: restart after SIGTERM: ready %s, lease → reconciled %s; %d entries back in the queue", secs(st.ready), secs(st.reconcile), len(after))
	label := fmt.Sprintf("5 scale %d entries", g)
	// Per held entry, and a linear projection to 100,000 when the count is
	// large enough for fixed costs not to dominate.
	per := func(d time.Duration) string {
		if len(held) == 0 || d < 0 {
			return "n/a"
		}
		each := d / time.Duration(len(held))
		s := fmt.Sprintf("%s per held entry", ms(each))
		if len(held) >= 1000 {
			s += fmt.Sprintf(", ≈ %s per 100,000", secs(each*100000))
		}
		return s
	}
	t.add(row{Workload: label, Figure: "graceful stop (SIGTERM: flush, hold every mirrored .pck)",
		Sidecar: fmt.Sprintf("%s, %d held (%s)", secs(stopTook), len(held), per(stopTook))})
	t.add(row{Workload: label, Figure: "restart after graceful stop (settle held + reconcile)",
		Sidecar: fmt.Sprintf("start → ready %s; lease → reconciled %s (%s)", secs(st.ready), secs(st.reconcile), per(st.reconcile))})
	sc.kill()
	return nil
}
