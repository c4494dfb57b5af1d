package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// progTB lets a program use storetest.StartMinIO and StartSeaweedFS,
// which are written for tests: it implements the few testing.TB methods
// the harness calls (the embedded nil TB is never reached) and turns
// Fatal into a panic that startServer recovers.
type progTB struct {
	testing.TB
	dir string

	mu       sync.Mutex
	cleanups []func()
	n        int
}

type fatalError struct{ msg string }

func (t *progTB) Helper()      {}
func (t *progTB) Name() string { return "bench" }

func (t *progTB) TempDir() string {
	t.mu.Lock()
	t.n++
	d := filepath.Join(t.dir, fmt.Sprintf("server-%d", t.n))
	t.mu.Unlock()
	if err := os.MkdirAll(d, 0o755); err != nil {
		panic(fatalError{err.Error()})
	}
	return d
}

func (t *progTB) Cleanup(f func()) {
	t.mu.Lock()
	t.cleanups = append(t.cleanups, f)
	t.mu.Unlock()
}

func (t *progTB) Fatal(args ...any)                 { panic(fatalError{fmt.Sprint(args...)}) }
func (t *progTB) Fatalf(format string, args ...any) { panic(fatalError{fmt.Sprintf(format, args...)}) }
func (t *progTB) Skipf(format string, args ...any)  { panic(fatalError{fmt.Sprintf(format, args...)}) }
func (t *progTB) Logf(format string, args ...any)   {}

// close runs the cleanups in reverse order.
func (t *progTB) close() {
	t.mu.Lock()
	cs := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}

// startMinIO starts a MinIO server of the program's own under dir; stop
// kills it.
func startMinIO(dir string, opts ...storetest.Option) (*storetest.MinIO, func(), error) {
	return startServer(dir, func(t testing.TB) *storetest.MinIO { return storetest.StartMinIO(t, opts...) })
}

// startSeaweedFS starts a one-process SeaweedFS (`weed server` with a
// filer and an S3 gateway, storetest.StartSeaweedFS) of the program's
// own under dir; stop kills it.
func startSeaweedFS(dir string) (*storetest.SeaweedFS, func(), error) {
	return startServer(dir, func(t testing.TB) *storetest.SeaweedFS { return storetest.StartSeaweedFS(t) })
}

// startServer runs one of storetest's Start functions as a program:
// its Fatal becomes the error, and stop runs its cleanups.
func startServer[T any](dir string, start func(testing.TB) T) (srv T, stop func(), err error) {
	t := &progTB{dir: dir}
	defer func() {
		if r := recover(); r != nil {
			fe, ok := r.(fatalError)
			if !ok {
				panic(r)
			}
			t.close()
			var zero T
			srv, stop, err = zero, nil, errors.New(fe.msg)
		}
	}()
	return start(t), t.close, nil
}

// benchStore is the store one pass of the run measures.
type benchStore struct {
	// name is the -stores name ("minio", "seaweedfs"); label is how
	// the table's figures call it ("MinIO", "SeaweedFS").
	name, label string
	s3          *storetest.S3
	// pids lists the store's processes, whose CPU time counts as the
	// store's work.
	pids func() []int
}

// cpu returns the CPU time the store's processes have used so far.
func (b benchStore) cpu() (time.Duration, error) {
	pids := b.pids()
	if len(pids) == 0 {
		return 0, fmt.Errorf("%s's process is not known", b.label)
	}
	var sum time.Duration
	for _, pid := range pids {
		ps, err := readProc(pid)
		if err != nil {
			return 0, err
		}
		sum += ps.CPU
	}
	return sum, nil
}

// env is what every workload shares: the store, the recording proxy in
// front of it, the binaries and a scratch directory.
type env struct {
	store   benchStore
	proxy   *proxy
	sidecar string // mmsidecar binary ("" with inproc)
	inproc  bool
	mc      string // mc binary, "" when missing
	mcWhy   string // why mc is missing
	dir     string
	log     func(format string, args ...any)
	// sidecarEnv is added to every sidecar process's environment.
	sidecarEnv []string
	// lagSystems limits the mirror-lag workload to these systems (all
	// when empty).
	lagSystems map[string]bool

	mu      sync.Mutex
	buckets int
}

// newBucket creates a fresh bucket named after what uses it.
func (e *env) newBucket(ctx context.Context, what string) (string, *s3store.Store, error) {
	e.mu.Lock()
	e.buckets++
	name := fmt.Sprintf("b%03d-%s", e.buckets, what)
	e.mu.Unlock()
	if len(name) > 63 {
		name = name[:63]
	}
	cfg := e.store.s3.Config(name)
	s, err := s3store.New(cfg)
	if err != nil {
		return "", nil, err
	}
	for {
		err = s.CreateBucket(ctx)
		if err == nil || store.KindOf(err) != store.KindTransient || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return "", nil, fmt.Errorf("create bucket %s: %w", name, err)
	}
	// A new SeaweedFS bucket refuses writes until its volumes grow.
	if err := storetest.WaitBucketWritable(cfg, time.Minute); err != nil {
		return "", nil, fmt.Errorf("bucket %s: %w", name, err)
	}
	return name, s, nil
}

// countObjects lists prefix in a bucket and counts the keys.
func countObjects(ctx context.Context, s store.Store, prefix string) (int, error) {
	n := 0
	err := s.List(ctx, prefix, func(store.Info) error { n++; return nil })
	return n, err
}

// workDir returns a new directory under the scratch directory.
func (e *env) workDir(name string) (string, error) {
	d, err := os.MkdirTemp(e.dir, name+"-")
	if err != nil {
		return "", err
	}
	return d, nil
}

// goBinary finds the go command.
func goBinary() string {
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return "go"
}

// buildSidecar builds cmd/mmsidecar into dir.
func buildSidecar(ctx context.Context, dir string) (string, error) {
	out := filepath.Join(dir, "mmsidecar")
	cmd := exec.CommandContext(ctx, goBinary(), "build", "-o", out, "github.com/mmsidecar/mmsidecar/cmd/mmsidecar")
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build cmd/mmsidecar: %w\n%s", err, msg)
	}
	return out, nil
}

// mcModule is the `mc` release the comparison runs: the same build on
// every machine, installed into the cache when missing.
const mcModule = "github.com/minio/mc@v0.0.0-20250313080218-cf909e1063a9"

// mcInstallHint says how to get the mc binary the comparison needs.
const mcInstallHint = "GOBIN=$HOME/.cache/mmsidecar/bin go install " + mcModule

// mcCachePath is where findMC looks for, and installMC puts, mc.
func mcCachePath() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".cache", "mmsidecar", "bin", "mc")
}

// findMC locates mc: $MMSIDECAR_MC_BIN, $HOME/.cache/mmsidecar/bin/mc,
// then the PATH. It reports why when there is none.
func findMC() (string, string) {
	if p := os.Getenv("MMSIDECAR_MC_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Sprintf("MMSIDECAR_MC_BIN=%s: %v", p, err)
		}
		return p, ""
	}
	if p := mcCachePath(); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p, ""
		}
	}
	if p, err := exec.LookPath("mc"); err == nil {
		return p, ""
	}
	return "", "mc not found (install it with `" + mcInstallHint + "`)"
}

// ensureMinIO builds the pinned MinIO server into the cache when the
// test setup finds none (storetest.FindMinIO): the first run on a fresh
// machine, a few minutes. A $MMSIDECAR_MINIO_BIN that points nowhere is
// reported, not papered over.
func ensureMinIO(ctx context.Context, logf func(string, ...any)) error {
	if _, err := storetest.FindMinIO(); err == nil || os.Getenv(storetest.EnvMinIOBin) != "" {
		return err
	}
	bin := filepath.Dir(mcCachePath())
	if bin == "." {
		return fmt.Errorf("install minio: no home directory")
	}
	logf("MinIO server not found: building %s into %s (once per machine, a few minutes)", storetest.MinIOVersion, bin)
	cmd := exec.CommandContext(ctx, goBinary(), "install", storetest.MinIOVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+bin, "GOFLAGS=")
	cmd.Dir = os.TempDir() // outside this module: MinIO has its own go.mod
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("install minio: go install %s: %w\n%s", storetest.MinIOVersion, err, msg)
	}
	return nil
}

// installMC builds mcModule into the cache with `go install` (a few
// minutes on 2 cores, once per machine) and returns its path.
func installMC(ctx context.Context) (string, error) {
	dst := mcCachePath()
	if dst == "" {
		return "", fmt.Errorf("install mc: no home directory")
	}
	cmd := exec.CommandContext(ctx, goBinary(), "install", mcModule)
	cmd.Env = append(os.Environ(), "GOBIN="+filepath.Dir(dst), "GOFLAGS=", "CGO_ENABLED=0")
	cmd.Dir = os.TempDir() // outside this module: mc has its own go.mod
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("install mc: go install %s: %w\n%s", mcModule, err, msg)
	}
	return dst, nil
}

// procStat is a process's CPU time and memory.
type procStat struct {
	CPU    time.Duration // user + system
	Sys    time.Duration // system only
	RSS    int64         // bytes, now
	MaxRSS int64         // bytes, peak (VmHWM)
}

// clockTicks is USER_HZ, 100 on every Linux platform Go supports here.
const clockTicks = 100

// readProc reads /proc/<pid>/stat and /proc/<pid>/status.
func readProc(pid int) (procStat, error) {
	var ps procStat
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ps, err
	}
	// The command name may contain spaces: fields start after ")".
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ps, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return ps, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	// f[0] is field 3 (state): utime is field 14, stime 15.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	ps.CPU = time.Duration(ut+st) * time.Second / clockTicks
	ps.Sys = time.Duration(st) * time.Second / clockTicks
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			ps.RSS = kb << 10
		case "VmHWM":
			ps.MaxRSS = kb << 10
		}
	}
	return ps, nil
}

// loadAvg returns the 1-minute load average, or -1.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// cleanEnv returns the environment without variables of the sidecar, MinIO
// and mc, so the caller's settings do not leak into a child.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "MMSIDECAR_") || strings.HasPrefix(kv, "MINIO_") || strings.HasPrefix(kv, "MC_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}
