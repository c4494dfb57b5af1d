package s3store_test

import (
	"bytes"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// writeCert writes srv's certificate as a PEM CA file.
func writeCert(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// fault says what the proxy does to the first conditional PUT.
type fault int

const (
	// passThrough forwards everything.
	passThrough fault = iota
	// badGateway lets the PUT commit, then answers 502.
	badGateway
	// hangUp lets the PUT commit, then closes the connection unanswered.
	hangUp
)

// lossyProxy forwards to MinIO, but lets the first conditional PUT commit
// and loses its answer: the ambiguous outcome a retried conditional write
// must resolve.
type lossyProxy struct {
	target *url.URL
	proxy  *httputil.ReverseProxy
	fault  fault

	mu      sync.Mutex
	faulted bool
	puts    int // conditional PUTs that reached MinIO
	heads   int // HEADs (read-backs) that reached MinIO
}

func newLossyProxy(t *testing.T, endpoint string, f fault) (*httptest.Server, *lossyProxy) {
	t.Helper()
	target := &url.URL{Scheme: "http", Host: endpoint}
	p := &lossyProxy{target: target, fault: f}
	p.proxy = &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.Host = r.In.Host // the signature covers the Host header
	}}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		t.Logf("proxy saw %d conditional PUTs, %d HEADs", p.puts, p.heads)
	})
	return srv, p
}

func (p *lossyProxy) counts() (puts, heads int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.puts, p.heads
}

func (p *lossyProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	conditional := r.Method == http.MethodPut && (r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Match") != "")
	p.mu.Lock()
	if conditional {
		p.puts++
	}
	if r.Method == http.MethodHead {
		p.heads++
	}
	drop := conditional && p.fault != passThrough && !p.faulted
	if drop {
		p.faulted = true
	}
	p.mu.Unlock()
	if !drop {
		p.proxy.ServeHTTP(w, r)
		return
	}
	// Forward the PUT and let it commit, then lose the answer.
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host = p.target.Scheme, p.target.Host
	out.RequestURI = ""
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	switch p.fault {
	case badGateway:
		http.Error(w, "upstream answer lost", http.StatusBadGateway)
	case hangUp:
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}
}

// TestAmbiguousConditionalPut: a conditional PUT that committed but whose
// answer was lost is reported as the success it was, whether minio-go's
// retry then met a 412 or the error reached the store.
func TestAmbiguousConditionalPut(t *testing.T) {
	m := storetest.Shared(t)
	for _, tc := range []struct {
		name      string
		fault     fault
		retries   int
		cas       bool
		wantPuts  int
		wantHeads int
	}{
		{"create 502 then retry meets 412", badGateway, 0, false, 2, 1},
		{"cas hang-up then retry meets 412", hangUp, 0, true, 2, 1},
		{"create 502 without retries", badGateway, 1, false, 1, 1},
		{"cas hang-up without retries", hangUp, 1, true, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bucket := m.NewBucket(t)
			direct := newStore(t, m.Config(bucket))
			ctx := ctxFor(t)
			cond := store.Condition{IfAbsent: true}
			if tc.cas {
				prev, err := store.PutBytes(ctx, direct, "k", []byte("previous"), store.Condition{})
				if err != nil {
					t.Fatal(err)
				}
				cond = store.Condition{IfMatch: prev.ETag}
			}
			srv, proxy := newLossyProxy(t, m.Endpoint, tc.fault)
			cfg := m.Config(bucket)
			cfg.Endpoint = srv.Listener.Addr().String()
			cfg.MaxRetries = tc.retries
			s := newStore(t, cfg)
			body := []byte("mine " + t.Name())
			info, err := store.PutBytes(ctx, s, "k", body, cond)
			if err != nil {
				t.Fatalf("put: %v (kind %v, code %s)", err, store.KindOf(err), store.CodeOf(err))
			}
			if info.ETag != store.ETagOf(body) || info.Size != int64(len(body)) {
				t.Fatalf("info %+v, want etag %s", info, store.ETagOf(body))
			}
			got, _, err := store.GetBytes(ctx, direct, "k")
			if err != nil || !bytes.Equal(got, body) {
				t.Fatalf("stored %q, %v; want %q", got, err, body)
			}
			puts, heads := proxy.counts()
			if puts != tc.wantPuts || heads != tc.wantHeads {
				t.Fatalf("proxy saw %d conditional PUTs and %d HEADs, want %d and %d", puts, heads, tc.wantPuts, tc.wantHeads)
			}
		})
	}
}

// TestPreconditionNotMine: a 412 for an object another writer made is a
// lost condition, after a read-back that finds a foreign nonce.
func TestPreconditionNotMine(t *testing.T) {
	m := storetest.Shared(t)
	bucket := m.NewBucket(t)
	srv, proxy := newLossyProxy(t, m.Endpoint, passThrough)
	cfg := m.Config(bucket)
	cfg.Endpoint = srv.Listener.Addr().String()
	s := newStore(t, cfg)
	ctx := ctxFor(t)
	theirs := []byte("theirs")
	if _, err := store.PutBytes(ctx, s, "k", theirs, store.Condition{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	// Same bytes, same ETag: only the nonce tells the writes apart.
	_, err := store.PutBytes(ctx, s, "k", theirs, store.Condition{IfAbsent: true})
	wantCode(t, err, store.KindPrecondition, "PreconditionFailed")
	if puts, heads := proxy.counts(); puts != 2 || heads != 1 {
		t.Fatalf("proxy saw %d conditional PUTs and %d HEADs, want 2 and 1", puts, heads)
	}
}
