// Package fence owns the cluster protocol: node leases with epochs, peer
// liveness judged on each observer's own monotonic clock, claims whose
// token increases on every change of owner, takeover of a dead node's
// entries, self-fencing, settling and draining. It decides; the runner
// acts on local files through the Local interface. Clock, randomness,
// store and local view are parameters, so a simulator can drive it.
// The design, its states and where each guarantee lives: docs/design.md.
package fence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

// Config holds the coordinator's settings.
type Config struct {
	// Node is this node's id (ValidName).
	Node string
	// Layout maps objects to keys.
	Layout Layout
	// TTL is the lease time-to-live; the lease is renewed every TTL/3.
	TTL time.Duration
	// Grace is added to TTL before a peer's silent lease counts as dead.
	Grace time.Duration
	// Margin is how long before TTL the holder fences itself when it could
	// not renew.
	Margin time.Duration
	// MaxTransfers is how often an entry may move between nodes before it
	// is preserved in bad instead (G6).
	MaxTransfers int
	// Concurrency bounds parallel takeovers and settles (default 16).
	Concurrency int
	// Epochs keeps the highest epoch the node has tried on its own disk,
	// so that a restart never reuses an epoch, even when the store has
	// lost the lease. Nil keeps none: a node whose lease is gone then
	// starts again at epoch 1.
	Epochs EpochRecord
	// Gate publishes the runner gate for Mailman's runners (docs/gate.md).
	// Nil publishes nothing (tests that do not look at it).
	Gate GatePublisher
	// RunnerGate says Mailman's runners honour the runner gate: it is the
	// fence. A fence or a stop then closes the gate and leaves entries in
	// their queue directories, and a node declared dead never touches a
	// .bak. Off, the gate is still published, and fences also move
	// entries out of the runners' reach as without it.
	RunnerGate bool
}

// EpochRecord is the node's durable record of the highest epoch it has
// tried. The runner keeps it in the state directory.
type EpochRecord interface {
	// Last returns the recorded epoch, 0 when there is none.
	Last() (uint64, error)
	// Save records epoch durably; it returns only once the record would
	// survive a crash.
	Save(epoch uint64) error
}

// Validate checks the timing rules of the model.
func (c Config) Validate() error {
	switch {
	case !ValidName(c.Node):
		return fmt.Errorf("node id %q: use 1-64 letters, digits, '.', '_' or '-'", c.Node)
	case c.TTL <= 0:
		return fmt.Errorf("lease TTL %v must be positive", c.TTL)
	case c.Margin <= 0:
		return fmt.Errorf("lease margin %v must be positive", c.Margin)
	case c.Margin >= c.TTL/2:
		return fmt.Errorf("lease margin %v must be less than TTL/2 (%v): the holder renews every TTL/3 and must get two tries before it fences", c.Margin, c.TTL/2)
	case c.Grace < c.Margin:
		return fmt.Errorf("lease grace %v must be at least the margin %v: peers must wait longer than the holder takes to fence", c.Grace, c.Margin)
	case c.MaxTransfers < 1:
		return fmt.Errorf("max transfers %d must be at least 1", c.MaxTransfers)
	}
	return nil
}

// Node is one node's coordinator.
type Node struct {
	cfg   Config
	st    store.Store
	local Local
	clock Clock
	rnd   Rand
	log   *slog.Logger
	m     *Metrics

	// releaseMu lets fence() wait until no release into the queue
	// directories is half done before it quarantines.
	releaseMu sync.RWMutex
	// renewMu serializes lease writes of Renew (the loop and StartDrain).
	renewMu sync.Mutex

	mu        sync.Mutex
	state     string
	lease     Lease     // the lease body we last wrote successfully
	leaseETag string    // its ETag
	renewedAt time.Time // start of the last successful lease write
	attempt   Lease     // the lease body of the last lease write attempt
	attemptAt time.Time // when that attempt started
	// recorded is the highest epoch in cfg.Epochs; earlier is what it
	// held at Start: the last epoch an earlier run of the node tried.
	recorded, earlier uint64
	// missingSince is when the store first said this node's lease was not
	// there, in the current run of such answers (acquire).
	missingSince time.Time
	// written holds the nonces of the node's recent epochs, one each,
	// written with every lease write of the epoch (acknowledged or not, up
	// to writtenMax): a store can commit a write whose answer failed, even
	// much later (MinIO after a lost write quorum), and the node must
	// still recognise that lease as its own.
	written     map[string]bool
	writtenRing []string
	// unresolved: the last renewal failed without an answer and may have
	// committed; the next renewal re-sends the same body, so that a 412
	// caused by it is recognised (sameLease).
	unresolved bool
	// markedDead says this node was declared dead (or lost its disk) since
	// its held entries were held: settling must re-claim them.
	markedDead bool
	// liveCtx is cancelled when the node fences: work that acts as owner
	// runs under it.
	liveCtx    context.Context
	liveCancel context.CancelFunc
	drain      bool
	// quarantining: a fence is still moving files; the node must not
	// come back (and settle) before it is done, or entries it moves
	// afterwards stay held.
	quarantining bool
	// stopped: the sidecar is shutting down; the node stays fenced.
	stopped    bool
	peers      map[string]*peer
	lastScan   time.Time
	lastClaims time.Time
	// claimsMaybe: a claim this node's claims pass must handle may exist.
	// Only this node and a draining peer write claims that name this node
	// as owner. It is set when this node writes a claim or starts an
	// epoch, when a peer's lease changes other than by a plain renewal,
	// and while the last pass found any claim; it starts true.
	claimsMaybe bool
	// takeoverMore: the last takeover round stopped with entries left
	// (its listing grew older than a TTL); the next one follows at once.
	takeoverMore bool
	drainEmpty   bool // the last drain step found nothing left
	drainWaiting int
	inflight     map[Entry]bool
	claimCache   map[string]cachedClaim
	restored     map[Entry]uint64 // entries a takeover restored, by epoch
	settleDone   bool
	unsettled    bool // held entries of an earlier epoch failed to settle
	// fenceReason is the runner gate's reason while fenced or stopped.
	fenceReason string
	loopErrs    map[string]loggedErr
	// selfEmptyUpTo: this node's own namespace holds nothing up to this
	// epoch (its dead epochs' takeover is done), as peer.emptyUpTo.
	selfEmptyUpTo uint64
	// inFlightOld are .bak entries born before the node's last death,
	// to settle in place (RunnerGate): reclaimed, or denied to runners.
	inFlightOld []Entry
	gate        *gateKeeper

	// handedOff counts the entries handed off in this epoch
	// (Lease.Handoffs). handedRefs are the copies handed off that may
	// still wait for their new owner; drainTail: a drain was cancelled,
	// and DrainStep hands those again whose new owner dies.
	handedOff  uint64
	handedRefs map[Entry]MirrorRef
	drainTail  bool
}

type cachedClaim struct {
	etag  string
	claim Claim
	// srcGone: the copy the claim points at is known to be deleted.
	srcGone bool
	// finishedAt is when a claims pass first found the entry finished and
	// the claim collectable; it goes 2 TTL later, so that a takeover
	// working from an older listing meets the claim and not its absence.
	finishedAt time.Time
}

// New returns a coordinator. It does nothing until Start.
func New(cfg Config, st store.Store, local Local, clock Clock, rnd Rand, m *Metrics, log *slog.Logger) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 16
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Gate == nil {
		cfg.Gate = nopPublisher{}
	}
	n := &Node{
		cfg: cfg, st: st, local: local, clock: clock, rnd: &syncRand{r: rnd}, m: m,
		log:         log.With("node", cfg.Node),
		state:       StateStarting,
		peers:       make(map[string]*peer),
		inflight:    make(map[Entry]bool),
		claimCache:  make(map[string]cachedClaim),
		claimsMaybe: true,
		written:     make(map[string]bool),
		restored:    make(map[Entry]uint64),
		gate:        newGateKeeper(cfg.Gate, m),
		loopErrs:    make(map[string]loggedErr),
		handedRefs:  make(map[Entry]MirrorRef),
	}
	n.liveCtx, n.liveCancel = context.WithCancel(context.Background())
	n.liveCancel()
	m.setState(StateStarting)
	return n, nil
}

// Gate tells the mirror whether and where it may write: only while the
// node owns its epoch, its lease is not overdue, and a runner gate that
// covers the upload is published (an entry born later than the published
// cutoff must stay unknown to every peer).
func (n *Node) Gate() Gate {
	until := n.gate.uploadUntil()
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.clock.Now()
	return Gate{
		Epoch: n.lease.Epoch,
		Writable: (n.state == StateLive || n.state == StateSettling || n.state == StateDraining) &&
			!n.overdueLocked() && now.Before(until),
		Draining: n.drain,
		Guarded:  n.cfg.RunnerGate,
		OwnFrom:  n.lease.DeadEpoch + 1,
		Done:     n.liveCtx.Done(),
	}
}

// State returns the node's state and epoch.
func (n *Node) State() (string, uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state, n.lease.Epoch
}

func (n *Node) setStateLocked(s string) {
	n.state = s
	n.m.setState(s)
}

// ownerCtx returns a context that ends when ctx does or the node fences,
// with the epoch it is valid for.
func (n *Node) ownerCtx(ctx context.Context) (context.Context, context.CancelFunc, uint64) {
	n.mu.Lock()
	live, epoch := n.liveCtx, n.lease.Epoch
	n.mu.Unlock()
	c, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(live, cancel)
	return c, func() { stop(); cancel() }, epoch
}

func (n *Node) renewEvery() time.Duration { return n.cfg.TTL / 3 }

// Run runs the coordinator's loops until ctx ends: lease renewal, the
// fence watchdog, peer scans with takeover, the claims pass and draining.
// Call Start first.
func (n *Node) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	loop := func(every func() time.Duration, step func(context.Context)) {
		defer wg.Done()
		for {
			step(ctx)
			select {
			case <-ctx.Done():
				return
			case <-n.clock.After(every()):
			}
		}
	}
	wg.Add(4)
	go loop(n.renewInterval, func(ctx context.Context) { _ = n.Renew(ctx) })
	go loop(func() time.Duration { return watchdogEvery(n.cfg.TTL) }, n.CheckFence)
	go loop(func() time.Duration { return watchdogEvery(n.cfg.TTL) }, func(ctx context.Context) { n.loopErr(ctx, "settle", n.SettleStep(ctx)) })
	go loop(n.NextScan, n.ScanStep)
	wg.Wait()
	return nil
}

// ScanStep is one turn of the scan loop: a peer scan, a takeover round,
// the claims pass, a drain step and a resettle. While a takeover has
// entries left the claims pass waits (up to 4 TTL since the last one):
// it reads every claim in the store, and on a large takeover that
// delayed the next round by many seconds.
func (n *Node) ScanStep(ctx context.Context) {
	if err := n.Scan(ctx); err != nil {
		n.loopErr(ctx, "scan", err)
		n.mu.Lock()
		n.takeoverMore = false // no round ran: wait the interval
		n.mu.Unlock()
		return
	}
	n.loopErr(ctx, "takeover", n.Takeover(ctx))
	n.mu.Lock()
	skipClaims := n.takeoverMore && n.clock.Now().Sub(n.lastClaims) < 4*n.cfg.TTL
	n.mu.Unlock()
	if !skipClaims {
		n.loopErr(ctx, "claims", n.ClaimsPass(ctx))
	}
	if err := n.DrainStep(ctx); !errors.Is(err, ErrNoPeer) {
		n.loopErr(ctx, "drain", err)
	}
	n.Resettle(ctx)
	n.tendDeny(ctx)
}

// loopErrEvery bounds how often one loop's failures are logged: a loop
// that keeps failing runs every few seconds.
const loopErrEvery = 30 * time.Second

// loopErr counts a failed turn of a loop (work that was not done) and
// logs it: at once when the error is new, then at most every
// loopErrEvery.
func (n *Node) loopErr(ctx context.Context, loop string, err error) {
	if err == nil || ctx.Err() != nil || errors.Is(err, context.Canceled) {
		// Cut short by the end of ctx, or by a fence or stop that
		// cancelled the owner context: nothing failed.
		return
	}
	n.m.loopErrs.WithLabelValues(loop).Inc()
	msg := err.Error()
	now := n.clock.Now()
	n.mu.Lock()
	last := n.loopErrs[loop]
	log := last.msg != msg || now.Sub(last.at) >= loopErrEvery
	if log {
		n.loopErrs[loop] = loggedErr{msg: msg, at: now}
	}
	n.mu.Unlock()
	if log {
		n.log.Warn("loop turn failed; it runs again", "loop", loop, "epoch", n.epochNow(), "err", err)
	}
}

// loggedErr is the last error a loop logged and when.
type loggedErr struct {
	msg string
	at  time.Time
}

// epochNow returns the node's epoch.
func (n *Node) epochNow() uint64 {
	_, e := n.State()
	return e
}

// TakeoverPending says whether the last takeover round stopped with
// entries left: the next scan step should follow at once.
func (n *Node) TakeoverPending() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.takeoverMore
}

// NextScan is the wait before the next scan step: none while a takeover
// has entries left; otherwise the scan interval, or less when a silent
// peer reaches TTL + grace sooner, so that it is declared dead on time
// rather than up to a scan interval late.
func (n *Node) NextScan() time.Duration {
	if n.TakeoverPending() {
		return 0
	}
	d := n.scanInterval()
	if dl, ok := n.UntilPeerDeadline(); ok && dl < d {
		d = dl
	}
	return d
}

func watchdogEvery(ttl time.Duration) time.Duration {
	d := ttl / 30
	if d > 250*time.Millisecond {
		d = 250 * time.Millisecond
	}
	if d < 5*time.Millisecond {
		d = 5 * time.Millisecond
	}
	return d
}

// renewInterval is TTL/3, or faster while fenced so the node comes back
// soon after the store does.
func (n *Node) renewInterval() time.Duration {
	n.mu.Lock()
	fenced := n.state == StateFenced
	n.mu.Unlock()
	d := n.renewEvery()
	if fenced {
		d /= 3
	}
	return n.jitter(d)
}

func (n *Node) scanInterval() time.Duration {
	n.mu.Lock()
	busy := n.drain || n.anyDrainingPeerLocked()
	n.mu.Unlock()
	d := n.renewEvery()
	if busy {
		d /= 2
	}
	return n.jitter(d)
}

// jitter returns d give or take up to 5%, so that nodes do not march in
// step while the loops still run once per d on average (the idle cost of
// a node is one renewal and one scan per TTL/3, not more).
func (n *Node) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d - d/20 + time.Duration(n.rnd.Uint64()%uint64(d/10+1))
}

// retry calls f until it succeeds, the error is not transient, or ctx ends,
// backing off from 50 ms up to max.
func retry(ctx context.Context, clock Clock, max time.Duration, f func() error) error {
	wait := 50 * time.Millisecond
	for {
		err := f()
		if err == nil || store.KindOf(err) != store.KindTransient || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-clock.After(wait):
		}
		if wait *= 2; wait > max {
			wait = max
		}
	}
}
