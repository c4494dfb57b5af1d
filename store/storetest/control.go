package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
)

// Stop sends SIGTERM and waits for the server to exit (SIGKILL after 30 s).
func (m *MinIO) Stop() {
	m.mustOwn("Stop")
	m.signal(syscall.SIGTERM)
	if !m.waitExit(stopTimeout) {
		m.kill()
	}
	m.reap()
}

// Kill sends SIGKILL and waits for the server to exit.
func (m *MinIO) Kill() {
	m.mustOwn("Kill")
	m.kill()
}

// Start restarts a stopped or killed server on the same port and data and
// waits until it serves.
func (m *MinIO) Start() {
	m.mustOwn("Start")
	if err := m.start(); err != nil {
		m.t.Fatal(err)
	}
}

// Pause freezes the server with SIGSTOP: connections stay open and
// requests hang, like a frozen VM.
func (m *MinIO) Pause() {
	m.mustOwn("Pause")
	m.signal(syscall.SIGSTOP)
	m.mu.Lock()
	m.paused = true
	m.mu.Unlock()
	// SIGSTOP is asynchronous: until the kernel has stopped every thread,
	// a request already accepted can still be answered, and a test that
	// expects a hang sees a prompt reply. Wait for the stopped state.
	if pid := m.PID(); pid != 0 {
		deadline := time.Now().Add(5 * time.Second)
		for !processStopped(pid) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// processStopped reports whether /proc says pid is stopped (state T).
func processStopped(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(data, ')')
	return i >= 0 && i+2 < len(data) && (data[i+2] == 'T' || data[i+2] == 't')
}

// Resume thaws a paused server with SIGCONT.
func (m *MinIO) Resume() {
	m.mustOwn("Resume")
	m.signal(syscall.SIGCONT)
	m.mu.Lock()
	m.paused = false
	m.mu.Unlock()
}

// PID returns the server's process id, or 0 when it is not running.
func (m *MinIO) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// mustOwn refuses process control of a server this test does not own.
func (m *MinIO) mustOwn(what string) {
	if m.t == nil || !m.owned {
		panic("storetest: " + what + " on a shared MinIO; use StartMinIO for a server of the test's own")
	}
	m.t.Helper()
}

// signal sends sig to the running server, by its PID.
func (m *MinIO) signal(sig syscall.Signal) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		m.t.Fatalf("MinIO: %v to a server that is not running", sig)
	}
	if err := m.cmd.Process.Signal(sig); err != nil {
		m.t.Fatalf("MinIO: send %v to pid %d: %v", sig, m.cmd.Process.Pid, err)
	}
	if sig == syscall.SIGTERM && m.paused {
		// A stopped process handles SIGTERM only once it runs again.
		m.cmd.Process.Signal(syscall.SIGCONT)
		m.paused = false
	}
}

// waitExit waits up to d for the process to exit.
func (m *MinIO) waitExit(d time.Duration) bool {
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	if exited == nil {
		return true
	}
	select {
	case <-exited:
		return true
	case <-time.After(d):
		return false
	}
}

// kill sends SIGKILL, by PID, and waits for the process to go.
func (m *MinIO) kill() {
	m.mu.Lock()
	if m.cmd != nil {
		m.cmd.Process.Signal(syscall.SIGKILL)
	}
	m.mu.Unlock()
	m.waitExit(stopTimeout)
	m.reap()
}

// reap forgets an exited process.
func (m *MinIO) reap() {
	m.mu.Lock()
	m.cmd, m.exited, m.paused = nil, nil, false
	m.mu.Unlock()
}

// shutdown is the test cleanup of a server StartMinIO started.
func (m *MinIO) shutdown() { m.kill() }

// serving reports whether the server should answer now: a server the
// test controls may be stopped or paused when cleanups run.
func (m *MinIO) serving() bool {
	if !m.owned {
		return true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil && !m.paused
}

// Config returns an s3store configuration for bucket on this server:
// over TLS, trusting the CA that signed its certificate, for a server of
// a Cluster.
func (m *MinIO) Config(bucket string) s3store.Config {
	return s3store.Config{
		Endpoint:  m.Endpoint,
		Bucket:    bucket,
		AccessKey: m.AccessKey,
		SecretKey: m.SecretKey,
		TLS:       m.caFile != "",
		CAFile:    m.caFile,
	}
}

var bucketUnsafe = regexp.MustCompile(`[^a-z0-9]+`)

// NewBucket creates a bucket no other test uses and, on a shared server,
// empties and removes it when the test ends.
func (m *MinIO) NewBucket(t testing.TB) string {
	t.Helper()
	bucket := bucketName(t)
	createBucket(t, m.Config(bucket))
	if !m.owned || m.t == nil {
		t.Cleanup(func() {
			if err := m.removeBucket(bucket); err != nil {
				t.Logf("remove bucket %s: %v", bucket, err)
			}
		})
	}
	return bucket
}

// bucketName returns a bucket name no other test uses, derived from the
// test's name.
func bucketName(t testing.TB) string {
	name := strings.Trim(bucketUnsafe.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 36 {
		name = strings.Trim(name[len(name)-36:], "-")
	}
	return "t-" + name + "-" + strings.ToLower(rand.Text()[:12])
}

// createBucket creates cfg's bucket, retrying while the server is still
// starting, and fails t when it cannot.
func createBucket(t testing.TB, cfg s3store.Config) {
	t.Helper()
	s, err := s3store.New(cfg)
	if err != nil {
		t.Fatalf("s3store for bucket %s: %v", cfg.Bucket, err)
	}
	// A server that has just started may still refuse requests briefly.
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for {
		err = s.CreateBucket(ctx)
		if err == nil || store.KindOf(err) != store.KindTransient || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatalf("create bucket %s on MinIO %s: %v", cfg.Bucket, cfg.Endpoint, err)
	}
}

// removeBucket force-deletes a test bucket with its objects, so a shared
// server's data stays small.
func (m *MinIO) removeBucket(bucket string) error {
	if !m.serving() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tr, err := clientTransport(m.caFile)
	if err != nil {
		return err
	}
	c, err := minio.New(m.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""),
		Region:    s3store.DefaultRegion,
		Secure:    m.caFile != "",
		Transport: tr,
	})
	if err != nil {
		return err
	}
	return c.RemoveBucketWithOptions(ctx, bucket, minio.RemoveBucketOptions{ForceDelete: true})
}

// Store returns an s3store on a new bucket of this server.
func (m *MinIO) Store(t testing.TB) store.Store {
	t.Helper()
	s, err := s3store.New(m.Config(m.NewBucket(t)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}
