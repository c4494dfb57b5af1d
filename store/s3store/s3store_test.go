package s3store_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// TestContract runs the contract against the S3 endpoint of the
// environment (MMSIDECAR_TEST_S3_*: any engine; the shared MinIO
// without it).
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return storetest.SharedS3(t).Store(t) })
}

// TestContractErasureSet runs the contract on a 4-drive erasure set, the
// distributed code path (SPEC §3).
func TestContractErasureSet(t *testing.T) {
	m := storetest.StartMinIO(t, storetest.WithDrives(4))
	storetest.Run(t, func(t *testing.T) store.Store { return m.Store(t) })
}

func newStore(t *testing.T, cfg s3store.Config) *s3store.Store {
	t.Helper()
	s, err := s3store.New(cfg)
	if err != nil {
		t.Fatalf("new store: %v", err)
	}
	return s
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, err error, kind store.Kind, code string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v %s", kind, code)
	}
	if store.KindOf(err) != kind || store.CodeOf(err) != code {
		t.Fatalf("error %v: kind %v code %q, want %v %q", err, store.KindOf(err), store.CodeOf(err), kind, code)
	}
}

// TestHugeConditionalWrite checks that a 100 MiB conditional write is one
// PUT that keeps its condition.
func TestHugeConditionalWrite(t *testing.T) {
	s := storetest.Shared(t).Store(t)
	ctx := ctxFor(t)
	const size = 100 << 20
	body := make([]byte, size)
	rand.Read(body)
	small, err := store.PutBytes(ctx, s, "taken", []byte("small"), store.Condition{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Put(ctx, "taken", bytes.NewReader(body), size, store.Condition{IfAbsent: true})
	wantCode(t, err, store.KindPrecondition, "PreconditionFailed")
	if st, err := s.Stat(ctx, "taken"); err != nil || st.ETag != small.ETag || st.Size != small.Size {
		t.Fatalf("after refused create: %+v, %v; want %+v", st, err, small)
	}
	info, err := s.Put(ctx, "huge", bytes.NewReader(body), size, store.Condition{IfAbsent: true})
	if err != nil {
		t.Fatalf("conditional create of 100 MiB: %v", err)
	}
	if info.ETag != store.ETagOf(body) || info.Size != size {
		t.Fatalf("info %+v: want single-part md5 %s", info, store.ETagOf(body))
	}
}

// TestUnknownSize: an unconditional write of unknown size streams; a
// conditional one is refused, since it could not be one PUT.
func TestUnknownSize(t *testing.T) {
	s := storetest.Shared(t).Store(t)
	ctx := ctxFor(t)
	body := []byte(strings.Repeat("stream ", 1000))
	if _, err := s.Put(ctx, "stream", bytes.NewBufferString(string(body)), -1, store.Condition{}); err != nil {
		t.Fatalf("unconditional put of unknown size: %v", err)
	}
	got, _, err := store.GetBytes(ctx, s, "stream")
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	_, err = s.Put(ctx, "stream2", bytes.NewReader(body), -1, store.Condition{IfAbsent: true})
	wantCode(t, err, store.KindPermanent, "size_unknown")
}

// TestStoppedServerIsTransient: calls against a stopped server fail fast
// and transiently, and work again once it is back.
func TestStoppedServerIsTransient(t *testing.T) {
	m := storetest.StartMinIO(t)
	cfg := m.Config(m.NewBucket(t))
	s := newStore(t, cfg)
	ctx := ctxFor(t)
	if _, err := store.PutBytes(ctx, s, "k", []byte("v"), store.Condition{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	m.Stop()
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"stat", func() error { _, err := s.Stat(ctx, "k"); return err }},
		{"get", func() error { _, _, err := s.Get(ctx, "k"); return err }},
		{"put", func() error {
			_, err := store.PutBytes(ctx, s, "k", []byte("w"), store.Condition{IfMatch: store.ETagOf([]byte("v"))})
			return err
		}},
		{"list", func() error { return s.List(ctx, "", func(store.Info) error { return nil }) }},
		{"delete many", func() error { return s.DeleteMany(ctx, []string{"k"}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := tc.call()
			wantCode(t, err, store.KindTransient, "connection_refused")
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %s to fail against a stopped server", d)
			}
		})
	}
	m.Start()
	got, _, err := store.GetBytes(ctx, s, "k")
	if err != nil || string(got) != "v" {
		t.Fatalf("after restart: %q, %v", got, err)
	}
}

// TestPausedServerTimesOut: a SIGSTOPped server never hangs a caller for
// much longer than the request timeout.
func TestPausedServerTimesOut(t *testing.T) {
	m := storetest.StartMinIO(t)
	cfg := m.Config(m.NewBucket(t))
	cfg.RequestTimeout = time.Second
	s := newStore(t, cfg)
	ctx := ctxFor(t)
	if _, err := store.PutBytes(ctx, s, "k", []byte("v"), store.Condition{}); err != nil {
		t.Fatal(err)
	}
	m.Pause()
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"stat", func() error { _, err := s.Stat(ctx, "k"); return err }},
		{"put", func() error {
			_, err := store.PutBytes(ctx, s, "k", []byte("w"), store.Condition{IfAbsent: true})
			return err
		}},
		{"list", func() error { return s.List(ctx, "", func(store.Info) error { return nil }) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := tc.call()
			wantCode(t, err, store.KindTransient, "timeout")
			if d := time.Since(start); d > 4*time.Second {
				t.Fatalf("took %s against a paused server, request timeout %s", d, cfg.RequestTimeout)
			}
		})
	}
	m.Resume()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := s.Stat(ctx, "k")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after resume: %v", err)
		}
	}
}

// TestTLSAgainstPlainHTTP: a TLS client pointed at a plain-HTTP MinIO
// fails at once, permanently, naming the setting to fix.
func TestTLSAgainstPlainHTTP(t *testing.T) {
	m := storetest.Shared(t)
	cfg := m.Config(m.NewBucket(t))
	cfg.TLS = true
	s := newStore(t, cfg)
	start := time.Now()
	_, err := s.Stat(ctxFor(t), "k")
	wantCode(t, err, store.KindPermanent, "tls_plain_http")
	t.Logf("TLS against plain HTTP: %v", err)
	if !strings.Contains(err.Error(), "MMSIDECAR_S3_TLS") {
		t.Fatalf("error %q does not name MMSIDECAR_S3_TLS", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("took %s to fail", d)
	}
}

// TestTLSUntrustedCertificate: a certificate the client does not trust is
// a permanent error naming MMSIDECAR_S3_CA_FILE; with that CA file the
// handshake succeeds.
func TestTLSUntrustedCertificate(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Minio-Error-Code", "NoSuchKey")
		w.WriteHeader(http.StatusNotFound)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are expected
	srv.StartTLS()
	defer srv.Close()
	cfg := s3store.Config{Endpoint: srv.Listener.Addr().String(), Bucket: "bucket", AccessKey: "a", SecretKey: "s", TLS: true}
	_, err := newStore(t, cfg).Stat(ctxFor(t), "k")
	wantCode(t, err, store.KindPermanent, "tls_verify")
	t.Logf("untrusted certificate: %v", err)
	if !strings.Contains(err.Error(), "MMSIDECAR_S3_CA_FILE") {
		t.Fatalf("error %q does not name MMSIDECAR_S3_CA_FILE", err)
	}
	cfg.CAFile = writeCert(t, srv)
	_, err = newStore(t, cfg).Stat(ctxFor(t), "k")
	wantCode(t, err, store.KindNotFound, "NoSuchKey")
}

func TestNewRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := s3store.Config{Endpoint: "127.0.0.1:9000", Bucket: "b", AccessKey: "a", SecretKey: "s"}
	for _, tc := range []struct {
		name string
		edit func(*s3store.Config)
		want string
	}{
		{"no bucket", func(c *s3store.Config) { c.Bucket = "" }, "bucket"},
		{"no endpoint", func(c *s3store.Config) { c.Endpoint = "" }, "endpoint"},
		{"missing CA file", func(c *s3store.Config) { c.TLS, c.CAFile = true, filepath.Join(dir, "nope.pem") }, "MMSIDECAR_S3_CA_FILE"},
		{"garbage CA file", func(c *s3store.Config) { c.TLS, c.CAFile = true, garbage }, "MMSIDECAR_S3_CA_FILE"},
		{"CA file without TLS", func(c *s3store.Config) { c.CAFile = garbage }, "MMSIDECAR_S3_TLS"},
		{"http scheme with TLS", func(c *s3store.Config) { c.Endpoint, c.TLS = "http://127.0.0.1:9000", true }, "MMSIDECAR_S3_TLS"},
		{"bad scheme", func(c *s3store.Config) { c.Endpoint = "ftp://127.0.0.1:9000" }, "scheme"},
		{"negative timeout", func(c *s3store.Config) { c.RequestTimeout = -time.Second }, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.edit(&cfg)
			_, err := s3store.New(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// TestPermanentErrors: bad credentials and a missing bucket are permanent,
// with the server's code.
func TestPermanentErrors(t *testing.T) {
	m := storetest.Shared(t)
	bucket := m.NewBucket(t)
	for _, tc := range []struct {
		name string
		edit func(*s3store.Config)
		code string
	}{
		{"wrong secret", func(c *s3store.Config) { c.SecretKey += "x" }, "SignatureDoesNotMatch"},
		{"unknown access key", func(c *s3store.Config) { c.AccessKey = "nobody" }, "InvalidAccessKeyId"},
		{"missing bucket", func(c *s3store.Config) { c.Bucket = "no-such-bucket-mmsidecar" }, "NoSuchBucket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := m.Config(bucket)
			tc.edit(&cfg)
			s := newStore(t, cfg)
			_, err := store.PutBytes(ctxFor(t), s, "k", []byte("v"), store.Condition{IfAbsent: true})
			wantCode(t, err, store.KindPermanent, tc.code)
			err = s.List(ctxFor(t), "", func(store.Info) error { return nil })
			wantCode(t, err, store.KindPermanent, tc.code)
		})
	}
}
