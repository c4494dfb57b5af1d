package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// faultProxy sits between the sidecar and a real MinIO: requests pass
// unchanged (Host included, so signatures hold) unless refuse or stall
// says otherwise for them.
type faultProxy struct {
	srv *httptest.Server
	// refuseConditional answers every conditional PUT with MinIO's 503
	// SlowDownWrite, as a cluster healing after a server came back does.
	refuseConditional atomic.Bool
	// stallClaimReads holds every GET of a claim until the client gives
	// up.
	stallClaimReads atomic.Bool
}

func newFaultProxy(t *testing.T, endpoint string) *faultProxy {
	t.Helper()
	target := &url.URL{Scheme: "http", Host: endpoint}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.Host = r.In.Host
	}}
	p := &faultProxy{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conditional := r.Header.Get("If-None-Match") != "" || r.Header.Get("If-Match") != ""
		switch {
		case r.Method == http.MethodPut && conditional && p.refuseConditional.Load():
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDownWrite</Code><Message>Resource requested is unwritable, please reduce your request rate</Message></Error>`))
			return
		case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/claims/") && p.stallClaimReads.Load():
			<-r.Context().Done()
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *faultProxy) addr() string {
	u, _ := url.Parse(p.srv.URL)
	return net.JoinHostPort(u.Hostname(), u.Port())
}

// minioEnv is a cluster node's environment on MinIO through proxy p.
func minioEnv(t *testing.T, m *storetest.MinIO, bucket string, p *faultProxy, node string, kv ...string) map[string]string {
	t.Helper()
	return clusterEnv(t, node, filepath.Join(t.TempDir(), "unused"), append([]string{
		"MMSIDECAR_S3_ENDPOINT", "http://" + p.addr(), "MMSIDECAR_S3_BUCKET", bucket,
		"MMSIDECAR_S3_ACCESS_KEY", m.AccessKey, "MMSIDECAR_S3_SECRET_KEY", m.SecretKey,
		"MMSIDECAR_S3_REQUEST_TIMEOUT", "30s", "MMSIDECAR_SHUTDOWN_TIMEOUT", "20s",
	}, kv...)...)
}

// TestStopDuringStartupOnMinIO: one SIGTERM stops the daemon while the
// start-up probe is retrying (the store answers 503 to conditional
// writes) and while it is settling its hold area (claim reads hang),
// exit 0, logged at INFO (issue 21).
func TestStopDuringStartupOnMinIO(t *testing.T) {
	m := storetest.Shared(t)
	t.Run("probe retrying", func(t *testing.T) {
		p := newFaultProxy(t, m.Endpoint)
		p.refuseConditional.Store(true)
		d := startDaemon(t, minioEnv(t, m, m.NewBucket(t), p, "n1"))
		d.waitReadyz(time.Minute, http.StatusServiceUnavailable, "not with a broken condition")
		wantCleanStop(t, d, phaseProbe)
	})
	t.Run("settling", func(t *testing.T) {
		p := newFaultProxy(t, m.Endpoint)
		env := minioEnv(t, m, m.NewBucket(t), p, "n1")
		// A first run mirrors an entry and, stopping, holds it (the
		// shutdown fence); the next start settles it against its claim.
		d := startDaemon(t, env)
		d.waitReadyz(time.Minute, http.StatusOK, "ready")
		enqueue(t, env["MMSIDECAR_QUEUE_DIR"], "in", 3)
		d.waitFor(time.Minute, "3 entries mirrored", func() bool {
			q := localQueueOf(t, d, "in")
			return q.Pck == 3 && q.Unmirrored == 0
		})
		if code, _ := d.stop(time.Minute); code != 0 {
			t.Fatalf("first run: exit %d", code)
		}
		if n := countPck(t, env["MMSIDECAR_QUEUE_DIR"], "in"); n != 0 {
			t.Fatalf("%d entries left visible after the shutdown fence, want all held", n)
		}
		p.stallClaimReads.Store(true)
		d = startDaemon(t, env)
		d.waitReadyz(time.Minute, http.StatusServiceUnavailable, phaseSettle)
		wantCleanStop(t, d, phaseSettle)
		// Still held, for the next start to settle.
		p.stallClaimReads.Store(false)
		d = startDaemon(t, env)
		d.waitReadyz(time.Minute, http.StatusOK, "ready")
		if n := countPck(t, env["MMSIDECAR_QUEUE_DIR"], "in"); n != 3 {
			t.Errorf("after the third start %d entries are visible, want the 3 settled back", n)
		}
		wantCleanStop(t, d, phaseReady)
	})
}
