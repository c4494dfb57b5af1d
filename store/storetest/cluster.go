package storetest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
)

// Defaults of StartCluster: four servers of one drive each, one erasure
// set of four drives (EC:2): one server down keeps write quorum, two down
// lose it.
const (
	defaultClusterServers = 4
	defaultServerDrives   = 1
)

// Cluster is a distributed MinIO for tests: several `minio server`
// processes on 127.0.0.1 ports forming one server pool, serving TLS with a
// certificate of a throwaway CA, behind a TCP balancer that hands each new
// connection to the next server that accepts it (as a load balancer in
// front of a real cluster does). Clients reach it through Endpoint; each
// server is also reachable, and can be stopped and started, through
// Server.
type Cluster struct {
	// AccessKey and SecretKey are the root credentials of every server.
	AccessKey, SecretKey string

	t       testing.TB
	bin     string
	dir     string
	drives  int
	caFile  string
	ca      *CA
	servers []*MinIO
	lb      *balancer
}

// ClusterOption configures StartCluster.
type ClusterOption func(*clusterOptions)

type clusterOptions struct{ servers, drives int }

// WithServers sets the number of server processes (default 4).
func WithServers(n int) ClusterOption { return func(o *clusterOptions) { o.servers = n } }

// WithServerDrives sets the number of drive directories of each server
// (default 1).
func WithServerDrives(n int) ClusterOption { return func(o *clusterOptions) { o.drives = n } }

// StartCluster starts a distributed MinIO of the test's own: by default
// four servers on free 127.0.0.1 ports, one drive each, one server pool,
// over TLS with a certificate for 127.0.0.1 and localhost from a CA made
// for this cluster. It waits until the cluster has write quorum and kills
// every server when the test ends. When it cannot start, the test fails
// with the end of every server's log; MMSIDECAR_TEST_MINIO=off skips it.
func StartCluster(t testing.TB, opts ...ClusterOption) *Cluster {
	t.Helper()
	skipIfOff(t)
	o := clusterOptions{servers: defaultClusterServers, drives: defaultServerDrives}
	for _, opt := range opts {
		opt(&o)
	}
	if o.servers < 2 || o.drives < 1 || o.servers*o.drives < 4 {
		t.Fatalf("StartCluster: %d servers of %d drives: want at least 2 servers and 4 drives", o.servers, o.drives)
	}
	bin, err := findMinIO()
	if err != nil {
		t.Fatal(err)
	}
	c, err := newCluster(t, bin, t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.shutdown)
	// A failed test shows what the servers said: a refused write or a
	// lost quorum is explained, if at all, in their logs.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("MinIO cluster logs:\n%s", c.logTails())
		}
	})
	if err := c.startFresh(); err != nil {
		t.Fatal(err)
	}
	return c
}

// newCluster prepares the CA, the certificates, the balancer and the
// servers' directories, without starting anything.
func newCluster(t testing.TB, bin, dir string, o clusterOptions) (*Cluster, error) {
	ca, err := NewCA("mmsidecar test CA " + strings.ToLower(rand.Text()[:8]))
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		AccessKey: "mmsidecar",
		SecretKey: "secret-" + strings.ToLower(rand.Text()),
		t:         t, bin: bin, dir: dir, drives: o.drives, ca: ca,
		caFile: filepath.Join(dir, "ca.crt"),
	}
	if err := ca.WriteCertFile(c.caFile); err != nil {
		return nil, err
	}
	if err := ca.writeMinIOCerts(filepath.Join(dir, "certs"), "127.0.0.1", "localhost"); err != nil {
		return nil, err
	}
	for i := range o.servers {
		sdir := filepath.Join(dir, fmt.Sprintf("server%d", i+1))
		if err := os.MkdirAll(sdir, 0o755); err != nil {
			return nil, fmt.Errorf("cluster server dir: %w", err)
		}
		c.servers = append(c.servers, &MinIO{
			AccessKey: c.AccessKey, SecretKey: c.SecretKey,
			t: t, owned: true, caFile: c.caFile,
			proc: process{name: fmt.Sprintf("MinIO server %d", i+1), bin: bin, logPath: filepath.Join(sdir, "minio.log")},
		})
	}
	if c.lb, err = newBalancer(); err != nil {
		return nil, err
	}
	return c, c.configure()
}

// configure gives every server a free port and the command line and
// environment of one pool made of all servers' drives.
func (c *Cluster) configure() error {
	ports, err := freePorts(len(c.servers))
	if err != nil {
		return fmt.Errorf("cluster ports: %w", err)
	}
	var volumes, endpoints []string
	for i, port := range ports {
		ep := fmt.Sprintf("127.0.0.1:%d", port)
		endpoints = append(endpoints, ep)
		for d := range c.drives {
			volumes = append(volumes, fmt.Sprintf("https://%s%s", ep, filepath.Join(c.dir, fmt.Sprintf("server%d", i+1), fmt.Sprintf("d%d", d+1))))
		}
	}
	for i, m := range c.servers {
		m.Endpoint = endpoints[i]
		m.proc.args = append([]string{"server", "--quiet", "--address", m.Endpoint, "--certs-dir", filepath.Join(c.dir, "certs")}, volumes...)
		// In a container MinIO takes no loopback address for its own
		// unless told which endpoint is local (it waits for DNS to give a
		// routable one); outside a container it goes by the port.
		m.proc.env = minioEnv(c.AccessKey, c.SecretKey, rootDiskSetting, "_MINIO_SERVER_LOCAL="+m.Endpoint)
	}
	c.lb.setBackends(endpoints)
	return nil
}

// freePorts returns n distinct TCP ports on 127.0.0.1 that were free a
// moment ago (FreePort).
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	return ports, nil
}

// startFresh starts every server and waits for write quorum, moving to
// other ports when one was taken in the meantime.
func (c *Cluster) startFresh() error {
	var err error
	for range 3 {
		if err = c.startAll(); err == nil {
			return nil
		}
		c.killAll()
		if !strings.Contains(c.logTails(), "address already in use") {
			return err
		}
		for _, m := range c.servers {
			os.Remove(m.proc.logPath)
		}
		if cerr := c.configure(); cerr != nil {
			return cerr
		}
	}
	return err
}

// startAll launches every server at once (each waits for the others to
// form the pool), then waits until each serves and the pool has write
// quorum.
func (c *Cluster) startAll() error {
	exited := make([]<-chan struct{}, len(c.servers))
	for i, m := range c.servers {
		ch, err := m.proc.launch()
		if err != nil {
			return err
		}
		exited[i] = ch
	}
	for i, m := range c.servers {
		if err := m.waitLive(exited[i], readyTimeout); err != nil {
			return fmt.Errorf("MinIO cluster server %d (%s) did not come up: %w\n%s", i+1, m.Endpoint, err, c.logTails())
		}
	}
	if err := c.WaitWriteQuorum(readyTimeout); err != nil {
		return fmt.Errorf("MinIO cluster: %w\n%s", err, c.logTails())
	}
	return nil
}

// killAll SIGKILLs every running server.
func (c *Cluster) killAll() {
	for _, m := range c.servers {
		m.kill()
	}
}

// shutdown is the test cleanup: servers first, then the balancer.
func (c *Cluster) shutdown() {
	c.killAll()
	c.lb.close()
}

// logTails returns the end of every server's log, for failure messages.
func (c *Cluster) logTails() string {
	var b strings.Builder
	for i, m := range c.servers {
		fmt.Fprintf(&b, "--- server %d (%s) %s ---\n%s\n", i+1, m.Endpoint, m.proc.logPath, tail(m.proc.logPath))
	}
	return b.String()
}

// Endpoint returns host:port of the balancer in front of the servers:
// what clients use.
func (c *Cluster) Endpoint() string { return c.lb.addr() }

// Endpoints returns host:port of each server, in Server order.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.servers))
	for i, m := range c.servers {
		out[i] = m.Endpoint
	}
	return out
}

// Servers returns the number of servers.
func (c *Cluster) Servers() int { return len(c.servers) }

// Server returns server i (0-based) for process control: Kill, Stop,
// Start, Pause, Resume, PID. Its Config reaches that server alone.
func (c *Cluster) Server(i int) *MinIO { return c.servers[i] }

// CAFile returns the path of the PEM file of the CA that signed the
// servers' certificate: the value of MMSIDECAR_S3_CA_FILE.
func (c *Cluster) CAFile() string { return c.caFile }

// Config returns an s3store configuration for bucket through the
// balancer, over TLS, trusting the cluster's CA.
func (c *Cluster) Config(bucket string) s3store.Config {
	return s3store.Config{
		Endpoint:  c.Endpoint(),
		Bucket:    bucket,
		AccessKey: c.AccessKey,
		SecretKey: c.SecretKey,
		TLS:       true,
		CAFile:    c.caFile,
	}
}

// NewBucket creates a bucket no other test uses. It is not removed: the
// cluster's data goes with the test.
func (c *Cluster) NewBucket(t testing.TB) string {
	t.Helper()
	bucket := bucketName(t)
	createBucket(t, c.Config(bucket))
	return bucket
}

// Store returns an s3store on a new bucket of the cluster, whose writes
// are retried when the cluster refuses them for want of write quorum
// (SlowDownWrite), which a loaded four-server cluster does now and then
// with every server up.
func (c *Cluster) Store(t testing.TB) store.Store {
	t.Helper()
	s, err := s3store.New(c.Config(c.NewBucket(t)))
	if err != nil {
		t.Fatal(err)
	}
	return refusalRetry{Store: s, t: t}
}

// WriteQuorum asks the cluster, through the balancer, whether it has
// write quorum (MinIO's cluster health check answers 200).
func (c *Cluster) WriteQuorum(ctx context.Context) (bool, error) {
	client, err := healthClient(c.caFile)
	if err != nil {
		return false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+c.Endpoint()+"/minio/health/cluster", nil)
	if err != nil {
		return false, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, nil
}

// WaitWriteQuorum waits until every running server sees write quorum and
// takes a write. The cluster health check through the balancer is one
// server's opinion: right after a start another server may still count
// its peers' drives offline and refuse writes (SlowDownWrite) for seconds,
// which is what a test that starts writing at once would meet. So each
// running (not killed, not paused) server is asked directly, then written
// to, until the deadline.
func (c *Cluster) WaitWriteQuorum(timeout time.Duration) error {
	client, err := healthClient(c.caFile)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for i, m := range c.servers {
		if !m.serving() {
			continue
		}
		if err := waitHealth(client, m.baseURL()+"/minio/health/cluster", nil, time.Until(deadline)); err != nil {
			return fmt.Errorf("no write quorum on server %d (%s): %w", i+1, m.Endpoint, err)
		}
		if err := waitWritable(m, deadline); err != nil {
			return fmt.Errorf("server %d (%s) sees write quorum but refuses writes: %w", i+1, m.Endpoint, err)
		}
	}
	return nil
}

// readyBucket holds the objects WaitWriteQuorum writes.
const readyBucket = "mmsidecar-ready"

// waitWritable creates readyBucket through m and writes and deletes one
// object there, retrying transient refusals until deadline.
func waitWritable(m *MinIO, deadline time.Time) error {
	s, err := s3store.New(m.Config(readyBucket))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	key := "ready/" + strings.ToLower(rand.Text())
	for {
		err = s.CreateBucket(ctx)
		if err == nil {
			// A refused write that committed after all is still a write.
			if _, err = store.PutBytes(ctx, s, key, []byte("ready"), store.Condition{IfAbsent: true}); errors.Is(err, store.ErrPrecondition) {
				err = nil
			}
		}
		if err == nil {
			err = s.Delete(ctx, key)
		}
		if err == nil {
			return nil
		}
		if store.KindOf(err) != store.KindTransient {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still refused at the deadline: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// clientTransport is an HTTP transport for the harness's own requests:
// plain when caFile is empty, else TLS trusting only caFile.
func clientTransport(caFile string) (*http.Transport, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if caFile == "" {
		return tr, nil
	}
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("test CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, errors.New("test CA: no certificate in " + caFile)
	}
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return tr, nil
}
