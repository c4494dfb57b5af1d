// Command bench measures mmsidecar against the physical limit (bare
// minio-go requests to the same store) and against `mc mirror --watch`,
// in one run, on a store server of its own on 127.0.0.1, and prints a
// table of absolute figures and ratios:
//
//	go run ./bench           # the full run (about 20 minutes on 2 cores)
//	go run ./bench -quick    # seconds per workload
//	go run ./bench -stores minio,seaweedfs -only lag,hops,takeover,requests
//	                         # the store column: the same workloads on
//	                         # MinIO, then on SeaweedFS (`weed server`)
//
// Workloads: 1 mirror lag, 2 hop throughput, 3 store cost, 4 takeover,
// 5 scale, 6 MinIO's CPU per request kind (what bounds a takeover). The
// mirror workloads' store requests go through a recording proxy, which
// timestamps the moment MinIO answers each write and delete; the takeover
// and request-cost workloads talk to MinIO directly.
// Figures are printed, never asserted.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// config sizes the workloads.
type config struct {
	lagCases    []lagCase
	lagDuration time.Duration
	lagHold     time.Duration

	hopStep     time.Duration // how long each offered rate runs
	hopLagBound time.Duration // upload lag p99 the sidecar must stay under
	hopMaxSteps int
	rawDuration time.Duration
	costRate    float64 // entries per second for the store-cost run

	idleTTL time.Duration
	idleFor time.Duration

	takeoverCounts    []int
	takeoverSurvivors []int
	takeoverTTL       time.Duration // zero: the binary's defaults

	scaleEntries    int
	gracefulEntries int

	requestCount int // requests of each kind in the request-cost workload
}

func fullConfig() config {
	return config{
		lagCases:    []lagCase{{4 << 10, 100}, {64 << 10, 100}, {4 << 10, 1000}, {64 << 10, 1000}},
		lagDuration: 15 * time.Second, lagHold: 2 * time.Second,
		hopStep: 10 * time.Second, hopLagBound: time.Second, hopMaxSteps: 8, rawDuration: 10 * time.Second, costRate: 100,
		idleTTL: 3 * time.Second, idleFor: 60 * time.Second,
		takeoverCounts: []int{1000, 10000}, takeoverSurvivors: []int{2, 4},
		scaleEntries: 100000, gracefulEntries: 5000,
		requestCount: 4000,
	}
}

func quickConfig() config {
	return config{
		lagCases:    []lagCase{{4 << 10, 100}, {4 << 10, 1000}},
		lagDuration: 3 * time.Second, lagHold: time.Second,
		hopStep: 3 * time.Second, hopLagBound: time.Second, hopMaxSteps: 4, rawDuration: 3 * time.Second, costRate: 100,
		idleTTL: 1500 * time.Millisecond, idleFor: 9 * time.Second,
		takeoverCounts: []int{200}, takeoverSurvivors: []int{2},
		takeoverTTL:  1500 * time.Millisecond,
		scaleEntries: 2000, gracefulEntries: 300,
		requestCount: 500,
	}
}

// workloads names the workloads in order.
var workloads = []string{"lag", "hops", "idle", "takeover", "scale", "requests"}

func main() {
	os.Exit(mainErr())
}

func mainErr() int {
	quick := flag.Bool("quick", false, "short run: smaller counts, seconds per workload")
	only := flag.String("only", strings.Join(workloads, ","), "comma-separated workloads to run: "+strings.Join(workloads, ", "))
	inproc := flag.Bool("inproc", false, "run the sidecar in this process (runner + fence, no start-up probe) instead of the binary; for profiles, no per-process CPU or RSS")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process to `file` (use with -inproc)")
	memprofile := flag.String("memprofile", "", "write a heap profile of this process to `file` at the end (use with -inproc)")
	sidecarBin := flag.String("sidecar", "", "mmsidecar binary to test (default: build cmd/mmsidecar)")
	drives := flag.Int("drives", 1, "MinIO drives (4: an erasure set)")
	stores := flag.String("stores", "minio", "comma-separated stores to run the workloads on, one after the other: minio, seaweedfs (a one-process `weed server` with a filer and an S3 gateway)")
	keep := flag.Bool("keep", false, "keep the scratch directory (logs of every process)")
	noMCInstall := flag.Bool("no-mc-install", false, "do not install mc when it is missing (the comparison is then left out)")
	sidecarEnv := flag.String("sidecarenv", "", "comma-separated `K=V` pairs added to the sidecar binary's environment (e.g. MMSIDECAR_UPLOAD_CONCURRENCY=16,GOGC=200)")
	lagSystems := flag.String("lagsystems", "limit,mmsidecar,mc", "systems the mirror-lag workload runs (for profiling one)")
	takeoverEntries := flag.String("takeover-entries", "", "override: comma-separated entry counts of the takeover workload")
	takeoverSurvivors := flag.String("takeover-survivors", "", "override: comma-separated survivor counts of the takeover workload")
	takeoverTTL := flag.Duration("takeover-ttl", 0, "override: lease TTL of the takeover workload (grace TTL/3, margin TTL/5; 0: as the mode says)")
	scaleEntries := flag.Int("scale-entries", 0, "override: entries of the scale workload")
	lagCases := flag.String("lag-cases", "", "override: comma-separated mirror-lag cases as SIZE@RATE, e.g. 4k@100,64k@1000")
	lagDuration := flag.Duration("lag-duration", 0, "override: how long each mirror-lag case produces entries")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := fullConfig()
	if *quick {
		c = quickConfig()
	}
	if err := applyOverrides(&c, *takeoverEntries, *takeoverSurvivors, *takeoverTTL, *scaleEntries); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	if err := applyLagOverrides(&c, *lagCases, *lagDuration); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		pprof.StartCPUProfile(f)
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	opts := runOptions{installMC: !*noMCInstall, only: *only, stores: *stores, inproc: *inproc, sidecar: *sidecarBin, drives: *drives, keep: *keep, lagSystems: *lagSystems, sidecarEnv: *sidecarEnv}
	t, err := run(ctx, c, opts, os.Stderr)
	if *memprofile != "" {
		if f, ferr := os.Create(*memprofile); ferr == nil {
			runtime.GC()
			pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	if t != nil {
		fmt.Println()
		t.print(os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

// runOptions are the flags that are not workload sizes.
type runOptions struct {
	only    string
	inproc  bool
	sidecar string
	drives  int
	keep    bool
	// installMC installs mc into the cache when it is missing.
	installMC bool
	// sidecarEnv is a comma-separated list of K=V for the sidecar binary.
	sidecarEnv string
	// lagSystems is a comma-separated subset of limit, mmsidecar, mc.
	lagSystems string
	// stores is a comma-separated list of minio, seaweedfs.
	stores string
	// dir is the scratch directory; empty: a new temporary one.
	dir string
	// minio is a server to use instead of starting one (tests).
	minio *storetest.MinIO
}

// run prepares the environment, runs the selected workloads and returns
// the table. Progress goes to logw.
func run(ctx context.Context, c config, o runOptions, logw io.Writer) (*table, error) {
	logf := func(format string, args ...any) {
		fmt.Fprintf(logw, "%s load %.1f  %s\n", time.Now().Format("15:04:05"), loadAvg(), fmt.Sprintf(format, args...))
	}
	dir := o.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "mmsidecar-bench-")
		if err != nil {
			return nil, err
		}
		dir = d
		if o.keep {
			logf("scratch directory (kept): %s", dir)
		} else {
			defer os.RemoveAll(dir)
		}
	}
	e := &env{dir: dir, inproc: o.inproc, log: logf, lagSystems: map[string]bool{}}
	for _, kv := range strings.Split(o.sidecarEnv, ",") {
		if kv = strings.TrimSpace(kv); kv != "" {
			e.sidecarEnv = append(e.sidecarEnv, kv)
		}
	}
	for _, s := range strings.Split(o.lagSystems, ",") {
		if s = strings.TrimSpace(s); s != "" {
			e.lagSystems[s] = true
		}
	}
	if !o.inproc {
		e.sidecar = o.sidecar
		if e.sidecar == "" {
			logf("building cmd/mmsidecar")
			var err error
			if e.sidecar, err = buildSidecar(ctx, dir); err != nil {
				return nil, err
			}
		}
	}
	logf("load average at start: %.1f on %d CPUs (a load above the CPU count starves every process measured)", loadAvg(), runtime.NumCPU())
	e.mc, e.mcWhy = findMC()
	if e.mc == "" && o.installMC && e.lagSystems["mc"] {
		logf("mc not found: installing %s into %s (once per machine)", mcModule, filepath.Dir(mcCachePath()))
		var ierr error
		if e.mc, ierr = installMC(ctx); ierr != nil {
			e.mcWhy = ierr.Error()
		}
	}
	if e.mc == "" {
		logf("mc comparison skipped: %s", e.mcWhy)
	}
	t := &table{}
	stores := o.stores
	if stores == "" {
		stores = "minio"
	}
	var firstErr error
	for _, name := range strings.Split(stores, ",") {
		name = strings.TrimSpace(name)
		if ctx.Err() != nil {
			break
		}
		if err := runStore(ctx, e, c, o, name, t); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return t, firstErr
}

// runStore starts the named store, runs the selected workloads on it
// with its name in the table's store column, and stops it.
func runStore(ctx context.Context, e *env, c config, o runOptions, name string, t *table) error {
	logf := e.log
	switch name {
	case "minio":
		m := o.minio
		if m == nil {
			if err := ensureMinIO(ctx, logf); err != nil {
				return err
			}
			var mopts []storetest.Option
			if o.drives > 1 {
				mopts = append(mopts, storetest.WithDrives(o.drives))
			}
			var stopMinIO func()
			var err error
			m, stopMinIO, err = startMinIO(e.dir, mopts...)
			if err != nil {
				return fmt.Errorf("start MinIO: %w", err)
			}
			defer stopMinIO()
		}
		e.store = benchStore{name: name, label: "MinIO",
			s3:   &storetest.S3{Name: name, Endpoint: m.Endpoint, AccessKey: m.AccessKey, SecretKey: m.SecretKey},
			pids: func() []int { return nonZero(m.PID()) }}
		logf("MinIO %s (%d drive(s))", m.Endpoint, max(o.drives, 1))
	case "seaweedfs":
		if _, err := storetest.FindWeed(); err != nil {
			return fmt.Errorf("seaweedfs: %w", err)
		}
		sw, stopWeed, err := startSeaweedFS(e.dir)
		if err != nil {
			return fmt.Errorf("start SeaweedFS: %w", err)
		}
		defer stopWeed()
		e.store = benchStore{name: name, label: "SeaweedFS", s3: sw.S3, pids: sw.PIDs}
		logf("SeaweedFS %s (one `weed server` process: master, volume server, filer, S3 gateway)", sw.Endpoint)
	default:
		return fmt.Errorf("-stores: unknown store %q (want minio or seaweedfs)", name)
	}
	p, err := startProxy(e.store.s3.Endpoint)
	if err != nil {
		return err
	}
	defer p.close()
	e.proxy = p
	t.setStore(name)
	logf("%s behind proxy %s; sidecar %s; mc %q", e.store.label, p.addr, map[bool]string{true: "in-process", false: e.sidecar}[o.inproc], e.mc)

	want := map[string]bool{}
	for _, w := range strings.Split(o.only, ",") {
		want[strings.TrimSpace(w)] = true
	}
	steps := []struct {
		name string
		f    func(context.Context, *env, config, *table) error
	}{
		{"lag", func(ctx context.Context, e *env, c config, t *table) error { runLag(ctx, e, c, t); return nil }},
		{"hops", runHops},
		{"idle", runIdle},
		{"takeover", runTakeover},
		{"scale", runScale},
		{"requests", runRequests},
	}
	var firstErr error
	for _, s := range steps {
		if !want[s.name] || ctx.Err() != nil {
			continue
		}
		logf("=== %s on %s", s.name, name)
		if err := s.f(ctx, e, c, t); err != nil {
			logf("%s on %s failed: %v", s.name, name, err)
			t.add(row{Workload: s.name, Figure: "error", Sidecar: firstLine(err.Error())})
			if firstErr == nil {
				firstErr = fmt.Errorf("%s on %s: %w", s.name, name, err)
			}
		}
	}
	return firstErr
}

// nonZero lists pid unless it is 0 (a process that is not running).
func nonZero(pid int) []int {
	if pid == 0 {
		return nil
	}
	return []int{pid}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// applyOverrides applies the sizing flags to c.
func applyOverrides(c *config, entries, survivors string, ttl time.Duration, scale int) error {
	ints := func(name, v string) ([]int, error) {
		var out []int
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 {
				return nil, fmt.Errorf("-%s: %q is not a positive number", name, f)
			}
			out = append(out, n)
		}
		return out, nil
	}
	var err error
	if entries != "" {
		if c.takeoverCounts, err = ints("takeover-entries", entries); err != nil {
			return err
		}
	}
	if survivors != "" {
		if c.takeoverSurvivors, err = ints("takeover-survivors", survivors); err != nil {
			return err
		}
	}
	if ttl > 0 {
		c.takeoverTTL = ttl
	}
	if scale > 0 {
		c.scaleEntries = scale
	}
	return nil
}

// applyLagOverrides applies -lag-cases and -lag-duration to c.
func applyLagOverrides(c *config, cases string, d time.Duration) error {
	if d > 0 {
		c.lagDuration = d
	}
	if cases == "" {
		return nil
	}
	c.lagCases = nil
	for _, f := range strings.Split(cases, ",") {
		size, rate, ok := strings.Cut(strings.TrimSpace(f), "@")
		kib, err := strconv.Atoi(strings.TrimSuffix(strings.ToLower(size), "k"))
		r, rerr := strconv.ParseFloat(rate, 64)
		if !ok || err != nil || rerr != nil || kib <= 0 || r <= 0 {
			return fmt.Errorf("-lag-cases: %q is not SIZE@RATE (e.g. 4k@100)", f)
		}
		c.lagCases = append(c.lagCases, lagCase{kib << 10, r})
	}
	return nil
}
