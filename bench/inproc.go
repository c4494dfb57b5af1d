package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner"
	"github.com/mmsidecar/mmsidecar/store/s3store"
	"github.com/mmsidecar/mmsidecar/store/storemetrics"
)

// Lease timing of the binary's defaults, used in-process when o leaves
// them zero.
const (
	defaultTTL    = 15 * time.Second
	defaultGrace  = 5 * time.Second
	defaultMargin = 3 * time.Second
)

// inprocSidecar wires runner.Mirror and fence.Node the way `mmsidecar run`
// does, in this process, so that -cpuprofile and -memprofile see them. It
// skips the start-up store probe.
type inprocSidecar struct {
	reg    *prometheus.Registry
	mirror *runner.Mirror
	node   *fence.Node
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ready  atomic.Bool
	mu     sync.Mutex
	err    error
}

// inprocMarker marks a queue directory this bench already started a node
// on (the binary keeps its own marker).
const inprocMarker = "bench-node-id"

func startInproc(ctx context.Context, e *env, o sidecarOpts) (*inprocSidecar, error) {
	ttl, grace, margin := o.TTL, o.Grace, o.Margin
	if ttl == 0 {
		ttl, grace, margin = defaultTTL, defaultGrace, defaultMargin
	}
	reg := prometheus.NewRegistry()
	raw, err := s3store.New(s3store.Config{Endpoint: e.endpoint(o), Bucket: o.Bucket, AccessKey: e.store.s3.AccessKey, SecretKey: e.store.s3.SecretKey})
	if err != nil {
		return nil, err
	}
	st := storemetrics.Wrap(raw, reg)
	layout := fence.NewLayout("mmsidecar")
	s := &inprocSidecar{reg: reg}
	stateDir := filepath.Join(o.QueueDir, ".mmsidecar")
	m, err := runner.New(runner.Config{
		Node: o.Node, QueueDir: o.QueueDir, StateDir: stateDir, UID: -1, GID: -1, Layout: layout,
	}, st, runner.OSFS{}, fence.SystemClock{}, func() fence.Gate { return s.node.Gate() }, runner.NewMetrics(reg), nil)
	if err != nil {
		return nil, err
	}
	n, err := fence.New(fence.Config{
		Node: o.Node, Layout: layout, TTL: ttl, Grace: grace, Margin: margin, MaxTransfers: 3,
	}, st, m, fence.SystemClock{}, fence.NewSystemRand(), fence.NewMetrics(reg), nil)
	if err != nil {
		return nil, err
	}
	s.mirror, s.node = m, n
	// Goroutines started below (HTTP connections included) carry the
	// label role=sidecar in CPU profiles: go tool pprof -tagfocus role=sidecar.
	rctx, cancel := context.WithCancel(pprof.WithLabels(context.Background(), pprof.Labels("role", "sidecar")))
	s.cancel = cancel
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		pprof.SetGoroutineLabels(rctx)
		m.Run(rctx)
	}()
	go func() {
		defer s.wg.Done()
		pprof.SetGoroutineLabels(rctx)
		marker := filepath.Join(stateDir, inprocMarker)
		_, statErr := os.Stat(marker)
		if err := n.Start(rctx, errors.Is(statErr, os.ErrNotExist)); err != nil {
			s.fail(err)
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			n.Run(rctx)
		}()
		if err := n.WaitSettled(rctx); err != nil {
			s.fail(err)
			return
		}
		if err := m.Reconcile(rctx, n.Orphans); err != nil {
			s.fail(err)
			return
		}
		if err := os.WriteFile(marker, []byte(o.Node+"\n"), 0o640); err != nil {
			s.fail(err)
			return
		}
		s.ready.Store(true)
	}()
	return s, nil
}

func (s *inprocSidecar) fail(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

func (s *inprocSidecar) pid() int { return 0 }

func (s *inprocSidecar) describe() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("in-process sidecar (error: %v)", s.err)
}

func (s *inprocSidecar) waitReady(ctx context.Context) error {
	for !s.ready.Load() {
		s.mu.Lock()
		err := s.err
		s.mu.Unlock()
		if err != nil {
			return fmt.Errorf("in-process sidecar: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("in-process sidecar not ready: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

func (s *inprocSidecar) metrics(ctx context.Context) (metrics, error) {
	mfs, err := s.reg.Gather()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			return nil, err
		}
	}
	return parseMetrics(&buf)
}

// stop shuts down as the binary does on SIGTERM: stop work, flush
// uploads, fence.
func (s *inprocSidecar) stop(ctx context.Context) error {
	s.cancel()
	s.wg.Wait()
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := s.mirror.Flush(fctx)
	s.node.Stop(ctx)
	return err
}

// kill stops every loop without flushing or fencing, like a crash.
func (s *inprocSidecar) kill() {
	s.cancel()
	s.wg.Wait()
}
