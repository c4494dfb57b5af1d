package s3store_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// TestContractClusterTLS runs the store contract against a distributed
// MinIO: four servers on 127.0.0.1 forming one pool, over TLS with the
// test CA, reached through a balancer. It checks that misconfigured
// clients fail fast, naming the setting. Then it SIGKILLs one server (the
// pool keeps write quorum) and runs the contract's conditional-write
// cases again: the racing creates and CAS updates must still have exactly
// one winner a round.
func TestContractClusterTLS(t *testing.T) {
	c := storetest.StartCluster(t)
	open := func(t *testing.T) store.Store { return c.Store(t) }
	t.Run("all servers", func(t *testing.T) {
		began := time.Now()
		storetest.Run(t, open)
		t.Logf("contract on 4 servers over TLS: %s", time.Since(began).Round(time.Millisecond))
	})
	t.Run("misconfigured clients", func(t *testing.T) { testClusterMisconfigured(t, c) })
	t.Run("one server killed", func(t *testing.T) {
		c.Server(1).Kill()
		began := time.Now()
		storetest.RunConditional(t, open)
		t.Logf("conditional-write contract with server 2 of 4 SIGKILLed: %s", time.Since(began).Round(time.Millisecond))
	})
}

// testClusterMisconfigured: a client that does not trust the cluster's
// certificate, or speaks plain HTTP to it, fails at once and permanently
// (no hang, no retry loop), and the trust failure names the setting to fix.
func testClusterMisconfigured(t *testing.T, c *storetest.Cluster) {
	bucket := c.NewBucket(t)
	wrongCA, err := storetest.NewCA("wrong CA")
	if err != nil {
		t.Fatal(err)
	}
	wrongFile := filepath.Join(t.TempDir(), "wrong-ca.pem")
	if err := wrongCA.WriteCertFile(wrongFile); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*s3store.Config)
		code string
		want string // the error must contain it
	}{
		{"wrong CA file", func(cfg *s3store.Config) { cfg.CAFile = wrongFile }, "tls_verify", "MMSIDECAR_S3_CA_FILE"},
		{"no CA file", func(cfg *s3store.Config) { cfg.CAFile = "" }, "tls_verify", "MMSIDECAR_S3_CA_FILE"},
		// The server answers a plain request on its TLS port with a bare
		// 400; the error quotes its sentence.
		{"plain HTTP to the TLS port", func(cfg *s3store.Config) { cfg.TLS, cfg.CAFile = false, "" }, "tls_required", "MMSIDECAR_S3_TLS"},
		{"one server, wrong CA file", func(cfg *s3store.Config) {
			*cfg = c.Server(0).Config(cfg.Bucket)
			cfg.CAFile = wrongFile
		}, "tls_verify", "MMSIDECAR_S3_CA_FILE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := c.Config(bucket)
			tc.edit(&cfg)
			s := newStore(t, cfg)
			for _, call := range []struct {
				op string
				fn func() error
			}{
				{"put", func() error {
					_, err := store.PutBytes(ctxFor(t), s, "k", []byte("v"), store.Condition{IfAbsent: true})
					return err
				}},
				{"list", func() error { return s.List(ctxFor(t), "", func(store.Info) error { return nil }) }},
			} {
				start := time.Now()
				err := call.fn()
				took := time.Since(start)
				wantCode(t, err, store.KindPermanent, tc.code)
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: error %q does not mention %s", call.op, err, tc.want)
				}
				if took > 3*time.Second {
					t.Errorf("%s took %s to fail", call.op, took)
				}
			}
		})
	}
	// The right CA on the same server works.
	if _, err := store.PutBytes(ctxFor(t), newStore(t, c.Server(0).Config(bucket)), "k", []byte("v"), store.Condition{IfAbsent: true}); err != nil {
		t.Fatalf("with the cluster's CA: %v", err)
	}
}
