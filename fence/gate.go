package fence

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Admit says which entries Mailman's runners may dequeue while a runner
// gate's deadline has not passed (docs/gate.md).
type Admit string

// The admit rules of a runner gate.
const (
	// AdmitAll lets runners dequeue every entry: the gate is open.
	AdmitAll Admit = "all"
	// AdmitNew lets runners dequeue only entries born after Since.
	AdmitNew Admit = "new"
	// AdmitNone lets runners dequeue nothing (a drain).
	AdmitNone Admit = "none"
)

// Reasons a runner gate gives for its state.
const (
	GateLive     = "live"
	GateStarting = "starting"
	GateSettling = "settling"
	GateFenced   = "fenced"
	GateLost     = "lost"
	GateStopped  = "stopped"
	GateDraining = "draining"
)

// RunnerGate is what the node decides for Mailman's runners; the runner
// publishes it as the gate record (docs/gate.md), adding the wall-clock
// cutoffs, which it keeps: the time uploads stopped, raised to the births
// of the entries the store may know here.
type RunnerGate struct {
	// Epoch is the node's epoch, for logs (0 before the first lease).
	Epoch uint64
	// Admit says what runners may dequeue until Until: every entry
	// (open), only entries born after the cutoff of the node's last death
	// (settling), or none (a drain).
	Admit Admit
	// Until is the node's self-fence deadline on its Clock: the start of
	// its last successful renewal + TTL - margin. Zero: closed, Admit
	// never applies; only entries born after uploads stopped are
	// admitted.
	Until time.Time
	// Reason says why the gate is what it is (GateLive, GateFenced, …).
	Reason string
	// Deny lists entries never to admit: a peer took them over while this
	// node still has them as a .bak that a runner may hold.
	Deny []Entry
}

// Open says whether the gate admits every entry until its deadline.
func (g RunnerGate) Open() bool { return g.Admit == AdmitAll && !g.Until.IsZero() }

// GatePublisher makes the runner gate durable where Mailman's runners
// read it. The runner implements it; the fence never touches files.
type GatePublisher interface {
	// PublishGate replaces the gate record durably; it returns only once
	// the record would survive a crash. A closed gate (zero Until) is
	// published only after uploads stopped.
	PublishGate(g RunnerGate) error
	// MarkDeath records that the node was declared dead: entries born up
	// to the last published cutoff may be a peer's now. Until the node has
	// settled them, AdmitNew admits only entries born later, and
	// Local.HoldOlder holds the older ones.
	MarkDeath()
	// WasSettling says whether the record an earlier run of the node left
	// was still settling after a death: its older entries may not all be
	// settled.
	WasSettling() bool
}

// gateView is what the gate decision depends on: a snapshot of the node.
type gateView struct {
	now      time.Time
	state    string
	epoch    uint64
	deadline time.Time // the self-fence deadline of the current lease
	drain    bool
	settling bool // entries older than the last death are not settled yet
	reason   string
	stopped  bool
}

// decideGate is the gate decision: open while the lease is surely held and
// nothing older than a death is unsettled; closed for every entry before a
// drain hands anything off; closed, but for entries born after uploads
// stopped, whenever the node does not hold its lease.
func decideGate(v gateView) RunnerGate {
	g := RunnerGate{Epoch: v.epoch}
	held := !v.stopped && (v.state == StateLive || v.state == StateSettling || v.state == StateDraining) &&
		!v.deadline.IsZero() && v.now.Before(v.deadline)
	switch {
	case !held:
		g.Admit, g.Reason = AdmitNew, v.reason
	case v.drain:
		g.Admit, g.Until, g.Reason = AdmitNone, v.deadline, GateDraining
	case v.settling:
		g.Admit, g.Until, g.Reason = AdmitNew, v.deadline, GateSettling
	default:
		g.Admit, g.Until, g.Reason = AdmitAll, v.deadline, GateLive
	}
	return g
}

// gateKeeper publishes the node's runner gate and remembers what it last
// published: only a published gate lets the node upload (uploadUntil).
type gateKeeper struct {
	pub GatePublisher
	m   *Metrics

	// mu serializes publishing, so that records are written in the order
	// decided; state guards the fields below.
	mu    sync.Mutex
	state sync.Mutex
	// until is the deadline of the last published gate that lets the
	// node upload; zero while closed.
	until time.Time
	// settling: entries born before the last death are not all settled.
	settling bool
	deny     map[Entry]bool
	last     RunnerGate
	failed   bool
}

// GateDenials is what a GatePublisher may add: the entries on the deny
// list of the record an earlier run of the node left. They stay denied
// (Node.tendDeny tends them): a run that finds its lease still its own
// settles nothing, and Mailman's recovery makes such a .bak a .pck again.
type GateDenials interface {
	Denied() []Entry
}

func newGateKeeper(pub GatePublisher, m *Metrics) *gateKeeper {
	k := &gateKeeper{pub: pub, m: m, deny: make(map[Entry]bool)}
	if d, ok := pub.(GateDenials); ok {
		for _, e := range d.Denied() {
			k.deny[e] = true
		}
	}
	return k
}

// died records a return under a new epoch after the node was declared
// dead: the gate stays closed for older entries until they are settled.
func (k *gateKeeper) died() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.pub.MarkDeath()
	k.state.Lock()
	k.settling = true
	k.state.Unlock()
}

// settled ends the settling rule.
func (k *gateKeeper) settled() {
	k.state.Lock()
	k.settling = false
	k.state.Unlock()
}

// uploadUntil is the deadline of the last published gate that lets the
// node upload: zero while the published gate is closed.
func (k *gateKeeper) uploadUntil() time.Time {
	k.state.Lock()
	defer k.state.Unlock()
	return k.until
}

// setDeny replaces the deny list; it reports whether it changed.
func (k *gateKeeper) setDeny(es []Entry) bool {
	k.state.Lock()
	defer k.state.Unlock()
	next := make(map[Entry]bool, len(es))
	for _, e := range es {
		next[e] = true
	}
	changed := len(next) != len(k.deny)
	for e := range next {
		if !k.deny[e] {
			changed = true
		}
	}
	k.deny = next
	return changed
}

// undeny takes es off the deny list; it reports whether it changed. It
// leaves entries denied meanwhile alone.
func (k *gateKeeper) undeny(es []Entry) bool {
	k.state.Lock()
	defer k.state.Unlock()
	changed := false
	for _, e := range es {
		if k.deny[e] {
			delete(k.deny, e)
			changed = true
		}
	}
	return changed
}

// denied lists the denied entries.
func (k *gateKeeper) denied() []Entry {
	k.state.Lock()
	defer k.state.Unlock()
	out := make([]Entry, 0, len(k.deny))
	for e := range k.deny {
		out = append(out, e)
	}
	sortByName(out)
	return out
}

// publish decides the gate from view and writes it. A gate that closes
// stops uploads before it is written; one that opens lets them start only
// once it is durable.
func (k *gateKeeper) publish(view func() gateView) (RunnerGate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v := view()
	k.state.Lock()
	v.settling = v.settling || k.settling
	g := decideGate(v)
	for e := range k.deny {
		g.Deny = append(g.Deny, e)
	}
	if g.Until.IsZero() {
		k.until = time.Time{} // closed: no upload from now on
	}
	k.state.Unlock()
	sortByName(g.Deny)
	if err := k.pub.PublishGate(g); err != nil {
		k.state.Lock()
		k.failed = true
		k.state.Unlock()
		k.m.gatePublishErrs.Inc()
		return g, fmt.Errorf("publish runner gate: %w", err)
	}
	k.state.Lock()
	k.until, k.last, k.failed = g.Until, g, false
	k.state.Unlock()
	k.m.setGate(g)
	return g, nil
}

// current returns the last gate published and whether the last attempt
// failed.
func (k *gateKeeper) current() (RunnerGate, bool) {
	k.state.Lock()
	defer k.state.Unlock()
	return k.last, k.failed
}

func sortByName(es []Entry) {
	sort.Slice(es, func(i, j int) bool { return es[i].String() < es[j].String() })
}

// gateView snapshots the node for the gate decision.
func (n *Node) gateView() gateView {
	n.mu.Lock()
	defer n.mu.Unlock()
	v := gateView{
		now: n.clock.Now(), state: n.state, epoch: n.lease.Epoch, drain: n.drain,
		reason: n.fenceReason, stopped: n.stopped,
	}
	if !n.renewedAt.IsZero() {
		v.deadline = n.renewedAt.Add(n.cfg.TTL - n.cfg.Margin)
	}
	if v.reason == "" {
		v.reason = GateStarting
	}
	return v
}

// publishGate decides the runner gate from the node's state and publishes
// it. A failure is logged and counted: the node then uploads nothing past
// the last gate it did publish, and fences when that runs out.
func (n *Node) publishGate() error {
	g, err := n.gate.publish(n.gateView)
	if err != nil {
		n.log.Error("runner gate not published: uploads stop when the last published gate runs out", "epoch", g.Epoch, "reason", g.Reason, "err", err)
		return err
	}
	n.log.Debug("runner gate published", "epoch", g.Epoch, "admit", string(g.Admit), "reason", g.Reason, "deny", len(g.Deny))
	return nil
}

// RunnerGate returns the last runner gate the node published and whether
// the last attempt to publish one failed.
func (n *Node) RunnerGate() (RunnerGate, bool) { return n.gate.current() }

// tendDeny keeps the deny list to entries still here as a .bak that a
// peer owns: one that Mailman's recovery brought back as a .pck is held
// and dropped, one that is gone leaves the list, and so does one that
// this node has taken over again since (a takeover of the peer, or its
// handoff): that one stays where it is, for the runners.
func (n *Node) tendDeny(ctx context.Context) {
	denied := n.gate.denied()
	if len(denied) == 0 {
		return
	}
	var off []Entry
	for _, e := range denied {
		if !n.local.Has(e) {
			off = append(off, e)
			continue
		}
		c, _, found, err := n.readClaim(ctx, e)
		if err != nil {
			n.log.Warn("denied entry: claim not read", "entry", e.String(), "err", err)
			continue
		}
		if found && c.Owner == n.cfg.Node {
			n.log.Info("denied entry is this node's again: admitted", "entry", e.String(), "epoch", c.Epoch, "token", c.Token)
			off = append(off, e)
			continue
		}
		held, err := n.local.Hold(e)
		if err != nil {
			n.log.Warn("denied entry not held", "entry", e.String(), "err", err)
			continue
		}
		if !held {
			continue // in flight
		}
		off = append(off, e)
		if err := n.local.Drop(e); err != nil {
			n.log.Warn("denied entry not dropped", "entry", e.String(), "err", err)
			continue
		}
		n.m.settled.WithLabelValues("dropped").Inc()
		n.log.Info("entry taken over by a peer came back as a .pck: dropped", "entry", e.String())
	}
	if n.gate.undeny(off) {
		_ = n.publishGate()
	}
}

// nopPublisher publishes nowhere: for coordinators whose runners nobody
// guards (tests).
type nopPublisher struct{}

func (nopPublisher) PublishGate(RunnerGate) error { return nil }
func (nopPublisher) MarkDeath()                   {}
func (nopPublisher) WasSettling() bool            { return false }

// Cutoffs are the cutoffs a gate record carries (docs/gate.md), on the
// node's Clock; the publisher keeps them from one record to the next and
// maps them to wall-clock time.
type Cutoffs struct {
	// Cutoff: after a record's deadline, entries born after it are
	// admitted. Zero: none published yet.
	Cutoff time.Time
	// Since: while settling, entries born after it are admitted. It is
	// the cutoff at the node's last death.
	Since time.Time
	// Settling: the last record admitted only entries born after Since,
	// or was closed while the node was settling.
	Settling bool
}

// Next returns the cutoffs of the record that publishes g at now. floor is
// the latest birth of an entry the node restored from the store (zero:
// none): an entry born later must stay unknown to every peer, and a
// peer's wall clock may be ahead. A closed record's cutoff is when
// uploads stopped: now, or the last record's cutoff if that came first.
func (c Cutoffs) Next(g RunnerGate, now, floor time.Time) Cutoffs {
	next := c
	if g.Until.IsZero() {
		next.Cutoff = now
		if !c.Cutoff.IsZero() && c.Cutoff.Before(now) {
			next.Cutoff = c.Cutoff
		}
	} else {
		next.Cutoff = g.Until
	}
	if floor.After(next.Cutoff) {
		next.Cutoff = floor
	}
	switch {
	case g.Admit == AdmitAll:
		next.Since, next.Settling = time.Time{}, false
	case g.Admit == AdmitNew && !g.Until.IsZero():
		next.Settling = true
	}
	// Otherwise (closed, or draining) a node that was settling still is:
	// a fence meanwhile must not forget the cutoff of its last death.
	return next
}

// Death returns the cutoffs after the node was declared dead: entries born
// up to the last cutoff may be a peer's, so the settling rule admits only
// later ones.
func (c Cutoffs) Death() Cutoffs {
	c.Since = c.Cutoff
	return c
}
