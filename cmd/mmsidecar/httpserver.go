package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpServer is the sidecar's one HTTP listener: /healthz, /readyz,
// /metrics, and whatever else is registered with Handle before Actor runs.
type httpServer struct {
	log   *slog.Logger
	mux   *http.ServeMux
	srv   *http.Server
	ln    net.Listener
	ready func() error
	// info, when set, adds lines to /readyz's answer (the runner gate).
	info     func() string
	stopping atomic.Bool
	// stopped is closed when a graceful shutdown has finished.
	stopped  chan struct{}
	stopOnce sync.Once
	// shutdownTimeout bounds the graceful shutdown.
	shutdownTimeout time.Duration
}

// newRegistry returns a registry with the Go runtime and process
// collectors registered.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// newHTTPServer binds addr now, so that a busy port fails before anything
// else starts, and serves /healthz (200 while the process runs), /readyz
// (200 when ready returns nil, else 503 with the reason; nil ready means
// always ready) and /metrics from reg.
func newHTTPServer(addr string, reg *prometheus.Registry, ready func() error, log *slog.Logger) (*httpServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	s := &httpServer{log: log, mux: http.NewServeMux(), ln: ln, ready: ready, stopped: make(chan struct{}), shutdownTimeout: 5 * time.Second}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mmsidecar_http_requests_total",
		Help: "Requests to the sidecar's listener, by route (its pattern, or \"none\") and status code.",
	}, []string{"route", "code"})
	reg.MustRegister(requests)
	s.srv = &http.Server{
		Handler:           countRequests(s.mux, requests),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.serveReady)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		Registry: reg,
	}))
	return s, nil
}

// countRequests counts each request by the route that served it.
func countRequests(h http.Handler, c *prometheus.CounterVec) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" {
			route = "none"
		}
		c.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
	})
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code int
}

// WriteHeader implements http.ResponseWriter.
func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *httpServer) serveReady(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	var err error
	switch {
	case s.stopping.Load():
		err = errors.New("shutting down")
	case s.ready != nil:
		err = s.ready()
	}
	extra := ""
	if s.info != nil {
		extra = s.info()
	}
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %v\n%s", err, extra)
		return
	}
	fmt.Fprintf(w, "ready\n%s", extra)
}

// Handle registers an extra handler, with a Go 1.22 pattern such as
// "POST /drain". Call it before the server runs.
func (s *httpServer) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Addr returns the bound address (useful with port 0).
func (s *httpServer) Addr() string { return s.ln.Addr().String() }

// Close releases the listener of a server whose Actor never ran.
func (s *httpServer) Close() error {
	s.srv.Close()
	s.stopOnce.Do(func() { close(s.stopped) })
	return s.ln.Close()
}

// SetStopping makes /readyz answer 503 "shutting down" from now on.
func (s *httpServer) SetStopping() { s.stopping.Store(true) }

// Actor returns the run.Group pair: execute serves until interrupted;
// interrupt marks the server as stopping and shuts it down gracefully,
// waiting up to the shutdown timeout for requests in progress before
// closing their connections.
func (s *httpServer) Actor() (execute func() error, interrupt func(error)) {
	execute = func() error {
		s.log.Info("http listening", "addr", s.Addr())
		if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http serve: %w", err)
		}
		// Serve returns as soon as the listener closes; wait for the
		// requests in progress.
		<-s.stopped
		return nil
	}
	interrupt = func(error) {
		s.SetStopping()
		ctx, cancel := context.WithTimeout(context.Background(), s.shutdownTimeout)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			s.log.Warn("http shutdown", "err", err)
			s.srv.Close()
		}
		s.stopOnce.Do(func() { close(s.stopped) })
	}
	return execute, interrupt
}
