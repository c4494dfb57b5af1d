package fence

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

// readClaim returns e's claim and its ETag; found is false when e has none.
func (n *Node) readClaim(ctx context.Context, e Entry) (c Claim, etag string, found bool, err error) {
	data, info, err := store.GetBytes(ctx, n.st, n.cfg.Layout.ClaimKey(e))
	if errors.Is(err, store.ErrNotFound) {
		return Claim{}, "", false, nil
	}
	if err != nil {
		return Claim{}, "", false, fmt.Errorf("read claim: %w", err)
	}
	c, err = DecodeClaim(data)
	if err != nil {
		return Claim{}, "", false, err
	}
	return c, info.ETag, true, nil
}

// errLeaseOverdue refuses a release by a node whose last renewal is older
// than TTL - margin: it is about to fence, and peers may already own what
// it would release.
var errLeaseOverdue = errors.New("release: lease not renewed within TTL - margin")

// writeClaim writes e's claim if cond holds; lost reports a lost race.
func (n *Node) writeClaim(ctx context.Context, e Entry, c Claim, cond store.Condition) (lost bool, err error) {
	c.Nonce = Nonce(n.rnd)
	n.mu.Lock()
	n.claimsMaybe = true
	n.mu.Unlock()
	key := n.cfg.Layout.ClaimKey(e)
	put, err := store.PutBytes(ctx, n.st, key, encode(c), cond)
	if errors.Is(err, store.ErrPrecondition) {
		n.m.claimsLost.Inc()
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("put claim: %w", err)
	}
	// The claims pass meets this version in its listing: it need not read
	// it back.
	n.mu.Lock()
	n.claimCache[key] = cachedClaim{etag: put.ETag, claim: c}
	n.mu.Unlock()
	return false, nil
}

// deadCopies lists the copies of the held entries that lie in this node's
// own epochs up to its DeadEpoch, when it was declared dead.
func (n *Node) deadCopies(ctx context.Context, held []Entry) (map[Entry][]string, error) {
	n.mu.Lock()
	markedDead, deadEpoch := n.markedDead, n.lease.DeadEpoch
	n.mu.Unlock()
	if !markedDead || deadEpoch == 0 || len(held) == 0 {
		return nil, nil
	}
	want := make(map[Entry]bool, len(held))
	for _, e := range held {
		want[e] = true
	}
	refs, err := n.listNamespace(ctx, n.cfg.Node, 0, deadEpoch)
	if err != nil {
		return nil, fmt.Errorf("settle: %w", err)
	}
	out := make(map[Entry][]string)
	for _, r := range refs {
		if want[r.Entry] {
			out[r.Entry] = append(out[r.Entry], n.cfg.Layout.MirrorKey(r.Node, r.Epoch, r.Entry))
		}
	}
	return out, nil
}

// SettleStep settles the hold area when the node has come back under a
// new epoch (started, or returned from a fence) and has not settled yet;
// the node is live when it is done. Run calls it in a loop of its own, so
// that renewals go on however long settling takes.
func (n *Node) SettleStep(ctx context.Context) error {
	n.mu.Lock()
	due := n.state == StateSettling && !n.settleDone
	n.mu.Unlock()
	if !due {
		return nil
	}
	return n.settle(ctx)
}

// WaitSettled waits until the node has settled its current epoch and is
// live (or draining), or ctx ends. Run must be running.
func (n *Node) WaitSettled(ctx context.Context) error {
	for {
		n.mu.Lock()
		ok := n.settleDone && (n.state == StateLive || n.state == StateDraining)
		n.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for settle: %w", ctx.Err())
		case <-n.clock.After(50 * time.Millisecond):
		}
	}
}

// settle decides every held entry against the store, then makes the node
// live: entries a peer claimed are dropped, the others restored. If the
// node was declared dead since it held them, it re-claims each one first,
// so that a peer's takeover and its own return cannot both win.
func (n *Node) settle(ctx context.Context) error {
	octx, done, epoch := n.ownerCtx(ctx)
	defer done()
	held := n.local.Held()
	// Copies of held entries in this node's own dead epochs: once an
	// entry is restored under a new claim they go, or the node's own
	// takeover of those epochs would restore it a second time later.
	old, err := n.deadCopies(octx, held)
	if err != nil {
		return err
	}
	// Entries settle independently, Concurrency at a time: one by one,
	// 5,000 held entries took 30 s of claim reads and uploads before the
	// node was ready.
	var failed atomic.Bool
	_ = forEach(octx, n.cfg.Concurrency, held, func(e Entry) error {
		err := retry(octx, n.clock, 2*time.Second, func() error { return n.settleOne(octx, e, epoch) })
		if octx.Err() != nil {
			return nil
		}
		if err == nil && len(old[e]) > 0 {
			n.mu.Lock()
			restored := n.restored[e] == epoch
			n.mu.Unlock()
			if restored {
				if derr := n.st.DeleteMany(octx, old[e]); derr != nil {
					// The takeover of the dead epochs finds them, and
					// knows the entry was restored in this epoch.
					n.log.Warn("settle: old copies not deleted", "entry", e.String(), "epoch", epoch, "err", derr)
				}
			}
		}
		if err != nil {
			// Left held, never lost: Resettle tries again, and an
			// operator can see it (mmsidecar_held_entries, status).
			failed.Store(true)
			n.m.settled.WithLabelValues("failed").Inc()
			n.log.Error("settle: entry left held", "entry", e.String(), "epoch", epoch, "err", err)
		}
		return nil
	})
	if octx.Err() != nil {
		return fmt.Errorf("settle: %w", octx.Err())
	}
	// In flight before the death (RunnerGate): settled where they are.
	if err := n.settleInFlight(octx, epoch); err != nil {
		return err
	}
	n.mu.Lock()
	finished := n.state == StateSettling && n.lease.Epoch == epoch
	if finished {
		n.unsettled = failed.Load()
		n.settleDone = true
		n.setStateLocked(StateLive)
		if n.drain {
			n.setStateLocked(StateDraining)
		}
	}
	n.mu.Unlock()
	if finished {
		// Nothing born before the death is visible unsettled any more:
		// the runner gate opens.
		n.gate.settled()
		_ = n.publishGate()
	}
	return nil
}

// settleInFlight settles the .bak entries that were in flight when the
// node was declared dead, without touching the files (a runner may hold
// them): still this node's, each is claimed under the new epoch, so that
// no peer's takeover restores it too; taken over by a peer, it goes on
// the runner gate's deny list, so that no runner here starts it again.
func (n *Node) settleInFlight(ctx context.Context, epoch uint64) error {
	n.mu.Lock()
	todo := n.inFlightOld
	n.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	old, err := n.deadCopies(ctx, todo)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var denied, left []Entry
	_ = forEach(ctx, n.cfg.Concurrency, todo, func(e Entry) error {
		// The claim decides, whether a copy is left or not: a peer that
		// restored the entry deleted the copy it came from.
		n.mu.Lock()
		from := n.lease.DeadEpoch
		n.mu.Unlock()
		if len(old[e]) > 0 {
			src, _ := n.cfg.Layout.ParseMirrorKey(old[e][len(old[e])-1])
			from = src.Epoch
		}
		var owner string
		err := retry(ctx, n.clock, 2*time.Second, func() (err error) {
			owner, _, err = n.reclaim(ctx, e, epoch, from)
			return err
		})
		if err == nil && owner == n.cfg.Node && n.local.Has(e) {
			// Its only copy may lie under a dead epoch, which goes once the
			// entry is this node's (the claims pass deletes a claim's
			// source when the entry is here): it gets one under the
			// current epoch first, as Release makes sure for an entry
			// already in its queue directory.
			err = n.release(ctx, e)
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			left = append(left, e)
			n.log.Error("settle: entry in flight not settled", "entry", e.String(), "epoch", epoch, "err", err)
		case owner != n.cfg.Node:
			denied = append(denied, e)
			n.m.settled.WithLabelValues("denied").Inc()
			n.log.Warn("settle: entry in flight here was taken over: denied to the runners", "entry", e.String(), "epoch", epoch, "owner", owner)
		default:
			n.m.settled.WithLabelValues("reclaimed").Inc()
		}
		return nil
	})
	if ctx.Err() != nil {
		return fmt.Errorf("settle: %w", ctx.Err())
	}
	n.gate.setDeny(append(n.gate.denied(), denied...))
	n.mu.Lock()
	n.inFlightOld = left
	n.mu.Unlock()
	if len(left) > 0 {
		return fmt.Errorf("settle: %d entries in flight not settled", len(left))
	}
	return nil
}

// reclaim makes the entry e, which this node held before its last death,
// its own under epoch unless a peer took it over: it returns the owner
// and the claim. fromEpoch is the epoch of the node's copy a claim
// created here points at.
func (n *Node) reclaim(ctx context.Context, e Entry, epoch, fromEpoch uint64) (owner string, c Claim, err error) {
	for attempt := 0; attempt < 3; attempt++ {
		c, etag, found, err := n.readClaim(ctx, e)
		if err != nil {
			return "", Claim{}, err
		}
		n.mu.Lock()
		markedDead := n.markedDead
		n.mu.Unlock()
		var lost bool
		switch {
		case found && c.Owner != n.cfg.Node:
			return c.Owner, c, nil
		case found && c.Epoch != epoch:
			next := c
			next.Epoch, next.Token = epoch, c.Token+1
			lost, err = n.writeClaim(ctx, e, next, store.Condition{IfMatch: etag})
			c = next
		case !found && markedDead:
			c = Claim{Owner: n.cfg.Node, Epoch: epoch, From: n.cfg.Node, FromEpoch: fromEpoch, Token: 1}
			lost, err = n.writeClaim(ctx, e, c, store.Condition{IfAbsent: true})
		}
		if err != nil {
			return "", Claim{}, err
		}
		if !lost {
			return n.cfg.Node, c, nil
		}
	}
	return "", Claim{}, fmt.Errorf("reclaim %s: claim contested", e)
}

func (n *Node) settleOne(ctx context.Context, e Entry, epoch uint64) error {
	n.mu.Lock()
	prevEpoch, markedDead := n.lease.DeadEpoch, n.markedDead
	n.mu.Unlock()
	owner, c, err := n.reclaim(ctx, e, epoch, prevEpoch)
	if err != nil {
		return err
	}
	if owner != n.cfg.Node {
		if err := n.local.Drop(e); err != nil {
			return fmt.Errorf("drop: %w", err)
		}
		n.m.settled.WithLabelValues("dropped").Inc()
		n.log.Info("settle: entry taken over, dropped", "entry", e.String(), "epoch", epoch, "owner", c.Owner, "token", c.Token)
		return nil
	}
	n.mu.Lock()
	drain := n.drain
	n.mu.Unlock()
	if drain {
		// A draining node keeps it held for handoff.
		return nil
	}
	if err := n.release(ctx, e); err != nil {
		return err
	}
	if c.Token > 0 || markedDead {
		// Under a claim: a takeover of this node's own old epochs
		// must not restore the entry a second time from its old copy.
		n.mu.Lock()
		n.restored[e] = epoch
		n.mu.Unlock()
	}
	n.m.settled.WithLabelValues("restored").Inc()
	n.log.Info("settle: entry restored", "entry", e.String(), "epoch", epoch, "token", c.Token)
	return nil
}

// Resettle settles entries left in the hold area while the node is live:
// a settle cut short by a new fence, or a takeover whose release failed.
// Entries a takeover or the claims pass is working on are skipped.
func (n *Node) Resettle(ctx context.Context) {
	n.mu.Lock()
	ok := n.state == StateLive && !n.drain
	n.mu.Unlock()
	if !ok {
		return
	}
	octx, done, epoch := n.ownerCtx(ctx)
	defer done()
	failed := false
	for _, e := range n.local.Held() {
		if !n.markInflight(e) {
			continue
		}
		err := n.settleOne(octx, e, epoch)
		n.clearInflight(e)
		if octx.Err() != nil {
			return
		}
		if err != nil {
			failed = true
			n.log.Warn("resettle: entry left held", "entry", e.String(), "epoch", epoch, "err", err)
		}
	}
	n.mu.Lock()
	if n.lease.Epoch == epoch {
		n.unsettled = failed
	}
	n.mu.Unlock()
}

// release makes a held entry visible to the runners, unless the node
// fences meanwhile (ctx is an owner context).
func (n *Node) release(ctx context.Context, e Entry) error {
	n.releaseMu.RLock()
	defer n.releaseMu.RUnlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	// A process that stood still (a pause, swap) may wake up here before
	// its watchdog has fenced it: by its own clock the lease is already
	// past the point where it must stop acting as owner.
	n.mu.Lock()
	overdue := n.overdueLocked()
	n.mu.Unlock()
	if overdue {
		return errLeaseOverdue
	}
	if err := n.local.Release(ctx, e); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	return nil
}
