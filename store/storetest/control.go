package storetest

import (
	"regexp"
	"testing"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
)

// Stop sends SIGTERM and waits for the server to exit (SIGKILL after 30 s).
func (m *MinIO) Stop() {
	m.mustOwn("Stop")
	if err := m.proc.stop(); err != nil {
		m.t.Fatal(err)
	}
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
	if err := m.proc.pause(); err != nil {
		m.t.Fatal(err)
	}
}

// Resume thaws a paused server with SIGCONT.
func (m *MinIO) Resume() {
	m.mustOwn("Resume")
	if err := m.proc.resume(); err != nil {
		m.t.Fatal(err)
	}
}

// PID returns the server's process id, or 0 when it is not running.
func (m *MinIO) PID() int { return m.proc.pid() }

// mustOwn refuses process control of a server this test does not own.
func (m *MinIO) mustOwn(what string) {
	if m.t == nil || !m.owned {
		panic("storetest: " + what + " on a shared MinIO; use StartMinIO for a server of the test's own")
	}
	m.t.Helper()
}

// kill sends SIGKILL, by PID, and waits for the process to go.
func (m *MinIO) kill() { m.proc.kill() }

// shutdown is the test cleanup of a server StartMinIO started.
func (m *MinIO) shutdown() { m.kill() }

// serving reports whether the server should answer now: a server the
// test controls may be stopped or paused when cleanups run.
func (m *MinIO) serving() bool {
	if !m.owned {
		return true
	}
	return m.proc.running()
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
	cfg := m.Config(bucket)
	createBucket(t, cfg)
	if !m.owned || m.t == nil {
		t.Cleanup(func() {
			if !m.serving() {
				return
			}
			if err := removeBucket(cfg); err != nil {
				t.Logf("remove bucket %s: %v", bucket, err)
			}
		})
	}
	return bucket
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
