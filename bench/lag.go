package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// lagResult is one system's run of one mirror-lag case.
type lagResult struct {
	system    string
	stats     lagStats
	created   int
	achieved  float64       // entries per second actually produced
	late      int64         // entries written > 10 ms late
	cpu       time.Duration // of the mirroring process during the run; -1 unknown
	requests  map[string]int
	leftovers int // copies still in the store after the run settled
	settled   bool
	notes     string // crashes and restarts
	err       error
}

// cpuPerEntry is the mirroring process's CPU per entry mirrored (created
// and finished), or -1.
func (r lagResult) cpuPerEntry() time.Duration {
	if r.cpu < 0 || r.created == 0 {
		return -1
	}
	return r.cpu / time.Duration(r.created)
}

func (r lagResult) requestsPerEntry() float64 {
	total := 0
	for _, v := range r.requests {
		total += v
	}
	if r.created == 0 {
		return -1
	}
	return float64(total) / float64(r.created)
}

// runLagCase runs the Mailman-shaped producer and finisher against sys:
// size-byte entries at rate per second for d, each finished hold after
// its creation.
func runLagCase(ctx context.Context, e *env, sys mirrorSys, name string, size int, rate float64, d, hold time.Duration) (res lagResult) {
	res = lagResult{system: name, cpu: -1}
	root, err := e.workDir("lag-" + name)
	if err != nil {
		res.err = err
		return res
	}
	defer os.RemoveAll(root)
	qdir := filepath.Join(root, "in")
	if err := os.MkdirAll(qdir, 0o770); err != nil {
		res.err = err
		return res
	}
	bucket, st, err := e.newBucket(ctx, fmt.Sprintf("lag-%s-%dk-%.0f", name, size>>10, rate))
	if err != nil {
		res.err = err
		return res
	}
	if err := sys.start(ctx, root, bucket); err != nil {
		res.err = fmt.Errorf("start %s: %w", name, err)
		return res
	}
	defer sys.stop()
	rec := e.proxy.reset()
	cpu0, hasCPU := sys.cpu()
	led := newLedger()
	fin := newFinisher(qdir, hold, led, sys.hooks())
	prod := &producer{dir: qdir, rate: rate, size: size, writers: 8, led: led, hooks: sys.hooks(), after: fin.add}
	drain := make(chan struct{})
	finErr := make(chan error, 1)
	go func() { finErr <- fin.run(ctx, drain) }()
	n, perr := prod.run(ctx, d)
	close(drain)
	ferr := <-finErr
	if perr != nil || ferr != nil {
		res.err = fmt.Errorf("workload: %v %v", perr, ferr)
		return res
	}
	res.created = n
	if span := led.span(); span > 0 {
		res.achieved = float64(n-1) / span.Seconds()
	}
	res.late = prod.late.Load()
	res.settled = waitSettled(ctx, led, rec, sys.deletes(), 30*time.Second)
	if cpu1, ok := sys.cpu(); ok && hasCPU {
		res.cpu = cpu1 - cpu0
	}
	res.stats = computeLag(led, rec)
	res.requests = rec.counts()
	res.notes = sys.notes()
	res.leftovers = -1
	if sys.deletes() {
		if c, err := countObjects(ctx, st, sys.prefix()); err == nil {
			res.leftovers = c
		}
	}
	return res
}

// lagCase is one size and rate of the mirror-lag workload.
type lagCase struct {
	size int
	rate float64
}

// runLag runs every case against mmsidecar, the limit and mc, and adds
// the rows.
func runLag(ctx context.Context, e *env, c config, t *table) {
	for _, lc := range c.lagCases {
		label := fmt.Sprintf("1 lag %d KiB @%.0f/s", lc.size>>10, lc.rate)
		results := map[string]lagResult{}
		systems := []struct {
			name string
			sys  func() mirrorSys
		}{
			{"limit", func() mirrorSys { return &bareSys{e: e, workers: 8} }},
			{"mmsidecar", func() mirrorSys { return &sidecarSys{e: e} }},
			{"mc", func() mirrorSys { return &mcSys{e: e} }},
		}
		for _, s := range systems {
			if len(e.lagSystems) > 0 && !e.lagSystems[s.name] {
				results[s.name] = lagResult{system: s.name, cpu: -1, err: errors.New("not run (-lagsystems)")}
				continue
			}
			if s.name == "mc" && e.mc == "" {
				results[s.name] = lagResult{system: "mc", cpu: -1, err: errors.New(e.mcWhy)}
				continue
			}
			e.log("lag: %s, %d KiB at %.0f/s for %s", s.name, lc.size>>10, lc.rate, c.lagDuration)
			r := runLagCase(ctx, e, s.sys(), s.name, lc.size, lc.rate, c.lagDuration, c.lagHold)
			results[s.name] = r
			e.log("lag: %s: %s", s.name, describeLag(r))
		}
		addLagRows(t, label, results, c.lagHold)
	}
}

func describeLag(r lagResult) string {
	if r.err != nil {
		return "error: " + r.err.Error()
	}
	p50, _ := r.stats.upPct(50)
	p99, _ := r.stats.upPct(99)
	s := fmt.Sprintf("%d entries at %.0f/s (%d late), upload p50 %s p99 %s max %s, delete p50 %s p99 %s, not uploaded %d+%d finished first, not deleted %d, leftovers %d, settled %v, cpu/entry %s, requests %v",
		r.created, r.achieved, r.late, ms(p50), ms(p99), ms(r.stats.up.pct(100)),
		ms(r.stats.del.pct(50)), ms(r.stats.del.pct(99)), r.stats.missingUp, r.stats.skippedUp, r.stats.missingDel, r.leftovers, r.settled, ms(r.cpuPerEntry()), r.requests)
	if r.notes != "" {
		s += "; " + r.notes
	}
	return s
}

// upCell formats the p-th percentile upload lag; a percentile that falls
// among files finished before any copy was made shows as "> hold".
func upCell(r lagResult, p float64, hold time.Duration) (string, time.Duration) {
	if r.err != nil {
		return "failed", -1
	}
	d, censored := r.stats.upPct(p)
	if censored {
		return "> " + ms(hold) + " (not copied before finished)", -1
	}
	s := ms(d)
	if n := r.stats.missingUp + r.stats.skippedUp; n > 0 {
		s += fmt.Sprintf(" (%d never copied)", n)
	}
	if r.notes != "" {
		s += " (restarted)"
	}
	return s, d
}

func addLagRows(t *table, label string, rs map[string]lagResult, hold time.Duration) {
	sc, lim, mc := rs["mmsidecar"], rs["limit"], rs["mc"]
	for _, p := range []float64{50, 99} {
		sa, a := upCell(sc, p, hold)
		sb, b := upCell(lim, p, hold)
		sm, m := upCell(mc, p, hold)
		r := row{Workload: label, Figure: fmt.Sprintf("upload lag p%.0f (rename → readable)", p),
			Sidecar: sa, Limit: sb, MC: sm, VsLimit: ratioD(a, b), VsMC: ratioD(a, m)}
		if p == 99 && (lim.err != nil || b < 0) {
			r.Target = "≤ 2× limit, ≤ 0.5× mc"
			r.Met = "n/a: the limit itself falls behind here"
		} else if p == 99 {
			r.Target = "≤ 2× limit, ≤ 0.5× mc"
			var miss []string
			switch {
			case a < 0 || b < 0:
				miss = append(miss, "no figure")
			case a > 2*b:
				miss = append(miss, fmt.Sprintf("%.1f× limit", float64(a)/float64(b)))
			}
			switch {
			case mc.err != nil:
				miss = append(miss, "mc n/a")
			case a >= 0 && m < 0:
				// mc did not copy its p99 at all: mmsidecar beats it.
			case a >= 0 && 2*a > m:
				miss = append(miss, fmt.Sprintf("%.2f× mc", float64(a)/float64(m)))
			}
			r.Met = "yes"
			if len(miss) > 0 {
				r.Met = "NO: " + strings.Join(miss, ", ")
			}
		}
		t.add(r)
	}
	for _, p := range []float64{50, 99} {
		a, m := sc.stats.del.pct(p), mc.stats.del.pct(p)
		r := row{Workload: label, Figure: fmt.Sprintf("delete lag p%.0f (unlink → gone)", p), Sidecar: ms(a), VsMC: ratioD(a, m)}
		if mc.err == nil {
			r.MC = ms(m)
		}
		t.add(r)
	}
	rate := func(r lagResult) string {
		if r.err != nil {
			return ""
		}
		return fmt.Sprintf("%.0f/s (%d late)", r.achieved, r.late)
	}
	t.add(row{Workload: label, Figure: "rate the producer reached (entries > 10 ms late)", Sidecar: rate(sc), Limit: rate(lim), MC: rate(mc)})
	cpuRow := row{Workload: label, Figure: "CPU per entry (create + finish)", Sidecar: ms(sc.cpuPerEntry())}
	if mc.err == nil {
		cpuRow.MC = ms(mc.cpuPerEntry())
		cpuRow.VsMC = ratioD(sc.cpuPerEntry(), mc.cpuPerEntry())
		if sc.cpuPerEntry() >= 0 && mc.cpuPerEntry() > 0 {
			cpuRow.Target = "≤ 1/3 of mc"
			r := float64(sc.cpuPerEntry()) / float64(mc.cpuPerEntry())
			if copied(sc) < 0.99 || copied(mc) < 0.99 {
				// Who skipped more entries did less work: not comparable.
				cpuRow.Met = fmt.Sprintf("n/a: %.0f%% and %.0f%% copied", 100*copied(sc), 100*copied(mc))
			} else {
				cpuRow.Met = verdict(r <= 1.0/3, fmt.Sprintf("%.2f of mc", r))
			}
		}
	}
	t.add(cpuRow)
	reqRow := row{Workload: label, Figure: "store requests per entry (proxy)",
		Sidecar: fmt.Sprintf("%.2f", sc.requestsPerEntry()), Limit: fmt.Sprintf("%.2f (PUT only)", lim.requestsPerEntry())}
	if mc.err == nil {
		reqRow.MC = fmt.Sprintf("%.2f", mc.requestsPerEntry())
	}
	t.add(reqRow)
	if mc.notes != "" {
		t.add(row{Workload: label, Figure: "mc crashes", MC: mc.notes})
	}
}

// copied is the fraction of created entries that got a copy.
func copied(r lagResult) float64 {
	if r.created == 0 {
		return 0
	}
	return float64(len(r.stats.up)) / float64(r.created)
}
