package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner"
	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/probe"
	"github.com/mmsidecar/mmsidecar/store/storemetrics"
)

func runRun(ctx context.Context, args []string) error {
	fs := newFlagSet("run", "Run the sidecar: mirror the queue directories into the store and, in\ncluster mode, coordinate with the other nodes through it.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := LoadConfig(ctx, nil)
	if err != nil {
		return err
	}
	base := newLogger(os.Stderr, cfg)
	log := base.With("node", cfg.NodeID)
	drainCtx, abortCtx, stopSignals := signalContexts(ctx)
	defer stopSignals()

	reg := newRegistry()
	raw, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer closeStore(raw)
	st := storemetrics.Wrap(raw, reg)
	log.Info("starting", "version", readBuildInfo().Version, "mode", cfg.Mode, "store", storeDescription(cfg), "queue_dir", cfg.QueueDir)
	if err := startupProbe(abortCtx, cfg, st, log); err != nil {
		return err
	}
	d, err := newDaemon(cfg, st, reg, base)
	if err != nil {
		return err
	}
	return d.run(drainCtx, abortCtx)
}

// startupProbe waits until the store answers, then runs the safety probe
// and refuses an unsafe store unless MMSIDECAR_ALLOW_UNSAFE_STORE is set.
// The store being away at start is no reason to give up, so an
// unreachable store is waited for, not refused.
func startupProbe(ctx context.Context, cfg *Config, st store.Store, log *slog.Logger) error {
	prefix := fence.NewLayout(cfg.S3Prefix).Prefix()
	ping := func() error {
		err := st.List(ctx, prefix+"nodes/", func(store.Info) error { return errStopPing })
		if errors.Is(err, errStopPing) {
			return nil
		}
		return err
	}
	wait := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
			return nil
		}
	}
	var inconclusiveSince time.Time
	for {
		err := ping()
		if err == nil {
			// The sidecar's conditional writes (leases, claims) are all
			// small: the large-write probe is left to 'mmsidecar check',
			// so that a restart renews the node's lease seconds sooner.
			rep := probe.Run(ctx, st, probe.Options{Prefix: prefix, SkipLarge: true})
			if rep.Safe() {
				log.Info("store probe passed: conditional writes are honoured")
				return nil
			}
			// A probe that failed because the store went away is retried
			// as an unreachable store; one whose store calls failed
			// transiently (MinIO healing after a server came back answers
			// 503 SlowDownWrite) is retried for probeRetryLimit. Only a
			// store caught ignoring a condition is refused.
			if err = ping(); err == nil {
				if rep.Unsafe() {
					failed := rep.Failed()
					if cfg.AllowUnsafeStore {
						log.Error("STORE IS UNSAFE: conditional writes are not honoured; running anyway because MMSIDECAR_ALLOW_UNSAFE_STORE=true. Two nodes may process the same message.", "failed", failed)
						return nil
					}
					return fmt.Errorf("store is unsafe (probes failed: %s): run 'mmsidecar check' for details; set MMSIDECAR_ALLOW_UNSAFE_STORE=true only if you accept duplicate processing", strings.Join(failed, ", "))
				}
				if inconclusiveSince.IsZero() {
					inconclusiveSince = time.Now()
				}
				if time.Since(inconclusiveSince) > probeRetryLimit {
					return fmt.Errorf("store probe kept failing with store errors for %s (%s: %s): run 'mmsidecar check' for details",
						probeRetryLimit, strings.Join(rep.Failed(), ", "), firstDetail(rep))
				}
				log.Warn("store probe failed with store errors, not with a broken condition; retrying", "failed", rep.Failed(), "err", firstDetail(rep))
				if err := wait(); err != nil {
					return err
				}
				continue
			}
		}
		if store.KindOf(err) == store.KindPermanent {
			return fmt.Errorf("store refuses the sidecar: %w", err)
		}
		log.Warn("store unreachable at start; retrying", "err", err)
		if err := wait(); err != nil {
			return err
		}
	}
}

// probeRetryLimit is how long start-up retries a probe that fails only
// with transient store errors (MinIO answering 503 while it heals after
// a server came back) before it gives up on the store.
const probeRetryLimit = 5 * time.Minute

// firstDetail is the detail of the first failed probe of rep.
func firstDetail(rep probe.Report) string {
	for _, res := range rep.Results {
		if !res.OK {
			return res.Name + ": " + res.Detail
		}
	}
	return ""
}

// daemon is the wired sidecar: the mirror, the coordinator (cluster mode)
// and the HTTP listener.
type daemon struct {
	cfg     *Config
	log     *slog.Logger
	st      store.Store
	mirror  *runner.Mirror
	node    *fence.Node // nil in mirror mode
	http    *httpServer
	storeOK atomic.Int64 // unix nanos of the last successful store call (mirror mode)
}

func newDaemon(cfg *Config, st store.Store, reg prometheus.Registerer, log *slog.Logger) (*daemon, error) {
	d := &daemon{cfg: cfg, log: log.With("node", cfg.NodeID), st: st}
	layout := fence.NewLayout(cfg.S3Prefix)
	var gate func() fence.Gate
	if cfg.Mode == ModeCluster {
		gate = func() fence.Gate { return d.node.Gate() }
	} else {
		gate = func() fence.Gate { return fence.Gate{Epoch: 1, Writable: true, OwnFrom: 1} }
	}
	queues := cfg.Queues
	delDelay := cfg.DeleteBatchDelay
	if delDelay == 0 {
		delDelay = -1 // none; runner.Config's zero is its default
	}
	m, err := runner.New(runner.Config{
		Node: cfg.NodeID, QueueDir: cfg.QueueDir, Queues: queues, StateDir: cfg.StateDir,
		UID: cfg.FileUID, GID: cfg.FileGID,
		UploadConcurrency: cfg.UploadConcurrency, RescanInterval: cfg.RescanInterval,
		DeleteBatchDelay: delDelay, Layout: layout,
	}, st, runner.OSFS{}, fence.SystemClock{}, gate, runner.NewMetrics(reg), log)
	if err != nil {
		return nil, fmt.Errorf("start mirror: %w", err)
	}
	d.mirror = m
	if cfg.Mode == ModeCluster {
		n, err := fence.New(fence.Config{
			Node: cfg.NodeID, Layout: layout, TTL: cfg.LeaseTTL, Grace: cfg.LeaseGrace,
			Margin: cfg.LeaseMargin, MaxTransfers: cfg.MaxTransfers, Concurrency: cfg.TakeoverConcurrency,
			Epochs: runner.NewEpochFile(runner.OSFS{}, cfg.StateDir, cfg.NodeID),
		}, st, m, fence.SystemClock{}, fence.NewSystemRand(), fence.NewMetrics(reg), log)
		if err != nil {
			return nil, &ConfigError{Var: "MMSIDECAR_LEASE_TTL", Value: cfg.LeaseTTL.String(), Reason: err.Error()}
		}
		d.node = n
	}
	srv, err := newHTTPServer(cfg.ListenAddr, reg.(*prometheus.Registry), d.ready, log)
	if err != nil {
		return nil, err
	}
	d.http = srv
	d.routes()
	return d, nil
}

// ready is /readyz: the first reconcile is done and the store answers.
func (d *daemon) ready() error {
	if !d.mirror.Ready() {
		return errors.New("first reconcile not done")
	}
	if d.node != nil {
		switch state, epoch := d.node.State(); state {
		case fence.StateLive, fence.StateDraining:
			return nil
		default:
			return fmt.Errorf("node is %s (epoch %d)", state, epoch)
		}
	}
	if last := d.storeOK.Load(); time.Since(time.Unix(0, last)) > 3*time.Minute {
		return errors.New("store has not answered recently")
	}
	return nil
}

// run starts the node, reconciles, and runs until the first signal, then
// shuts down in order: stop taking work, flush uploads, fence.
func (d *daemon) run(drainCtx, abortCtx context.Context) error {
	fresh, err := freshDisk(d.cfg.StateDir, d.cfg.NodeID)
	if err != nil {
		return err
	}
	workCtx, stopWork := context.WithCancel(abortCtx)
	defer stopWork()
	var g run.Group
	g.Add(d.http.Actor())
	g.Add(func() error { return d.mirror.Run(workCtx) }, func(error) { stopWork() })
	g.Add(func() error {
		if d.node == nil {
			if err := d.start(workCtx, fresh, nil); err != nil {
				return err
			}
			return d.pingStore(workCtx)
		}
		if err := d.node.Start(workCtx, fresh); err != nil {
			return err
		}
		// The node renews its lease and settles the hold area in Run;
		// the first reconcile waits until it has settled.
		ran := make(chan error, 1)
		go func() { ran <- d.node.Run(workCtx) }()
		if err := d.start(workCtx, fresh, d.node.WaitSettled); err != nil {
			stopWork()
			<-ran
			return err
		}
		return <-ran
	}, func(error) { stopWork() })
	// The first signal shuts down in order while the mirror and the node
	// still run: flush uploads, then fence. Only then stop the rest.
	stopped := make(chan struct{})
	var stopOnce sync.Once
	g.Add(func() error {
		select {
		case <-drainCtx.Done():
		case <-stopped:
			return nil
		}
		d.shutdown(abortCtx)
		return context.Cause(drainCtx)
	}, func(error) { stopOnce.Do(func() { close(stopped) }) })
	err = g.Run()
	var se signalError
	if errors.As(err, &se) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// start waits until the node (cluster mode, started) has settled the hold
// area, then runs the first reconcile, which makes the sidecar ready.
func (d *daemon) start(ctx context.Context, fresh bool, settled func(context.Context) error) error {
	orphans := func(ctx context.Context, refs []fence.MirrorRef) ([]fence.MirrorRef, error) { return refs, nil }
	if d.node != nil {
		if err := settled(ctx); err != nil {
			return err
		}
		orphans = d.node.Orphans
	} else if fresh {
		// A mirror on a new disk keeps what the store holds: it is the
		// backup of what the disk lost.
		orphans = func(ctx context.Context, refs []fence.MirrorRef) ([]fence.MirrorRef, error) {
			if len(refs) > 0 {
				d.log.Warn("new local disk: keeping copies of entries that are not here", "copies", len(refs))
			}
			return nil, nil
		}
	}
	if err := d.mirror.Reconcile(ctx, orphans); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	d.storeOK.Store(time.Now().UnixNano())
	if err := markDisk(d.cfg.StateDir, d.cfg.NodeID); err != nil {
		return err
	}
	d.log.Info("ready")
	return nil
}

// pingStore keeps /readyz honest in mirror mode.
func (d *daemon) pingStore(ctx context.Context) error {
	prefix := fence.NewLayout(d.cfg.S3Prefix).LeasePrefix()
	for {
		err := d.st.List(ctx, prefix, func(store.Info) error { return errStopPing })
		if err == nil || errors.Is(err, errStopPing) {
			d.storeOK.Store(time.Now().UnixNano())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(30 * time.Second):
		}
	}
}

var errStopPing = errors.New("stop")

// shutdown flushes uploads and deletes for up to SHUTDOWN_TIMEOUT (a
// second signal cuts it short) while the mirror still runs, then, in
// cluster mode, fences: no entry the store knows stays visible to runners
// that no sidecar guards any more. The fence only moves local files, so it
// gets its own deadline, not what is left of the flush's.
func (d *daemon) shutdown(abortCtx context.Context) {
	d.http.SetStopping()
	ctx, cancel := context.WithTimeout(abortCtx, d.cfg.ShutdownTimeout)
	if err := d.mirror.Flush(ctx); err != nil {
		d.log.Warn("shutdown: uploads not all flushed", "err", err)
	}
	cancel()
	if d.node != nil {
		fctx, fcancel := context.WithTimeout(context.WithoutCancel(abortCtx), time.Minute)
		d.node.Stop(fctx)
		fcancel()
	}
	d.log.Info("stopped")
}
