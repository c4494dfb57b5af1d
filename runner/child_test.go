package runner_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner"
	"github.com/mmsidecar/mmsidecar/store/s3store"
	"github.com/mmsidecar/mmsidecar/store/storemetrics"
)

// childEnv hands a childSpec to a re-executed test binary, which then runs
// a Mirror instead of the tests (see TestMain).
const childEnv = "MMSIDECAR_TEST_MIRROR_CHILD"

// childProfileEnv, if set, makes the mirror process write a CPU profile to
// "<value>.<pid>".
const childProfileEnv = "MMSIDECAR_TEST_MIRROR_CPUPROFILE"

// childSpec configures the mirror process of the integration test.
type childSpec struct {
	S3       s3store.Config
	Prefix   string
	Node     string
	QueueDir string
	StateDir string
	// UploadConcurrency is the mirror's (0: its default).
	UploadConcurrency int
	// StatusFile receives a childStatus once the mirror serves and again
	// once it is ready.
	StatusFile string
}

// childStatus is what the mirror process reports through its status file.
type childStatus struct {
	PID   int
	Addr  string // host:port of the /snapshot endpoint
	Ready bool
}

// snapshot is the mirror process's metrics as the test reads them.
type snapshot struct {
	LagBounds []float64 // histogram upper bounds
	LagCounts []uint64  // cumulative counts per bound
	LagCount  uint64
	LagSum    float64
	Uploads   float64
	Deletes   float64
	Requests  map[string]float64 // "op code" -> count
	// PutSeconds and PutCount are the summed duration and number of PUTs.
	PutSeconds float64
	PutCount   uint64
	// HWMKiB is the process's peak resident set (VmHWM): unlike the
	// rusage maxrss of a child, it does not count the parent's memory
	// that the vfork-style spawn shared before exec.
	HWMKiB int64
}

// mirrorChild runs a Mirror with the fixed gate {Epoch 1, Writable} until
// SIGTERM, then flushes. It returns the exit code.
func mirrorChild(js string) int {
	var spec childSpec
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "mirror child: bad spec:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s3, err := s3store.New(spec.S3)
	if err != nil {
		log.Error("store", "err", err)
		return 1
	}
	reg := prometheus.NewRegistry()
	sm := storemetrics.NewMetrics(reg)
	met := runner.NewMetrics(reg)
	gate := fence.Gate{Epoch: 1, Writable: true, OwnFrom: 1}
	cfg := runner.Config{
		Node: spec.Node, QueueDir: spec.QueueDir, StateDir: spec.StateDir, UID: -1, GID: -1,
		Layout: fence.NewLayout(spec.Prefix), UploadConcurrency: spec.UploadConcurrency,
	}
	m, err := runner.New(cfg, sm.Wrap(s3), runner.OSFS{}, fence.SystemClock{}, func() fence.Gate { return gate }, met, log)
	if err != nil {
		log.Error("new mirror", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if path := os.Getenv(childProfileEnv); path != "" {
		// For looking into the mirror's CPU use: a CPU profile until SIGTERM.
		if f, err := os.Create(fmt.Sprintf("%s.%d", path, os.Getpid())); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Error("listen", "err", err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/snapshot", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(takeSnapshot(reg))
	})
	go http.Serve(ln, mux)
	status := childStatus{PID: os.Getpid(), Addr: ln.Addr().String()}
	writeStatus(spec.StatusFile, status)

	runDone := make(chan error, 1)
	runCtx, cancelRun := context.WithCancel(context.Background())
	go func() { runDone <- m.Run(runCtx) }()
	if err := m.Reconcile(ctx, nil); err != nil {
		log.Error("reconcile", "err", err)
		cancelRun()
		return 1
	}
	status.Ready = true
	writeStatus(spec.StatusFile, status)
	<-ctx.Done()
	fctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Flush(fctx); err != nil {
		log.Error("flush", "err", err)
	}
	cancelRun()
	<-runDone
	return 0
}

func writeStatus(path string, st childStatus) {
	js, _ := json.Marshal(st)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, js, 0o644); err == nil {
		os.Rename(tmp, path)
	}
}

func readStatus(path string) (childStatus, bool) {
	var st childStatus
	js, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(js, &st) != nil {
		return st, false
	}
	return st, true
}

// peakRSS reads this process's VmHWM in KiB from /proc.
func peakRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

func takeSnapshot(reg *prometheus.Registry) snapshot {
	s := snapshot{Requests: map[string]float64{}, HWMKiB: peakRSS()}
	mfs, err := reg.Gather()
	if err != nil {
		return s
	}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			switch mf.GetName() {
			case "mmsidecar_mirror_lag_seconds":
				h := mt.GetHistogram()
				s.LagCount, s.LagSum = h.GetSampleCount(), h.GetSampleSum()
				for _, b := range h.GetBucket() {
					s.LagBounds = append(s.LagBounds, b.GetUpperBound())
					s.LagCounts = append(s.LagCounts, b.GetCumulativeCount())
				}
			case "mmsidecar_store_request_seconds":
				for _, l := range mt.GetLabel() {
					if l.GetName() == "op" && l.GetValue() == "put" {
						s.PutSeconds += mt.GetHistogram().GetSampleSum()
						s.PutCount += mt.GetHistogram().GetSampleCount()
					}
				}
			case "mmsidecar_uploads_total":
				s.Uploads = mt.GetCounter().GetValue()
			case "mmsidecar_deletes_total":
				s.Deletes = mt.GetCounter().GetValue()
			case "mmsidecar_store_requests_total":
				var op, code string
				for _, l := range mt.GetLabel() {
					switch l.GetName() {
					case "op":
						op = l.GetValue()
					case "code":
						code = l.GetValue()
					}
				}
				s.Requests[op+" "+code] += mt.GetCounter().GetValue()
			}
		}
	}
	return s
}

// fetchSnapshot reads the mirror process's metrics.
func fetchSnapshot(addr string) (snapshot, error) {
	var s snapshot
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/snapshot")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(resp.Body).Decode(&s)
	return s, err
}

// add merges another process's snapshot (same buckets).
func (s *snapshot) add(o snapshot) {
	if s.Requests == nil {
		s.Requests = map[string]float64{}
	}
	if len(s.LagBounds) == 0 {
		s.LagBounds = o.LagBounds
		s.LagCounts = make([]uint64, len(o.LagCounts))
	}
	for i := range o.LagCounts {
		s.LagCounts[i] += o.LagCounts[i]
	}
	s.LagCount += o.LagCount
	s.LagSum += o.LagSum
	s.Uploads += o.Uploads
	s.Deletes += o.Deletes
	s.HWMKiB = max(s.HWMKiB, o.HWMKiB)
	s.PutSeconds += o.PutSeconds
	s.PutCount += o.PutCount
	for k, v := range o.Requests {
		s.Requests[k] += v
	}
}

// quantile estimates a quantile of the lag histogram the way Prometheus's
// histogram_quantile does (linear within the bucket).
func (s snapshot) quantile(q float64) float64 {
	if s.LagCount == 0 {
		return 0
	}
	rank := q * float64(s.LagCount)
	lower, prev := 0.0, uint64(0)
	for i, b := range s.LagBounds {
		c := s.LagCounts[i]
		if float64(c) >= rank {
			if c == prev {
				return b
			}
			return lower + (b-lower)*(rank-float64(prev))/float64(c-prev)
		}
		lower, prev = b, c
	}
	return s.LagBounds[len(s.LagBounds)-1]
}

func childStatusPath(dir string) string { return filepath.Join(dir, "mirror-status.json") }
