package storetest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
)

func TestCAIssue(t *testing.T) {
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("issued pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, host string
		roots      *CA
		ok         bool
	}{
		{"ip", "127.0.0.1", ca, true},
		{"dns", "localhost", ca, true},
		{"other host", "example.org", ca, false},
		{"other ca", "127.0.0.1", other, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(tc.roots.CertPEM())
			_, err := leaf.Verify(x509.VerifyOptions{DNSName: tc.host, Roots: pool})
			if (err == nil) != tc.ok {
				t.Fatalf("verify for %s: %v, want ok=%v", tc.host, err, tc.ok)
			}
		})
	}
	dir := t.TempDir()
	if err := ca.writeMinIOCerts(dir, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"public.crt", "private.key", filepath.Join("CAs", "ca.crt")} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("MinIO certs dir: %v", err)
		}
	}
}

// TestClusterQuorum drives a 4-server cluster through the losses it is
// built for: it serves TLS with the test CA's certificate, keeps
// conditional writes exact with one server killed, and with two down it
// refuses writes (within the client's timeout) while still serving reads.
func TestClusterQuorum(t *testing.T) {
	began := time.Now()
	c := StartCluster(t)
	t.Logf("4-server TLS cluster with write quorum after %s", time.Since(began).Round(time.Millisecond))
	if c.Servers() != 4 || len(c.Endpoints()) != 4 {
		t.Fatalf("servers %d, endpoints %v", c.Servers(), c.Endpoints())
	}

	// The balancer passes TLS through: the handshake verifies against
	// the CA file, for the address the clients dial.
	pem, err := os.ReadFile(c.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	for _, ep := range append(c.Endpoints(), c.Endpoint()) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ep, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatalf("TLS handshake with %s: %v", ep, err)
		}
		conn.Close()
	}

	cfg := c.Config(c.NewBucket(t))
	cfg.RequestTimeout = 2 * time.Second
	s, err := s3store.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	body := []byte("first " + time.Now().String())
	if _, err := store.PutBytes(ctx, s, "k", body, store.Condition{IfAbsent: true}); err != nil {
		t.Fatalf("create on the whole cluster: %v", err)
	}

	c.Server(3).Kill()
	if ok, err := c.WriteQuorum(ctx); !ok || err != nil {
		t.Fatalf("write quorum with one server down: %v, %v", ok, err)
	}
	// Right after a server dies, MinIO can answer a conditional write
	// with a timeout or NoSuchKey for a moment (it refuses, it does not
	// commit): each step retries those for a while, as the sidecar does,
	// and then wants its real answer.
	settled := func(what string, put func() error) error {
		deadline := time.Now().Add(20 * time.Second)
		for {
			err := put()
			if err == nil || errors.Is(err, store.ErrPrecondition) || time.Now().After(deadline) {
				return err
			}
			t.Logf("%s: refused for now (retrying): %v", what, err)
			time.Sleep(250 * time.Millisecond)
		}
	}
	err = settled("create over an existing key", func() error {
		_, err := store.PutBytes(ctx, s, "k", []byte("again"), store.Condition{IfAbsent: true})
		return err
	})
	if !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("create over an existing key with a server down: %v, want a precondition failure", err)
	}
	err = settled("stale CAS", func() error {
		_, err := store.PutBytes(ctx, s, "k", []byte("stale"), store.Condition{IfMatch: store.ETagOf([]byte("not it"))})
		return err
	})
	if !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("stale CAS with a server down: %v, want a precondition failure", err)
	}
	// The right CAS may also be refused for a moment with NoSuchKey (a
	// precondition failure): safe, since nothing is written; it must go
	// through once the cluster has noticed the dead server.
	second := []byte("second " + time.Now().String())
	for deadline := time.Now().Add(20 * time.Second); ; {
		_, err := store.PutBytes(ctx, s, "k", second, store.Condition{IfMatch: store.ETagOf(body)})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CAS with a server down: %v", err)
		}
		t.Logf("CAS: refused for now (retrying): %v", err)
		time.Sleep(250 * time.Millisecond)
	}

	c.Server(2).Stop()
	if ok, err := c.WriteQuorum(ctx); ok || err != nil {
		t.Fatalf("write quorum with two of four servers down: %v, %v; want none", ok, err)
	}
	start := time.Now()
	_, err = store.PutBytes(ctx, s, "k2", []byte("no quorum"), store.Condition{IfAbsent: true})
	took := time.Since(start)
	if !errors.Is(err, store.ErrTransient) {
		t.Fatalf("create without write quorum: %v, want a transient error", err)
	}
	if limit := 3 * cfg.RequestTimeout; took > limit {
		t.Fatalf("create without write quorum took %s, over %s", took, limit)
	}
	t.Logf("create without write quorum: %s after %s", store.CodeOf(err), took.Round(time.Millisecond))
	if got, _, err := store.GetBytes(ctx, s, "k"); err != nil || !bytes.Equal(got, second) {
		t.Fatalf("read without write quorum: %q, %v; want the last write (reads keep their quorum)", got, err)
	}

	start = time.Now()
	c.Server(2).Start()
	c.Server(3).Start()
	if err := c.WaitWriteQuorum(time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("both servers back and write quorum after %s", time.Since(start).Round(time.Millisecond))
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		_, err = store.PutBytes(wctx, s, "k3", []byte("back"), store.Condition{IfAbsent: true})
		if err == nil || !errors.Is(err, store.ErrTransient) || wctx.Err() != nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("create after both servers returned: %v", err)
	}
}
