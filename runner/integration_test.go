package runner_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

func TestMain(m *testing.M) {
	runnertest.MaybeRunWorker()
	if js := os.Getenv(childEnv); js != "" {
		os.Exit(mirrorChild(js))
	}
	os.Exit(m.Run())
}

// Parameters of the issue-2 integration test.
const (
	itRate     = 200              // producer entries per second
	itDuration = 30 * time.Second // producing time
	// itLagBound: an entry must be in the store this long after it
	// appeared, or this long after the mirror is ready again if a kill
	// fell into that window. MMSIDECAR_TEST_LAG_BOUND overrides it.
	itLagBound = 5 * time.Second
)

var itKills = []time.Duration{10 * time.Second, 20 * time.Second}

// TestIssue2MirrorUnderLoad runs a Mailman-shaped producer and workers at
// itRate entries/s for itDuration against a real S3 store, with the mirror in a
// separate process that is SIGKILLed twice and restarted on the same
// directories. The store must never miss a live entry for longer than the
// lag bound, and must end up holding exactly the live entries.
func TestIssue2MirrorUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: 30 s against real MinIO")
	}
	// Any S3 engine: MMSIDECAR_TEST_S3_* (the shared MinIO without it).
	mi := storetest.SharedS3(t)
	s3cfg := mi.Config(mi.NewBucket(t))
	st, err := s3store.New(s3cfg)
	if err != nil {
		t.Fatal(err)
	}
	root := queueFS(t)
	qdir := filepath.Join(root, "queue")
	for _, q := range []string{"in", "pipeline", "out", "bad"} {
		if err := os.MkdirAll(filepath.Join(qdir, q), 0o770); err != nil {
			t.Fatal(err)
		}
	}
	const node, prefix = "it1", "it"
	layout := fence.NewLayout(prefix)
	spec := childSpec{S3: s3cfg, Prefix: prefix, Node: node, QueueDir: qdir,
		StateDir: filepath.Join(root, "state"), StatusFile: childStatusPath(root)}
	if c, err := strconv.Atoi(os.Getenv("MMSIDECAR_TEST_UPLOAD_CONCURRENCY")); err == nil {
		spec.UploadConcurrency = c
	}
	child := &mirrorProc{t: t, spec: spec, logPath: filepath.Join(root, "mirror.log")}
	child.exe, child.race = childBinary(t, root)
	defer child.cleanup()
	bound := itLagBound
	if v := os.Getenv("MMSIDECAR_TEST_LAG_BOUND"); v != "" {
		if bound, err = time.ParseDuration(v); err != nil {
			t.Fatalf("MMSIDECAR_TEST_LAG_BOUND=%q: %v", v, err)
		}
	}
	lt := &liveTracker{layout: layout, node: node, bound: bound, entries: map[string]*liveEntry{}}

	child.start(lt)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The sampler lists the store continuously and checks every entry that
	// has been live for longer than the bound.
	samplePause := 50 * time.Millisecond
	if v, err := time.ParseDuration(os.Getenv("MMSIDECAR_TEST_SAMPLE_PAUSE")); err == nil {
		samplePause = v
	}
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var listTime atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for sampleCtx.Err() == nil {
			ts := time.Now()
			keys, err := listKeys(sampleCtx, st, layout.NodePrefix(node))
			te := time.Now()
			if err == nil {
				lt.check(ts, te, keys)
				listTime.Add(int64(te.Sub(ts)))
			}
			select {
			case <-sampleCtx.Done():
			case <-time.After(samplePause):
			}
		}
	}()

	workCtx, stopWork := context.WithCancel(ctx)
	onEvent := func(ev runnertest.Event) {
		switch ev.Kind {
		case runnertest.Created:
			lt.created(ev.Queue, ev.Base, ev.Ext, ev.At)
		case runnertest.Removing:
			lt.removing(ev.Queue, ev.Base, ev.Ext, ev.At)
		}
	}
	// Two hops: in -> out (every 50th preserved into bad) -> finished,
	// with Mailman's listing rhythm and a slow last hop (SMTP), so that
	// many entries live longer than the lag bound and get checked.
	hops := []*runnertest.Worker{
		{Queue: "in", Next: "out", Poll: 500 * time.Millisecond, PreserveEvery: 50},
		{Queue: "out", Poll: 500 * time.Millisecond, MinAge: 3 * time.Second},
	}
	workErr := make(chan error, len(hops)+1)
	for _, w := range hops {
		w.QueueDir, w.Node, w.OnEvent = qdir, node, onEvent
		wg.Add(1)
		go func() { defer wg.Done(); workErr <- w.Run(workCtx) }()
	}
	prodCtx, stopProducing := context.WithTimeout(workCtx, itDuration)
	defer stopProducing()
	p := &runnertest.Producer{Dir: filepath.Join(qdir, "in"), Rate: itRate, IDPrefix: "e", OnCreate: func(base, _ string, at time.Time) {
		lt.created("in", base, "pck", at)
	}}
	produced := make(chan int, 1)
	start := time.Now()
	go func() {
		n, err := p.Run(prodCtx)
		if err != nil {
			workErr <- err
		}
		produced <- n
	}()
	for _, at := range itKills {
		select {
		case <-time.After(time.Until(start.Add(at))):
		case err := <-workErr:
			t.Fatalf("producer or worker failed: %v", err)
		}
		child.kill(lt)
		child.start(lt)
	}
	n := <-produced
	elapsed := time.Since(start)
	stopWork()
	stopSampling()
	wg.Wait()
	close(workErr)
	for err := range workErr {
		if err != nil {
			t.Fatalf("producer or worker failed: %v", err)
		}
	}

	// Converge: the store must hold exactly the live entries.
	var live, stored []string
	deadline := time.Now().Add(60 * time.Second)
	for {
		live = liveKeys(t, qdir, layout, node)
		m, err := listKeys(ctx, st, layout.NodePrefix(node))
		if err != nil {
			t.Fatal(err)
		}
		stored = sortedKeys(m)
		if strings.Join(live, "\n") == strings.Join(stored, "\n") || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	child.stop()
	if d := diff(live, stored); d != "" {
		t.Errorf("store does not hold exactly the %d live entries: %s", len(live), d)
	}

	// Report.
	lt.mu.Lock()
	defer lt.mu.Unlock()
	files := len(lt.entries)
	perQueue := map[string]int{}
	for _, k := range live {
		if ref, ok := layout.ParseMirrorKey(k); ok {
			perQueue[ref.Entry.Queue]++
		}
	}
	t.Logf("produced %d entries in %.1fs (%.0f/s), %d entry files in all (%d hops), %d live at the end %v",
		n, elapsed.Seconds(), float64(n)/elapsed.Seconds(), files, len(hops), len(live), perQueue)
	t.Logf("lag bound: an entry must be in the store %v after it appeared, or %v after the mirror was ready again when a kill fell into that window", bound, bound)
	for i, d := range lt.downs {
		t.Logf("kill %d: mirror down %.2fs (SIGKILL to ready after reconcile)", i+1, d.to.Sub(d.from).Seconds())
	}
	t.Logf("store sampled %d times (a listing took %.0fms on average), %d entry checks, %d violations (worst: missing %.2fs after appearing)",
		lt.samples, float64(listTime.Load())/float64(max(lt.samples, 1))/1e6, lt.checked, lt.violations, lt.worst.Seconds())
	snap := child.total
	t.Logf("mirror lag over %d uploads: p50 %.3fs, p99 %.3fs, mean %.3fs; mean PUT %.1fms; %.0f copies deleted",
		snap.LagCount, snap.quantile(.5), snap.quantile(.99), snap.LagSum/float64(max(snap.LagCount, 1)),
		1000*snap.PutSeconds/float64(max(snap.PutCount, 1)), snap.Deletes)
	var reqs []string
	total := 0.0
	for k, v := range snap.Requests {
		reqs = append(reqs, fmt.Sprintf("%s=%.0f", k, v))
		total += v
	}
	sort.Strings(reqs)
	t.Logf("store requests: %s (%.2f per entry file)", strings.Join(reqs, " "), total/float64(max(files, 1)))
	t.Logf("upload concurrency %d (0: default)", spec.UploadConcurrency)
	t.Logf("mirror process: %.2f CPU seconds in all, %.2f per 1,000 entry files; peak RSS (VmHWM) %.1f MiB (race detector: %v)",
		child.cpu.Seconds(), child.cpu.Seconds()/float64(max(files, 1))*1000, float64(snap.HWMKiB)/1024, child.race)
	if lt.violations > 0 {
		t.Errorf("%d times a live entry was missing from the store past the lag bound; e.g. %s", lt.violations, strings.Join(lt.examples, "; "))
	}
	if lt.checked == 0 {
		t.Error("no entry was ever checked: the test proves nothing")
	}
}

// mirrorProc is the mirror running in a re-executed test binary.
type mirrorProc struct {
	t       *testing.T
	exe     string
	race    bool // built with the race detector
	spec    childSpec
	logPath string
	cmd     *exec.Cmd
	status  childStatus
	total   snapshot
	cpu     time.Duration
}

func (p *mirrorProc) start(lt *liveTracker) {
	t := p.t
	os.Remove(p.spec.StatusFile)
	js, _ := json.Marshal(p.spec)
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(p.exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	p.cmd = cmd
	deadline := time.Now().Add(60 * time.Second)
	for {
		if st, ok := readStatus(p.spec.StatusFile); ok && st.Ready && st.PID == cmd.Process.Pid {
			p.status = st
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirror process not ready after 60s; log:\n%s", tailFile(p.logPath))
		}
		time.Sleep(5 * time.Millisecond)
	}
	lt.up(time.Now())
}

// kill scrapes the process's metrics and SIGKILLs it.
func (p *mirrorProc) kill(lt *liveTracker) {
	p.scrape()
	lt.down(time.Now())
	p.cmd.Process.Kill()
	p.wait()
}

// stop scrapes the metrics and stops the process with SIGTERM.
func (p *mirrorProc) stop() {
	p.scrape()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(); err != nil {
		p.t.Errorf("mirror process: %v; log:\n%s", err, tailFile(p.logPath))
	}
}

func (p *mirrorProc) scrape() {
	s, err := fetchSnapshot(p.status.Addr)
	if err != nil {
		p.t.Errorf("scrape mirror metrics: %v", err)
		return
	}
	p.total.add(s)
}

func (p *mirrorProc) wait() error {
	err := p.cmd.Wait()
	if ru, ok := p.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		p.cpu += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	p.cmd = nil
	return err
}

func (p *mirrorProc) cleanup() {
	if p.cmd != nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

// queueFS returns a directory for the queues on tmpfs (/dev/shm) when there
// is one: the test's own producer and workers fsync every entry like
// Mailman, and on a shared 2-core machine those fsyncs compete with
// MinIO's for the one disk, which measures the disk rather than the
// mirror. MMSIDECAR_TEST_QUEUE_DISK=1 keeps them on disk.
func queueFS(t *testing.T) string {
	if os.Getenv("MMSIDECAR_TEST_QUEUE_DISK") != "1" {
		if dir, err := os.MkdirTemp("/dev/shm", "mmsidecar-it-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			t.Logf("queues on tmpfs: %s", dir)
			return dir
		}
	}
	return t.TempDir()
}

// childBinary returns the test binary the mirror process runs: this one,
// or, under the race detector (which multiplies CPU and memory and would
// make the figures meaningless), the same tests built without it, unless
// MMSIDECAR_TEST_CHILD_RACE=1.
func childBinary(t *testing.T, dir string) (exe string, race bool) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if !raceEnabled || os.Getenv("MMSIDECAR_TEST_CHILD_RACE") == "1" {
		return exe, raceEnabled
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		if gobin, err = exec.LookPath("go"); err != nil {
			t.Logf("no go tool to build the mirror without the race detector: its figures include the race detector's cost")
			return exe, true
		}
	}
	out := filepath.Join(dir, "runner-norace.test")
	start := time.Now()
	build := exec.Command(gobin, "test", "-c", "-o", out, ".")
	if msg, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the mirror without the race detector: %v\n%s", err, msg)
	}
	t.Logf("built the mirror process without the race detector in %.1fs", time.Since(start).Seconds())
	return out, false
}

func tailFile(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func listKeys(ctx context.Context, st store.Store, prefix string) (map[string]bool, error) {
	keys := make(map[string]bool)
	err := st.List(ctx, prefix, func(i store.Info) error {
		keys[i.Key] = true
		return nil
	})
	return keys, err
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// liveKeys maps the valid entries in the queue directories to epoch-1 keys.
func liveKeys(t *testing.T, qdir string, layout fence.Layout, node string) []string {
	var keys []string
	for _, q := range []string{"in", "pipeline", "out", "bad"} {
		ents, err := os.ReadDir(filepath.Join(qdir, q))
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range ents {
			if base, ext, ok := fence.ParseFileName(de.Name()); ok {
				keys = append(keys, layout.MirrorKey(node, 1, fence.Entry{Queue: q, Base: base, Kind: fence.KindOfExt(ext)}))
			}
		}
	}
	sort.Strings(keys)
	return keys
}

func diff(want, got []string) string {
	w, g := map[string]bool{}, map[string]bool{}
	for _, k := range want {
		w[k] = true
	}
	for _, k := range got {
		g[k] = true
	}
	var missing, extra []string
	for k := range w {
		if !g[k] {
			missing = append(missing, k)
		}
	}
	for k := range g {
		if !w[k] {
			extra = append(extra, k)
		}
	}
	if len(missing) == 0 && len(extra) == 0 {
		return ""
	}
	return fmt.Sprintf("%d missing (e.g. %v), %d extra (e.g. %v)", len(missing), head(missing), len(extra), head(extra))
}

func head(s []string) []string {
	sort.Strings(s)
	return s[:min(len(s), 3)]
}
