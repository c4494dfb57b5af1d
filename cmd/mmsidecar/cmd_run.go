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
	fs := newFlagSet("run", "Run the sidecar: mirror the queue directories into the store and, in\ncluster mode, coordinate with the other nodes through it. The HTTP\nlistener (MMSIDECAR_LISTEN_ADDR) opens first: /healthz, /metrics and\nthe cluster page at / answer at once, /readyz says what the start-up\nwaits for. Under systemd (Type=notify) it reports readiness and pings\nthe watchdog. One SIGTERM stops it at any stage: during the start-up at\nonce, once ready after flushing uploads (MMSIDECAR_SHUTDOWN_TIMEOUT) and\nfencing; exit 0.")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfigWithToken(ctx)
	if err != nil {
		return err
	}
	base := newLogger(os.Stderr, cfg)
	log := base.With("node", cfg.NodeID)
	drainCtx, abortCtx, stopSignals := signalContexts(ctx)
	defer stopSignals()
	if err := prepareDirs(cfg); err != nil {
		return err
	}
	reg := newRegistry()
	registerBuildInfo(reg)
	raw, err := openStore(cfg)
	if err != nil {
		return err
	}
	defer closeStore(raw)
	st := storemetrics.Wrap(raw, reg)
	log.Info("starting", "version", readBuildInfo().Version, "mode", cfg.Mode, "store", storeDescription(cfg), "queue_dir", cfg.QueueDir)
	if w := localStoreWarning(cfg); w != "" {
		log.Warn(w)
	}
	d, err := newDaemon(cfg, st, reg, base)
	if err != nil {
		return err
	}
	return d.run(drainCtx, abortCtx)
}

// loadConfigWithToken is LoadConfig plus the admin token, every problem
// reported at once.
func loadConfigWithToken(ctx context.Context) (*Config, error) {
	cfg, err := LoadConfig(ctx, nil)
	if terr := cfg.loadAdminToken(); terr != nil {
		return nil, errJoin([]error{err, terr})
	}
	return cfg, err
}

// localStoreWarning is the warning for a cluster on the embedded
// directory store, which only this host can see: such a "cluster" node
// coordinates with nobody (issue 22). Empty when it does not apply.
func localStoreWarning(cfg *Config) string {
	if cfg.Mode != ModeCluster || cfg.S3Endpoint != "" {
		return ""
	}
	return fmt.Sprintf("SINGLE-HOST STORE: MMSIDECAR_MODE=cluster on the embedded directory store %s, which only this host can see: "+
		"no other node can coordinate with this one. Set MMSIDECAR_S3_ENDPOINT for a cluster, or MMSIDECAR_MODE=mirror for a single-node backup", cfg.StoreDir)
}

// startupProbe waits until the store answers, then runs the safety probe
// and refuses an unsafe store unless MMSIDECAR_ALLOW_UNSAFE_STORE is set.
// The store being away at start is no reason to give up, so an
// unreachable store is waited for, not refused; ph (nil: none) says which
// it is doing. It returns ctx's error once ctx ends.
func startupProbe(ctx context.Context, cfg *Config, st store.Store, log *slog.Logger, ph *phase) error {
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
	var inconclusiveSince, unreachableSince time.Time
	for {
		ph.set(phaseStore, "")
		err := ping()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			unreachableSince = time.Time{}
			ph.set(phaseProbe, "")
			// The sidecar's conditional writes (leases, claims) are all
			// small: the large-write probe is left to 'mmsidecar check',
			// so that a restart renews the node's lease seconds sooner.
			rep := probe.Run(ctx, st, probe.Options{Prefix: prefix, SkipLarge: true})
			if ctx.Err() != nil {
				return ctx.Err()
			}
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
				detail := fmt.Sprintf("the probe failed with store errors, not with a broken condition, for %s; retrying (%s)", humanDuration(time.Since(inconclusiveSince)), firstDetail(rep))
				ph.set(phaseProbe, detail)
				log.Warn("store probe failed with store errors, not with a broken condition; retrying", "failed", rep.Failed(), "err", firstDetail(rep))
				if err := wait(); err != nil {
					return err
				}
				continue
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		if store.KindOf(err) == store.KindPermanent {
			return fmt.Errorf("store refuses the sidecar: %w", err)
		}
		if unreachableSince.IsZero() {
			unreachableSince = time.Now()
		}
		ph.set(phaseStore, fmt.Sprintf("unreachable for %s: %v", humanDuration(time.Since(unreachableSince)), err))
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
	gate    *runner.GateFile
	clock   fence.Clock // the coordinator's: CLOCK_BOOTTIME
	runners *gateRunners
	http    *httpServer
	reg     *prometheus.Registry
	phase   *phase
	events  *eventRing
	cluster clusterCache
	storeOK atomic.Int64 // unix nanos of the last successful store call (mirror mode)
}

func newDaemon(cfg *Config, st store.Store, reg *prometheus.Registry, log *slog.Logger) (*daemon, error) {
	d := &daemon{cfg: cfg, log: log.With("node", cfg.NodeID), st: st, reg: reg, events: newEventRing(eventRingSize), clock: fence.BootClock{}}
	d.phase = newPhase(newNotifier(), d.log)
	layout := fence.NewLayout(cfg.S3Prefix)
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	g, err := runner.NewGateFile(runner.GateConfig{StateDir: cfg.StateDir, Node: cfg.NodeID, Clock: d.clock}, runner.OSFS{})
	if err != nil {
		return nil, err
	}
	d.gate = g
	d.runners = newGateRunners(g.RunnersDir(), reg, log)
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
		DeleteBatchDelay: delDelay, Layout: layout, Gate: d.gate,
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
			Gate:   d.gate, RunnerGate: cfg.RunnerGate,
		}, st, m, d.clock, fence.NewSystemRand(), fence.NewMetrics(reg), log)
		if err != nil {
			return nil, &ConfigError{Var: "MMSIDECAR_LEASE_TTL", Value: cfg.LeaseTTL.String(), Reason: err.Error()}
		}
		d.node = n
	}
	srv, err := newHTTPServer(cfg.ListenAddr, reg, d.ready, log)
	if err != nil {
		return nil, err
	}
	d.http = srv
	// /readyz also says whether the runner gate guards this node's runners.
	srv.info = func() string { return gateLine(d.gateStatus()) + "\n" }
	d.routes()
	return d, nil
}

// ready is /readyz: the start-up is done, the node is live (cluster mode)
// or the store answers (mirror mode), and no drain is under way.
func (d *daemon) ready() error {
	if name, detail, since := d.phase.get(); name != phaseReady {
		msg := fmt.Sprintf("%s (for %s)", name, humanDuration(time.Since(since)))
		if detail != "" {
			msg += ": " + detail
		}
		return errors.New(msg)
	}
	if !d.mirror.Ready() {
		return errors.New("first reconcile not done")
	}
	if d.node != nil {
		switch state, epoch := d.node.State(); state {
		case fence.StateLive:
			return nil
		case fence.StateDraining:
			return errors.New("draining: handing this node's backlog to its peers (undo: mmsidecar drain -cancel)")
		default:
			return fmt.Errorf("node is %s (epoch %d)", state, epoch)
		}
	}
	if last := d.storeOK.Load(); time.Since(time.Unix(0, last)) > 3*time.Minute {
		return errors.New("store has not answered recently")
	}
	return nil
}

// run serves HTTP at once, then starts up (store, probe, lease, settle,
// first reconcile) and runs until the first signal, then shuts down in
// order: stop taking work, flush uploads, fence. A signal during the
// start-up ends it at once: the node owns nothing the shutdown must hand
// back before its lease is settled, and no upload starts before the
// first reconcile. A stop by a signal returns nil (exit 0).
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
	g.Add(func() error { return d.runners.run(workCtx) }, func(error) { stopWork() })
	// startedUp is closed when the start-up has returned, one way or the
	// other: the shutdown waits for it before it decides whether to fence.
	startedUp := make(chan struct{})
	g.Add(func() error {
		ran, err := d.startup(drainCtx, workCtx, fresh)
		close(startedUp)
		if err != nil && drainCtx.Err() != nil {
			// A signal ended the start-up: the shutdown actor stops the
			// rest, in order.
			err = nil
		}
		if err != nil {
			stopWork()
		}
		<-workCtx.Done()
		if ran != nil {
			if rerr := <-ran; err == nil {
				err = rerr
			}
		}
		return err
	}, func(error) { stopWork() })
	go d.watchdog(workCtx)
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
		<-startedUp
		d.shutdown(abortCtx)
		return context.Cause(drainCtx)
	}, func(error) { stopOnce.Do(func() { close(stopped) }) })
	err = g.Run()
	var se signalError
	if errors.As(err, &se) || errors.Is(err, context.Canceled) || err == nil && drainCtx.Err() != nil {
		return nil
	}
	return err
}

// startup takes the daemon from its start to ready: the store answers and
// passes the probe, the node holds its lease and has settled the hold
// area (cluster mode), the first reconcile is done. It ends when ctx
// does (the first signal). In cluster mode ran yields the result of the
// node's loops, which run under workCtx from the lease on.
func (d *daemon) startup(ctx, workCtx context.Context, fresh bool) (ran chan error, err error) {
	if d.node == nil {
		if err := publishMirrorGate(d.gate, d.clock); err != nil {
			return nil, err
		}
	}
	if err := startupProbe(ctx, d.cfg, d.st, d.log, d.phase); err != nil {
		return nil, err
	}
	if d.node == nil {
		if err := d.start(ctx, fresh, nil); err != nil {
			return nil, err
		}
		go d.pingStore(workCtx)
		return nil, nil
	}
	d.phase.set(phaseLease, "")
	if err := d.node.Start(ctx, fresh); err != nil {
		return nil, err
	}
	// The node renews its lease and settles the hold area in Run; the
	// first reconcile waits until it has settled.
	ran = make(chan error, 1)
	go func() { ran <- d.node.Run(workCtx) }()
	go d.watchEvents(workCtx)
	d.phase.set(phaseSettle, "")
	return ran, d.start(ctx, fresh, d.node.WaitSettled)
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
	d.phase.set(phaseReconcile, "")
	if err := d.mirror.Reconcile(ctx, orphans); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	d.storeOK.Store(time.Now().UnixNano())
	if err := markDisk(d.cfg.StateDir, d.cfg.NodeID); err != nil {
		return err
	}
	d.phase.set(phaseReady, "")
	d.log.Info("ready")
	return nil
}

// pingStore keeps /readyz honest in mirror mode.
func (d *daemon) pingStore(ctx context.Context) {
	prefix := fence.NewLayout(d.cfg.S3Prefix).LeasePrefix()
	for {
		err := d.st.List(ctx, prefix, func(store.Info) error { return errStopPing })
		if err == nil || errors.Is(err, errStopPing) {
			d.storeOK.Store(time.Now().UnixNano())
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(30 * time.Second):
		}
	}
}

var errStopPing = errors.New("stop")

// shutdown flushes uploads and deletes for up to SHUTDOWN_TIMEOUT (a
// second signal cuts it short) while the mirror still runs, then, in
// cluster mode, fences: no entry the store knows stays visible to runners
// that no sidecar guards any more. The fence only moves local files, so it
// gets its own deadline, not what is left of the flush's. Before the
// first reconcile nothing can be uploading, so nothing is flushed; before
// the lease nothing is owned, so nothing is fenced.
func (d *daemon) shutdown(abortCtx context.Context) {
	was, _, _ := d.phase.get()
	d.phase.set(phaseStopping, "")
	d.http.SetStopping()
	if was == phaseReady {
		ctx, cancel := context.WithTimeout(abortCtx, d.cfg.ShutdownTimeout)
		if err := d.mirror.Flush(ctx); err != nil {
			d.log.Warn("shutdown: uploads not all flushed", "err", err)
		}
		cancel()
	}
	if d.node != nil {
		if state, _ := d.node.State(); state != fence.StateStarting {
			fctx, fcancel := context.WithTimeout(context.WithoutCancel(abortCtx), time.Minute)
			d.node.Stop(fctx)
			fcancel()
		}
	}
	d.log.Info("stopped", "during", was)
}
