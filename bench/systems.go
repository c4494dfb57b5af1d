package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// mirrorSys is one way of mirroring a queue directory into the store:
// mmsidecar, the bare minio-go limit, or mc mirror --watch.
type mirrorSys interface {
	// start begins mirroring root into bucket and returns once it is
	// ready to see new files.
	start(ctx context.Context, root, bucket string) error
	// hooks are called by the workload on every creation and finish.
	hooks() hooks
	// cpu is the CPU time its processes used so far; false when it runs
	// in the bench itself.
	cpu() (time.Duration, bool)
	// deletes says whether it removes copies of finished files.
	deletes() bool
	// notes says what went wrong during the run ("" for nothing).
	notes() string
	// prefix is where its copies go in the bucket.
	prefix() string
	stop()
}

// sidecarSys runs mmsidecar (one node, cluster mode, default timing).
type sidecarSys struct {
	e  *env
	sc sidecar
}

func (s *sidecarSys) start(ctx context.Context, root, bucket string) error {
	sc, err := s.e.startSidecar(ctx, sidecarOpts{Node: "lag", QueueDir: root, Bucket: bucket})
	if err != nil {
		return err
	}
	s.sc = sc
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return sc.waitReady(rctx)
}

func (s *sidecarSys) hooks() hooks   { return hooks{} }
func (s *sidecarSys) deletes() bool  { return true }
func (s *sidecarSys) notes() string  { return "" }
func (s *sidecarSys) prefix() string { return "mmsidecar/q/" }

func (s *sidecarSys) cpu() (time.Duration, bool) {
	ps, err := procOf(s.sc)
	return ps.CPU, err == nil
}

func (s *sidecarSys) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.sc.stop(ctx)
}

// bareSys is the limit: on every rename the bench itself reads the file
// and PUTs it with a plain minio-go client (default options), with as
// many workers as the sidecar has upload workers. It does nothing else:
// no deletes, no bookkeeping.
type bareSys struct {
	e       *env
	workers int
	client  *minio.Client
	bucket  string
	jobs    chan bareJob
	wg      sync.WaitGroup
	cancel  context.CancelFunc
}

type bareJob struct{ path, name string }

func newMinIOClient(e *env) (*minio.Client, error) {
	return minio.New(e.proxy.addr, &minio.Options{
		Creds:  credentials.NewStaticV4(e.store.s3.AccessKey, e.store.s3.SecretKey, ""),
		Region: "us-east-1",
	})
}

func (b *bareSys) start(ctx context.Context, root, bucket string) error {
	c, err := newMinIOClient(b.e)
	if err != nil {
		return err
	}
	b.client, b.bucket = c, bucket
	b.jobs = make(chan bareJob, 1<<17)
	wctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	for range b.workers {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for {
				select {
				case j := <-b.jobs:
					b.put(wctx, j)
				case <-wctx.Done():
					return
				}
			}
		}()
	}
	return nil
}

func (b *bareSys) put(ctx context.Context, j bareJob) {
	data, err := os.ReadFile(j.path)
	if err != nil {
		return // finished before the upload started
	}
	for ctx.Err() == nil {
		_, err := b.client.PutObject(ctx, b.bucket, "bare/"+j.name, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{})
		if err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *bareSys) hooks() hooks {
	return hooks{created: func(path, name string) { b.jobs <- bareJob{path: path, name: name} }}
}

func (b *bareSys) cpu() (time.Duration, bool) { return 0, false }
func (b *bareSys) deletes() bool              { return false }
func (b *bareSys) notes() string              { return "" }
func (b *bareSys) prefix() string             { return "bare/" }
func (b *bareSys) stop() {
	b.cancel()
	b.wg.Wait()
}

// mcSys runs `mc mirror --watch --remove --exclude '*.tmp'` on the queue
// root under a supervisor that restarts it 100 ms after it exits, as
// systemd's Restart=always would: mc panics when a file vanishes between
// its event and its upload, which Mailman's dequeue makes routine.
type mcSys struct {
	e       *env
	root    string
	bucket  string
	logFile string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	crashes int
	deadCPU time.Duration // CPU of the mc processes that exited
	panics  string        // first panic line
	stopped bool
	done    chan struct{} // closed when the supervisor returns
}

func (m *mcSys) spawnMC() (*exec.Cmd, chan struct{}, error) {
	cfgDir := filepath.Join(m.e.dir, "mc-config")
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		return nil, nil, err
	}
	lf, err := os.OpenFile(m.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(m.e.mc, "mirror", "--watch", "--remove", "--exclude", "*.tmp", "--quiet", "--no-color",
		m.root+"/", "bench/"+m.bucket+"/mc/")
	cmd.Env = append(cleanEnv(), "MC_CONFIG_DIR="+cfgDir,
		fmt.Sprintf("MC_HOST_bench=http://%s:%s@%s", m.e.store.s3.AccessKey, m.e.store.s3.SecretKey, m.e.proxy.addr))
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := storetest.Spawn(cmd); err != nil {
		lf.Close()
		return nil, nil, fmt.Errorf("start mc: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		lf.Close()
		close(exited)
	}()
	return cmd, exited, nil
}

func (m *mcSys) start(ctx context.Context, root, bucket string) error {
	m.root, m.bucket = root, bucket
	m.logFile = filepath.Join(m.e.dir, "mc-"+bucket+".log")
	cmd, exited, err := m.spawnMC()
	if err != nil {
		return err
	}
	m.cmd, m.exited, m.done = cmd, exited, make(chan struct{})
	go m.supervise()
	// mc says nothing when it watches: write marker files until one is
	// uploaded through the watch (the second, after the first mirror pass).
	rec := m.e.proxy.rec.Load()
	for i := range 2 {
		name := fmt.Sprintf("warmup-%d-%d", os.Getpid(), i)
		if err := os.WriteFile(filepath.Join(root, name), []byte("warmup"), 0o644); err != nil {
			return err
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			if _, ok := rec.putAt(name); ok {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("mc did not upload %s within 60 s; log %s", name, tailFile(m.logFile, 2000))
			}
			time.Sleep(20 * time.Millisecond)
		}
		os.Remove(filepath.Join(root, name))
	}
	return nil
}

// supervise restarts mc whenever it exits, until stop.
func (m *mcSys) supervise() {
	defer close(m.done)
	for {
		m.mu.Lock()
		cmd, exited := m.cmd, m.exited
		m.mu.Unlock()
		<-exited
		m.mu.Lock()
		if ps := cmd.ProcessState; ps != nil {
			m.deadCPU += ps.UserTime() + ps.SystemTime()
		}
		if m.stopped {
			m.mu.Unlock()
			return
		}
		m.crashes++
		if m.panics == "" {
			m.panics = firstPanic(tailFile(m.logFile, 4000))
		}
		m.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
		cmd, exited, err := m.spawnMC()
		m.mu.Lock()
		if err != nil || m.stopped {
			m.mu.Unlock()
			if err == nil {
				cmd.Process.Signal(syscall.SIGKILL)
				<-exited
			}
			return
		}
		m.cmd, m.exited = cmd, exited
		m.mu.Unlock()
	}
}

// firstPanic returns the panic message and the first mc frame of a log.
func firstPanic(log string) string {
	i := strings.Index(log, "panic: ")
	if i < 0 {
		return ""
	}
	lines := strings.Split(log[i:], "\n")
	out := strings.TrimPrefix(lines[0], "panic: runtime error: ")
	for _, l := range lines[1:] {
		if _, fn, ok := strings.Cut(l, "minio/mc/cmd."); ok {
			fn, _, _ = strings.Cut(fn, "(")
			out += " in " + fn
			break
		}
	}
	return out
}

func (m *mcSys) hooks() hooks   { return hooks{} }
func (m *mcSys) deletes() bool  { return true }
func (m *mcSys) prefix() string { return "mc/" }

func (m *mcSys) cpu() (time.Duration, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	total := m.deadCPU
	if ps, err := readProc(m.cmd.Process.Pid); err == nil {
		total += ps.CPU
	}
	return total, true
}

func (m *mcSys) notes() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashes == 0 {
		return ""
	}
	return fmt.Sprintf("%d× exited, restarted (%s)", m.crashes, m.panics)
}

func (m *mcSys) stop() {
	m.mu.Lock()
	m.stopped = true
	cmd := m.cmd
	m.mu.Unlock()
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		m.mu.Lock()
		m.cmd.Process.Signal(syscall.SIGKILL)
		m.mu.Unlock()
		<-m.done
	}
}
