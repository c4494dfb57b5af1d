package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
	"github.com/mmsidecar/mmsidecar/store"
)

// writeEntries puts n Mailman-named entries of size bytes into dir, the
// way Mailman does (temp file, rename) but without fsync: this is set-up,
// not a measured workload.
func writeEntries(dir string, n, size int) error {
	if err := os.MkdirAll(dir, 0o770); err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				body := runnertest.Body("s"+strconv.Itoa(i), size)
				base := runnertest.NewBase(time.Now(), body)
				tmp := filepath.Join(dir, base+".pck.tmp")
				if err := os.WriteFile(tmp, body, 0o660); err != nil {
					errs <- err
					return
				}
				if err := os.Rename(tmp, filepath.Join(dir, base+".pck")); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// countEntries counts the valid .pck names in dir.
func countEntries(dir string) (map[string]bool, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(ents))
	for _, de := range ents {
		if base, ext, ok := fence.ParseFileName(de.Name()); ok && ext == fence.ExtPck {
			out[base] = true
		}
	}
	return out, nil
}

// countNames counts the names in dir that end in suffix, without
// parsing them.
func countNames(dir, suffix string) (int, error) {
	f, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	k := 0
	for _, name := range names {
		if strings.HasSuffix(name, suffix) {
			k++
		}
	}
	return k, err
}

// check counts the restored entries by name across the survivors'
// queue directories: restored, duplicates and the split.
func (r *takeoverResult) check(roots []string) error {
	seen := map[string]int{}
	r.perSurvivor = r.perSurvivor[:0]
	for _, root := range roots {
		got, err := countEntries(filepath.Join(root, "in"))
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		r.perSurvivor = append(r.perSurvivor, len(got))
		for b := range got {
			seen[b]++
		}
	}
	r.restored, r.dups = len(seen), 0
	for _, k := range seen {
		if k > 1 {
			r.dups++
		}
	}
	return nil
}

// takeoverResult is one takeover run.
type takeoverResult struct {
	n, survivors     int
	ttl, grace       time.Duration
	detect, total    time.Duration // kill -> declared dead; kill -> all restored
	restored, dups   int
	perSurvivor      []int
	requestsPerEntry float64
	ops              map[string]float64
	uploadSetup      time.Duration
	completed        bool
	// cpu is what the store and the survivors used from the kill to the end
	// of the poll.
	cpu      cpuSample
	requests float64
}

// runTakeoverCase kills a node holding n entries and times their restore
// on the survivors.
func runTakeoverCase(ctx context.Context, e *env, c config, n, survivors int) (takeoverResult, error) {
	res := takeoverResult{n: n, survivors: survivors, detect: -1, total: -1}
	ttl := c.takeoverTTL
	grace, margin := timing(ttl)
	res.ttl, res.grace = ttl, grace
	if ttl == 0 {
		res.ttl, res.grace = defaultTTL, defaultGrace
	}
	bucket, st, err := e.newBucket(ctx, fmt.Sprintf("takeover-%d-%d", n, survivors))
	if err != nil {
		return res, err
	}
	var scs []sidecar
	defer func() {
		for _, sc := range scs {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			sc.stop(sctx)
			cancel()
		}
	}()
	start := func(node string, entries int) (sidecar, string, error) {
		root, err := e.workDir(node)
		if err != nil {
			return nil, "", err
		}
		if err := writeEntries(filepath.Join(root, "in"), entries, 4<<10); err != nil {
			return nil, "", err
		}
		sc, err := e.startSidecar(ctx, sidecarOpts{Node: node, QueueDir: root, Bucket: bucket, TTL: ttl, Grace: grace, Margin: margin, Direct: true})
		return sc, root, err
	}
	var roots []string
	for i := range survivors {
		sc, root, err := start(fmt.Sprintf("s%d", i+1), 0)
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(root)
		scs, roots = append(scs, sc), append(roots, root)
	}
	t0 := time.Now()
	victim, vroot, err := start("victim", n)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(vroot)
	for _, sc := range append(scs, victim) {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		err := sc.waitReady(rctx)
		cancel()
		if err != nil {
			return res, err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	err = waitUploads(wctx, victim, float64(n))
	cancel()
	if err != nil {
		return res, fmt.Errorf("victim upload: %w", err)
	}
	res.uploadSetup = time.Since(t0)
	before := make([]metrics, len(scs))
	for i, sc := range scs {
		if before[i], err = sc.metrics(ctx); err != nil {
			return res, err
		}
	}
	e.log("takeover: victim holds %d entries in the store (%s); killing it", n, secs(res.uploadSetup))
	cpu0 := takeoverCPU(e, scs)
	victim.kill()
	killed := time.Now()
	leaseKey := fence.NewLayout("mmsidecar").LeaseKey("victim")
	deadline := killed.Add(res.ttl + res.grace + 2*time.Minute + time.Duration(n)*20*time.Millisecond)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if res.detect < 0 {
			if data, _, err := store.GetBytes(ctx, st, leaseKey); err == nil {
				if l, err := fence.DecodeLease(data); err == nil && l.State == fence.StateDead {
					res.detect = time.Since(killed)
				}
			}
		}
		// The poll reads names only: parsing 10,000 names ten times a
		// second took a fifth of the CPU the store and the survivors
		// share. Names are checked once the count is reached.
		polled := 0
		for _, root := range roots {
			k, err := countNames(filepath.Join(root, "in"), ".pck")
			if err != nil && !os.IsNotExist(err) {
				return res, err
			}
			polled += k
		}
		if polled >= n {
			res.total = time.Since(killed)
			if err := res.check(roots); err != nil {
				return res, err
			}
			if res.restored >= n {
				res.completed = true
				break
			}
			res.total = 0
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.cpu = takeoverCPU(e, scs).sub(cpu0)
	if !res.completed {
		if err := res.check(roots); err != nil {
			return res, err
		}
	}
	var ops map[string]float64
	total := 0.0
	for i, sc := range scs {
		m, err := sc.metrics(ctx)
		if err != nil {
			return res, err
		}
		d, t := opsDelta(before[i], m)
		total += t
		if ops == nil {
			ops = map[string]float64{}
		}
		for op, v := range d {
			ops[op] += v
		}
	}
	res.ops, res.requests, res.requestsPerEntry = ops, total, total/float64(max(res.restored, 1))
	return res, nil
}

// cpuSample is the CPU time the store and the survivors have used so
// far; -1 where it cannot be read (in-process survivors have no process).
type cpuSample struct{ store, survivors time.Duration }

// sub is the CPU used between b and s; -1 where either is unknown.
func (s cpuSample) sub(b cpuSample) cpuSample {
	d := func(x, y time.Duration) time.Duration {
		if x < 0 || y < 0 {
			return -1
		}
		return x - y
	}
	return cpuSample{d(s.store, b.store), d(s.survivors, b.survivors)}
}

// takeoverCPU samples the store's and the survivors' CPU time: what
// bounds a restore on a machine they share.
func takeoverCPU(e *env, scs []sidecar) cpuSample {
	s := cpuSample{store: -1, survivors: -1}
	if c, err := e.store.cpu(); err == nil {
		s.store = c
	}
	var sum time.Duration
	for _, sc := range scs {
		ps, err := procOf(sc)
		if err != nil {
			return s
		}
		sum += ps.CPU
	}
	s.survivors = sum
	return s
}

// cpuRow describes where the CPU of a takeover went, and the shortest
// restore the store's share alone allows on this machine's cores; label
// names the store.
func (r takeoverResult) cpuRow(label string) string {
	if r.cpu.store < 0 {
		return "not measured (" + label + "'s process is not known)"
	}
	out := fmt.Sprintf("%s %s (%.2f ms per request)", label, secs(r.cpu.store), r.cpu.store.Seconds()*1000/max(r.requests, 1))
	if r.cpu.survivors >= 0 {
		out += fmt.Sprintf(", survivors %s", secs(r.cpu.survivors))
	}
	floor := r.cpu.store / time.Duration(runtime.NumCPU())
	return out + fmt.Sprintf("; %s's work alone on %d cores: ≥ %s of restore", label, runtime.NumCPU(), secs(floor))
}

// runTakeover runs every count with every number of survivors.
func runTakeover(ctx context.Context, e *env, c config, t *table) error {
	for _, n := range c.takeoverCounts {
		for _, k := range c.takeoverSurvivors {
			e.log("takeover: %d entries, %d survivors", n, k)
			r, err := runTakeoverCase(ctx, e, c, n, k)
			if err != nil {
				return err
			}
			e.log("takeover: %d entries, %d survivors: detect %s, all restored %s (%d restored, %d on two nodes, split %v), %.2f requests per entry (%s); CPU %s",
				n, k, secs(r.detect), secs(r.total), r.restored, r.dups, r.perSurvivor, r.requestsPerEntry, formatOps(r.ops, float64(max(r.restored, 1))), r.cpuRow(e.store.label))
			bound := r.ttl + r.grace + 20*time.Second
			restore := time.Duration(-1)
			if r.total >= 0 && r.detect >= 0 {
				restore = r.total - r.detect
			}
			row := row{Workload: fmt.Sprintf("4 takeover %d entries, %d survivors", n, k),
				Figure:  fmt.Sprintf("kill → all restored (TTL %s + grace %s)", r.ttl, r.grace),
				Sidecar: fmt.Sprintf("%s (detect %s + restore %s, %.0f/s)", secs(r.total), secs(r.detect), secs(restore), float64(n)/restore.Seconds()),
				Target:  "≤ TTL + grace + 20 s = " + secs(bound)}
			switch {
			case !r.completed:
				row.Sidecar = fmt.Sprintf("incomplete: %d of %d restored", r.restored, n)
				row.Met = "NO"
			case r.dups > 0:
				row.Met = fmt.Sprintf("NO: %d entries on two survivors", r.dups)
			default:
				row.Met = verdict(r.total <= bound, fmt.Sprintf("%s over", secs(r.total-bound)))
			}
			t.add(row)
			t.add(row2(fmt.Sprintf("4 takeover %d entries, %d survivors", n, k), "store requests per restored entry (survivors)",
				fmt.Sprintf("%.2f (%s)", r.requestsPerEntry, formatOps(r.ops, float64(max(r.restored, 1))))))
			t.add(row2(fmt.Sprintf("4 takeover %d entries, %d survivors", n, k), "CPU, kill → all restored", r.cpuRow(e.store.label)))
		}
	}
	return nil
}

// row2 is an informational row.
func row2(workload, figure, value string) row {
	return row{Workload: workload, Figure: figure, Sidecar: value}
}
