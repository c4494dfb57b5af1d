package storetest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Environment variables the MinIO harness reads.
const (
	// EnvMinIOBin names the minio server binary.
	EnvMinIOBin = "MMSIDECAR_MINIO_BIN"
	// EnvTestMinIO set to "off" skips real-MinIO tests (loudly); anything
	// else, or unset, makes a missing or broken MinIO fail them.
	EnvTestMinIO = "MMSIDECAR_TEST_MINIO"
	// EnvMinIOEndpoint, EnvMinIOAccessKey and EnvMinIOSecretKey name a
	// running MinIO (started by scripts/test.sh) that Shared uses instead
	// of its own, for the tests of MinIO itself.
	EnvMinIOEndpoint  = "MMSIDECAR_TEST_MINIO_ENDPOINT"
	EnvMinIOAccessKey = "MMSIDECAR_TEST_MINIO_ACCESS_KEY"
	EnvMinIOSecretKey = "MMSIDECAR_TEST_MINIO_SECRET_KEY"
)

// MinIOVersion is the module version of the MinIO server the tests need
// (SPEC §3: it contains the read-quorum fix for conditional writes).
const MinIOVersion = "github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"

const (
	readyTimeout = 60 * time.Second
	stopTimeout  = 30 * time.Second
)

// MinIO is a MinIO server for tests: one this harness started (StartMinIO,
// and Shared without the environment above) or one the test script runs.
type MinIO struct {
	// Endpoint is host:port of the S3 API.
	Endpoint string
	// AccessKey and SecretKey are the root credentials.
	AccessKey, SecretKey string

	t      testing.TB // fails Start/Stop errors; nil for a shared server
	owned  bool       // false for a server the test script runs
	caFile string     // the CA that signed its certificate; empty for plain HTTP
	proc   process
}

// Option configures StartMinIO.
type Option func(*options)

type options struct{ drives int }

// WithDrives runs the server on n drives (a DIR{1...n} erasure set), the
// cheapest way to exercise MinIO's distributed code path on one machine.
func WithDrives(n int) Option { return func(o *options) { o.drives = n } }

// StartMinIO starts a MinIO server of the test's own on a free 127.0.0.1
// port with its data in t.TempDir(), waits until it serves, and kills it
// when the test ends. Without a minio binary the test fails, unless
// MMSIDECAR_TEST_MINIO=off, which skips it.
func StartMinIO(t testing.TB, opts ...Option) *MinIO {
	t.Helper()
	skipIfOff(t)
	bin, err := findMinIO()
	if err != nil {
		t.Fatal(err)
	}
	m, err := newMinIO(bin, t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	m.t = t
	t.Cleanup(m.shutdown)
	if err := m.startFresh(); err != nil {
		t.Fatal(err)
	}
	return m
}

var shared struct {
	once sync.Once
	m    *MinIO
	err  error
}

// Shared returns the MinIO every test of the binary shares: the one the
// test script started (MMSIDECAR_TEST_MINIO_*), else one this binary starts
// on first use and that dies with it. Tests must not stop or pause it; they
// get a fresh bucket each with NewBucket or Store.
func Shared(t testing.TB) *MinIO {
	t.Helper()
	skipIfOff(t)
	shared.once.Do(func() { shared.m, shared.err = startShared() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.m
}

// startShared returns the script's MinIO or starts one for this process.
func startShared() (*MinIO, error) {
	if ep := os.Getenv(EnvMinIOEndpoint); ep != "" {
		m := &MinIO{Endpoint: ep, AccessKey: os.Getenv(EnvMinIOAccessKey), SecretKey: os.Getenv(EnvMinIOSecretKey)}
		if m.AccessKey == "" || m.SecretKey == "" {
			return nil, fmt.Errorf("%s is set but %s or %s is empty", EnvMinIOEndpoint, EnvMinIOAccessKey, EnvMinIOSecretKey)
		}
		if err := m.waitLive(nil, readyTimeout); err != nil {
			return nil, fmt.Errorf("MinIO at %s=%s: %w", EnvMinIOEndpoint, ep, err)
		}
		return m, nil
	}
	bin, err := findMinIO()
	if err != nil {
		return nil, err
	}
	sweepSharedDirs()
	dir, err := os.MkdirTemp("", fmt.Sprintf("mmsidecar-minio-%d-", os.Getpid()))
	if err != nil {
		return nil, fmt.Errorf("shared MinIO: %w", err)
	}
	m, err := newMinIO(bin, dir)
	if err != nil {
		return nil, err
	}
	if err := m.startFresh(); err != nil {
		return nil, err
	}
	return m, nil
}

// sweepSharedDirs removes the data of shared servers whose test binary
// has exited (their server died with it, by the parent-death signal).
func sweepSharedDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "mmsidecar-minio-*-*"))
	for _, d := range dirs {
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(d), "mmsidecar-minio-%d-", &pid); err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
}

// skipIfOff skips the test, loudly, when real-MinIO tests are turned off.
func skipIfOff(t testing.TB) {
	t.Helper()
	if os.Getenv(EnvTestMinIO) == "off" {
		t.Skipf("REAL-MINIO TESTS ARE OFF (%s=off): %s did not run against MinIO", EnvTestMinIO, t.Name())
	}
}

// FindMinIO locates the MinIO server binary the way the test setup does
// ($MMSIDECAR_MINIO_BIN, the cache, the PATH), or says how to get it.
func FindMinIO() (string, error) { return findMinIO() }

// findMinIO locates the minio binary: $MMSIDECAR_MINIO_BIN, then
// $HOME/.cache/mmsidecar/bin/minio, then the PATH.
func findMinIO() (string, error) {
	p, err := findBinary(EnvMinIOBin, "minio")
	if err != nil {
		return "", fmt.Errorf("%w (set %s=off to skip real-MinIO tests)", err, EnvTestMinIO)
	}
	if p != "" {
		return p, nil
	}
	return "", fmt.Errorf("MinIO server binary not found (tried $%s, $HOME/.cache/mmsidecar/bin/minio, PATH): "+
		"run scripts/test.sh, or build it with `GOBIN=$HOME/.cache/mmsidecar/bin go install %s`; "+
		"set %s=off to skip real-MinIO tests", EnvMinIOBin, MinIOVersion, EnvTestMinIO)
}

// newMinIO prepares a server on a free port with its data under dir.
func newMinIO(bin, dir string, opts ...Option) (*MinIO, error) {
	o := options{drives: 1}
	for _, opt := range opts {
		opt(&o)
	}
	port, err := FreePort()
	if err != nil {
		return nil, fmt.Errorf("MinIO port: %w", err)
	}
	data := filepath.Join(dir, "data")
	if o.drives > 1 {
		data = filepath.Join(dir, fmt.Sprintf("drive{1...%d}", o.drives))
	}
	m := &MinIO{
		Endpoint:  fmt.Sprintf("127.0.0.1:%d", port),
		AccessKey: "mmsidecar",
		SecretKey: "secret-" + strings.ToLower(rand.Text()),
		owned:     true,
		proc:      process{name: "MinIO", bin: bin, logPath: filepath.Join(dir, "minio.log")},
	}
	m.proc.args = []string{"server", "--quiet", "--address", m.Endpoint, "--certs-dir", filepath.Join(dir, "certs"), data}
	var extra []string
	if o.drives > 1 {
		extra = append(extra, rootDiskSetting)
	}
	m.proc.env = minioEnv(m.AccessKey, m.SecretKey, extra...)
	return m, nil
}

// rootDiskSetting lets several drives of one erasure set live on the root
// filesystem, which MinIO refuses otherwise (SPEC §3).
const rootDiskSetting = "MINIO_ROOTDISK_THRESHOLD_SIZE=1B"

// minioEnv is a server's environment: the test's without any MINIO_
// setting, the root credentials, no console or update check, and extra.
func minioEnv(accessKey, secretKey string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MINIO_") {
			env = append(env, kv)
		}
	}
	env = append(env, "MINIO_ROOT_USER="+accessKey, "MINIO_ROOT_PASSWORD="+secretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off")
	return append(env, extra...)
}

// startFresh starts a new server, moving to another port if the chosen
// one was taken in the meantime.
func (m *MinIO) startFresh() error {
	var err error
	for range 3 {
		if err = m.start(); err == nil || !strings.Contains(tail(m.proc.logPath), "address already in use") {
			return err
		}
		port, perr := FreePort()
		if perr != nil {
			return err
		}
		old := m.Endpoint
		m.Endpoint = fmt.Sprintf("127.0.0.1:%d", port)
		for i, a := range m.proc.args {
			if a == old {
				m.proc.args[i] = m.Endpoint
			}
		}
	}
	return err
}

// start runs the server process and waits until it serves.
func (m *MinIO) start() error {
	exited, err := m.proc.launch()
	if err != nil {
		return err
	}
	if err := m.waitLive(exited, readyTimeout); err != nil {
		m.kill()
		return m.startError(err)
	}
	return nil
}

// startError describes a server that did not come up, with its log.
func (m *MinIO) startError(err error) error {
	return fmt.Errorf("MinIO (%s %s) did not come up: %w\n--- %s ---\n%s", m.proc.bin, strings.Join(m.proc.args, " "), err, m.proc.logPath, tail(m.proc.logPath))
}

// waitLive polls the server's liveness endpoint until the object layer
// is up, the process exits (exited closes), or the deadline passes.
func (m *MinIO) waitLive(exited <-chan struct{}, timeout time.Duration) error {
	client, err := healthClient(m.caFile)
	if err != nil {
		return err
	}
	return waitHealth(client, m.baseURL()+"/minio/health/live", exited, timeout)
}

// baseURL is the scheme and host of the server's API.
func (m *MinIO) baseURL() string {
	if m.caFile != "" {
		return "https://" + m.Endpoint
	}
	return "http://" + m.Endpoint
}

// healthClient is an HTTP client for health probes that trusts caFile
// (plain HTTP when it is empty).
func healthClient(caFile string) (*http.Client, error) {
	tr, err := clientTransport(caFile)
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: tr}, nil
}

// waitHealth polls a MinIO health URL until it answers 200 from an
// initialised server, exited closes, or the deadline passes.
func waitHealth(client *http.Client, url string, exited <-chan struct{}, timeout time.Duration) error {
	return pollReady(exited, timeout, 50*time.Millisecond, func(ctx context.Context) (error, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && resp.Header.Get("X-Minio-Server-Status") != "offline" {
			return nil, nil
		}
		return nil, fmt.Errorf("health: %s (server status %q)", resp.Status, resp.Header.Get("X-Minio-Server-Status"))
	})
}
