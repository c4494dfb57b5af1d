package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// sidecarOpts configures one sidecar under test.
type sidecarOpts struct {
	Node     string
	QueueDir string
	Bucket   string
	// TTL, Grace and Margin override the lease timing (zero: defaults).
	TTL, Grace, Margin time.Duration
	// Direct connects the sidecar to the store itself, not through the
	// bench's proxy: for workloads that time nothing at the proxy, so
	// that the proxy's CPU and hop are not part of what they measure.
	Direct bool
	// Env adds MMSIDECAR_* settings (NAME=value) to the binary's.
	Env []string
}

// endpoint is the S3 endpoint a sidecar started with o uses.
func (e *env) endpoint(o sidecarOpts) string {
	if o.Direct {
		return e.store.s3.Endpoint
	}
	return e.proxy.addr
}

// sidecar is one mmsidecar under test: the real binary (the default) or
// the same packages wired in this process (-inproc, for profiles).
type sidecar interface {
	// waitReady waits until /readyz would answer 200.
	waitReady(ctx context.Context) error
	// metrics scrapes the sidecar's Prometheus metrics.
	metrics(ctx context.Context) (metrics, error)
	// pid is the process id, 0 in-process.
	pid() int
	// stop shuts down like SIGTERM and waits.
	stop(ctx context.Context) error
	// kill crashes the sidecar: SIGKILL, nothing flushed or fenced.
	kill()
	// describe says where its log is, for error messages.
	describe() string
}

// startSidecar starts a sidecar for o.
func (e *env) startSidecar(ctx context.Context, o sidecarOpts) (sidecar, error) {
	if e.inproc {
		return startInproc(ctx, e, o)
	}
	return startBinary(e, o)
}

// binarySidecar is the real mmsidecar process.
type binarySidecar struct {
	cmd     *exec.Cmd
	addr    string
	logFile string
	started time.Time
	exited  chan struct{}
}

// freePort returns a 127.0.0.1 address that was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startBinary(e *env, o sidecarOpts) (*binarySidecar, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	logFile := filepath.Join(e.dir, "sidecar-"+o.Node+"-"+strconv.FormatInt(time.Now().UnixNano(), 36)+".log")
	lf, err := os.Create(logFile)
	if err != nil {
		return nil, err
	}
	env := append(cleanEnv(),
		"MMSIDECAR_NODE_ID="+o.Node,
		"MMSIDECAR_QUEUE_DIR="+o.QueueDir,
		"MMSIDECAR_S3_ENDPOINT="+e.endpoint(o),
		"MMSIDECAR_S3_BUCKET="+o.Bucket,
		"MMSIDECAR_S3_ACCESS_KEY="+e.store.s3.AccessKey,
		"MMSIDECAR_S3_SECRET_KEY="+e.store.s3.SecretKey,
		"MMSIDECAR_LISTEN_ADDR="+addr,
		"MMSIDECAR_LOG_FORMAT=json",
		"MMSIDECAR_LOG_LEVEL=info",
	)
	env = append(env, e.sidecarEnv...)
	env = append(env, o.Env...)
	if o.TTL > 0 {
		env = append(env, "MMSIDECAR_LEASE_TTL="+o.TTL.String(), "MMSIDECAR_LEASE_GRACE="+o.Grace.String(), "MMSIDECAR_LEASE_MARGIN="+o.Margin.String())
	}
	cmd := exec.Command(e.sidecar, "run")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := storetest.Spawn(cmd); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start sidecar %s: %w", o.Node, err)
	}
	b := &binarySidecar{cmd: cmd, addr: addr, logFile: logFile, started: time.Now(), exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		lf.Close()
		close(b.exited)
	}()
	return b, nil
}

func (b *binarySidecar) pid() int { return b.cmd.Process.Pid }

func (b *binarySidecar) describe() string {
	return "log " + b.logFile + ":\n" + tailFile(b.logFile, 3000)
}

func (b *binarySidecar) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.addr+"/readyz", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-b.exited:
			return fmt.Errorf("sidecar exited before it was ready; %s", b.describe())
		case <-ctx.Done():
			return fmt.Errorf("sidecar not ready: %w; %s", ctx.Err(), b.describe())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (b *binarySidecar) metrics(ctx context.Context) (metrics, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.addr+"/metrics", nil)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	return parseMetrics(resp.Body)
}

func (b *binarySidecar) stop(ctx context.Context) error {
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
		return nil
	case <-ctx.Done():
		b.kill()
		return fmt.Errorf("sidecar did not stop: %w", ctx.Err())
	}
}

func (b *binarySidecar) kill() {
	b.cmd.Process.Signal(syscall.SIGKILL)
	<-b.exited
}

// logTimes returns the time of the first log record whose msg is each of
// msgs (zero when absent).
func (b *binarySidecar) logTimes(msgs ...string) map[string]time.Time {
	out := make(map[string]time.Time)
	f, err := os.Open(b.logFile)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var rec struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil {
			continue
		}
		for _, m := range msgs {
			if rec.Msg == m && out[m].IsZero() {
				out[m] = rec.Time
			}
		}
	}
	return out
}

// tailFile returns the last n bytes of a file.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// metrics is a scrape: series text (name{labels}) -> value.
type metrics map[string]float64

// parseMetrics reads the Prometheus text format.
func parseMetrics(r io.Reader) (metrics, error) {
	out := make(metrics)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// sum adds the series of metric name whose labels include every
// label="value" pair of want.
func (m metrics) sum(name string, want ...string) float64 {
	total := 0.0
	for series, v := range m {
		n, labels, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		ok := true
		for _, w := range want {
			if !strings.Contains(labels, w) {
				ok = false
				break
			}
		}
		if ok {
			total += v
		}
	}
	return total
}

// storeOps returns the store requests by op (all result codes).
func (m metrics) storeOps() map[string]float64 {
	out := make(map[string]float64)
	for series, v := range m {
		n, labels, _ := strings.Cut(series, "{")
		if n != "mmsidecar_store_requests_total" {
			continue
		}
		for _, l := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
			if op, ok := strings.CutPrefix(l, `op="`); ok {
				out[strings.TrimSuffix(op, `"`)] += v
			}
		}
	}
	return out
}

// opsDelta returns after - before per op and the total.
func opsDelta(before, after metrics) (map[string]float64, float64) {
	b, a := before.storeOps(), after.storeOps()
	out := make(map[string]float64)
	total := 0.0
	for op, v := range a {
		if d := v - b[op]; d != 0 {
			out[op] = d
			total += d
		}
	}
	return out, total
}

// formatOps prints per-op figures as "put 1.00, delete_many 0.01".
func formatOps(ops map[string]float64, div float64) string {
	var parts []string
	for _, op := range []string{"put", "get", "stat", "list", "delete", "delete_many"} {
		if v := ops[op]; v != 0 {
			parts = append(parts, fmt.Sprintf("%s %.3g", op, v/div))
		}
	}
	return strings.Join(parts, ", ")
}

// waitUploads waits until the sidecar has made n copies durable (from its
// uploads counter) and has nothing pending.
func waitUploads(ctx context.Context, sc sidecar, n float64) error {
	var last metrics
	for {
		m, err := sc.metrics(ctx)
		if err == nil {
			last = m
			if m.sum("mmsidecar_uploads_total") >= n && m.sum("mmsidecar_uploads_pending") == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %.0f uploads (have %.0f): %w", n, last.sum("mmsidecar_uploads_total"), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

var errNoProc = errors.New("in-process sidecar: no process figures")

// procOf reads the sidecar's process figures.
func procOf(sc sidecar) (procStat, error) {
	if sc.pid() == 0 {
		return procStat{}, errNoProc
	}
	return readProc(sc.pid())
}
