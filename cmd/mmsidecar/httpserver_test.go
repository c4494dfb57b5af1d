package main

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func TestHTTPServer(t *testing.T) {
	reg := newRegistry()
	hits := prometheus.NewCounter(prometheus.CounterOpts{Name: "mmsidecar_test_hits_total", Help: "test"})
	reg.MustRegister(hits)
	hits.Add(3)
	var notReady atomic.Pointer[error]
	starting := errors.New("first reconcile not done")
	notReady.Store(&starting)
	ready := func() error {
		if p := notReady.Load(); p != nil {
			return *p
		}
		return nil
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := newHTTPServer("127.0.0.1:0", reg, ready, log)
	if err != nil {
		t.Fatal(err)
	}
	s.Handle("POST /drain", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "draining") }))
	slowStarted, releaseSlow := make(chan struct{}), make(chan struct{})
	s.Handle("GET /slow", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(slowStarted)
		<-releaseSlow
		io.WriteString(w, "done")
	}))
	execute, interrupt := s.Actor()
	served := make(chan error, 1)
	go func() { served <- execute() }()
	base := "http://" + s.Addr()

	tests := []struct {
		method, path string
		wantCode     int
		wantBody     string
	}{
		{"GET", "/healthz", 200, "ok"},
		{"HEAD", "/healthz", 200, ""},
		{"GET", "/readyz", 503, "not ready: first reconcile not done"},
		{"GET", "/metrics", 200, "mmsidecar_test_hits_total 3"},
		{"GET", "/metrics", 200, "go_goroutines"},
		{"POST", "/drain", 200, "draining"},
		{"GET", "/drain", 405, ""},
		{"POST", "/healthz", 405, ""},
		{"GET", "/nope", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+tt.path, func(t *testing.T) {
			code, body := get(t, tt.method, base+tt.path)
			if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
				t.Errorf("got %d %q, want %d containing %q", code, body, tt.wantCode, tt.wantBody)
			}
		})
	}

	notReady.Store(nil)
	if code, body := get(t, "GET", base+"/readyz"); code != 200 || !strings.Contains(body, "ready") {
		t.Errorf("ready: got %d %q", code, body)
	}

	// Graceful shutdown: a request in progress completes, new connections
	// are refused, and execute returns nil.
	slow := make(chan string, 1)
	go func() {
		resp, err := http.Get(base + "/slow")
		if err != nil {
			slow <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		slow <- string(b)
	}()
	<-slowStarted
	interrupted := make(chan struct{})
	go func() { interrupt(errors.New("test")); close(interrupted) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepts after interrupt")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-served:
		t.Fatalf("execute returned %v with a request in flight", err)
	default:
	}
	close(releaseSlow)
	if got := <-slow; got != "done" {
		t.Errorf("in-flight request: %q", got)
	}
	<-interrupted
	if err := <-served; err != nil {
		t.Errorf("execute: %v", err)
	}
}

func TestHTTPServerReadyzWhileStopping(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := newHTTPServer("127.0.0.1:0", prometheus.NewRegistry(), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	execute, interrupt := s.Actor()
	served := make(chan error, 1)
	go func() { served <- execute() }()
	base := "http://" + s.Addr()
	if code, _ := get(t, "GET", base+"/readyz"); code != 200 {
		t.Errorf("nil ready func: got %d, want 200", code)
	}
	s.SetStopping()
	if code, body := get(t, "GET", base+"/readyz"); code != 503 || !strings.Contains(body, "shutting down") {
		t.Errorf("stopping: got %d %q", code, body)
	}
	interrupt(nil)
	if err := <-served; err != nil {
		t.Errorf("execute: %v", err)
	}
}

func TestHTTPServerBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, err = newHTTPServer(ln.Addr().String(), prometheus.NewRegistry(), nil, log)
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("busy port: got %v, want an error naming %s", err, ln.Addr())
	}
}

func TestHTTPServerInterruptBeforeServe(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := newHTTPServer("127.0.0.1:0", prometheus.NewRegistry(), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	execute, interrupt := s.Actor()
	interrupt(nil)
	done := make(chan error, 1)
	go func() { done <- execute() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("execute after interrupt: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("execute serves after interrupt")
	}
	if c, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
		c.Close()
		t.Error("listener still open")
	}
}
