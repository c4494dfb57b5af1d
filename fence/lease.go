package fence

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

// ErrDuplicateNode means another process writes this node's lease: two
// sidecars were given the same node id.
var ErrDuplicateNode = errors.New("another process holds this node id")

// errNotGoneYet: the node's lease is missing, but not yet for TTL + grace.
var errNotGoneYet = errors.New("it counts as gone after TTL + grace")

// Start acquires the node's lease under a new epoch; the node is then
// settling: Run settles whatever the hold area keeps (SettleStep) while it
// renews the lease, and makes the node live. freshDisk says the local
// queue directories are new (no state marker): the entries of the node's
// previous epochs are then taken over like a dead peer's. It retries
// transient store errors until ctx ends.
func (n *Node) Start(ctx context.Context, freshDisk bool) error {
	if n.cfg.Epochs != nil {
		last, err := n.cfg.Epochs.Last()
		if err != nil {
			return fmt.Errorf("read epoch record: %w", err)
		}
		n.mu.Lock()
		n.recorded, n.earlier = last, last
		n.mu.Unlock()
	}
	// Closed until the lease is held, for what an earlier run may have
	// uploaded: the publisher carries its cutoff over.
	if err := n.publishGate(); err != nil {
		return err
	}
	waiting := false
	err := retry(ctx, n.clock, 2*time.Second, func() error {
		_, err := n.acquire(ctx, freshDisk, true)
		if errors.Is(err, store.ErrPrecondition) {
			// The lease changed between the read and the write: this
			// run's own earlier attempt committed behind a lost answer
			// (its nonce is known), a peer declared the node dead, an
			// earlier run's write committed late, another process with
			// this id wrote it, or it went missing. The next read tells
			// which, and acquire decides as it does for a lease it finds
			// so at once; a missing one is waited for (TTL + grace).
			n.log.Warn("start-up lease write lost a race: reading the lease again", "err", err)
			return &store.OpError{Op: "put", Key: n.cfg.Layout.LeaseKey(n.cfg.Node), Kind: store.KindTransient, Err: err}
		}
		if !errors.Is(err, errNotGoneYet) {
			return err
		}
		if !waiting {
			waiting = true
			n.mu.Lock()
			earlier := n.earlier
			n.mu.Unlock()
			n.log.Warn("own lease not in the store: starting above the recorded epoch once it has been missing for TTL + grace", "recorded_epoch", earlier, "wait", n.deadAfter())
		}
		// Keep asking: the wait is counted from the first answer.
		return &store.OpError{Op: "get", Key: n.cfg.Layout.LeaseKey(n.cfg.Node), Kind: store.KindTransient, Err: err}
	})
	if err != nil {
		return fmt.Errorf("acquire lease: %w", err)
	}
	n.mu.Lock()
	// An earlier run that died while settling may have left older
	// entries unsettled: settle again.
	died := n.markedDead || n.cfg.Gate.WasSettling()
	n.mu.Unlock()
	if err := n.afterDeath(ctx, died, true); err != nil {
		return err
	}
	_ = n.publishGate()
	return nil
}

// afterDeath runs when the node holds a new epoch: if it was declared dead
// (died), peers may be restoring its entries, so nothing born before its
// death may stay visible to the local runners until the store has said
// whose it is. With the runner gate the gate keeps them closed, the
// .pck and .psv files of that age are held and the .bak files (Mailman may
// be running) are settled in place; without it, at start-up, every entry
// is held (the start-order rule: Mailman is not running).
func (n *Node) afterDeath(ctx context.Context, died, starting bool) error {
	if !died {
		return nil
	}
	n.gate.died()
	if !n.cfg.RunnerGate {
		if !starting {
			return nil // the fence held what the store knew
		}
		moved, err := n.local.Quarantine(ctx, true)
		n.m.quarantined.Add(float64(len(moved)))
		if err != nil {
			return fmt.Errorf("quarantine after takeover: %w", err)
		}
		return nil
	}
	moved, inFlight, err := n.local.HoldOlder(ctx)
	n.m.quarantined.Add(float64(len(moved)))
	if err != nil {
		return fmt.Errorf("hold entries after takeover: %w", err)
	}
	n.mu.Lock()
	n.inFlightOld = append(n.inFlightOld, inFlight...)
	n.mu.Unlock()
	if len(moved)+len(inFlight) > 0 {
		n.log.Warn("declared dead: holding older entries until settled", "held", len(moved), "in_flight", len(inFlight))
	}
	return nil
}

// acquire writes the node's lease under a new epoch. starting says this is
// a process start (as opposed to coming back from a fence). died says the
// node's earlier epochs belong to a takeover (declared dead, lease gone,
// or a fresh disk).
func (n *Node) acquire(ctx context.Context, freshDisk, starting bool) (died bool, err error) {
	err = n.acquireLease(ctx, freshDisk, starting, &died)
	return died, err
}

func (n *Node) acquireLease(ctx context.Context, freshDisk, starting bool, died *bool) error {
	key := n.cfg.Layout.LeaseKey(n.cfg.Node)
	began := n.clock.Now()
	data, info, getErr := store.GetBytes(ctx, n.st, key)
	err := getErr
	var next Lease
	var cond store.Condition
	markedDead := false
	n.mu.Lock()
	if errors.Is(err, store.ErrNotFound) && n.missingSince.IsZero() {
		n.missingSince = began
	}
	// A store back from an incident can answer "not found" for an object
	// it still has (a MinIO cluster that regained its quorum did, for a
	// second, and even let a create of it through), or serve the object
	// while refusing every conditional write to it as "not found" (for
	// minutes, until healed). The lease counts as gone once every answer
	// about it has said so for TTL + grace.
	gone := !n.missingSince.IsZero() && began.Sub(n.missingSince) >= n.deadAfter()
	last, lastETag, attempted, missingSince, earlier := n.lease, n.leaseETag, n.attempt, n.missingSince, n.earlier
	n.mu.Unlock()
	if errors.Is(err, store.ErrNotFound) && !gone && last.Epoch > 0 && lastETag != "" {
		// Not read, but perhaps not gone: write over the version this
		// node last wrote, conditionally. The write path can find what
		// the read path did not (MinIO was seen to take a peer's
		// conditional write on a lease that its holder's reads said was
		// not there); if another version is there, the write loses.
		data, info, err = encode(last), store.Info{ETag: lastETag}, nil
	}
	switch {
	case errors.Is(err, store.ErrNotFound) || err == nil && gone:
		prev := last
		// An epoch an earlier run tried (the record) may have been
		// written: like one of this run, its lease's absence must last.
		prevEpoch := max(prev.Epoch, earlier)
		if prevEpoch > 0 && !gone {
			return fmt.Errorf("read lease: %w (not there for %v; %w)", store.ErrNotFound, began.Sub(missingSince), errNotGoneYet)
		}
		if getErr == nil {
			// Served, but every write to it says it is not there: never
			// reuse its epoch, nor one this node tried.
			if old, err := DecodeLease(data); err == nil {
				prevEpoch = max(prevEpoch, old.Epoch, attempted.Epoch)
			}
		}
		next = Lease{Epoch: prevEpoch + 1, DeadEpoch: prev.DeadEpoch}
		if prevEpoch > 0 {
			// Our lease vanished (an operator forgot the node, or the
			// store lost it): treat the old epochs as taken over.
			next.DeadEpoch = prevEpoch
			markedDead = true
		}
		cond = store.Condition{IfAbsent: true}
	case err != nil:
		return fmt.Errorf("read lease: %w", err)
	default:
		old, err := DecodeLease(data)
		if err != nil {
			return err
		}
		n.mu.Lock()
		ours := old.Nonce != "" && n.written[old.Nonce]
		// A late commit of an older attempt can carry an older epoch:
		// never reuse one.
		prevEpoch := max(n.lease.Epoch, n.attempt.Epoch, n.earlier)
		n.mu.Unlock()
		if !starting && !ours && old.State != StateDead {
			return ErrDuplicateNode
		}
		next = Lease{Epoch: max(old.Epoch, prevEpoch) + 1, DeadEpoch: old.DeadEpoch}
		switch {
		case old.State == StateDead:
			next.DeadEpoch = max(old.DeadEpoch, old.Epoch)
			markedDead = true
		case starting && freshDisk:
			next.DeadEpoch = old.Epoch
			markedDead = true
		}
		cond = store.Condition{IfMatch: info.ETag}
	}
	next.Node = n.cfg.Node
	next.State = StateSettling
	next.TTLMillis = n.cfg.TTL.Milliseconds()
	next.Wall = time.Now().UTC()
	next.Nonce = Nonce(n.rnd)
	if err := n.record(next.Epoch); err != nil {
		return err
	}
	n.mu.Lock()
	// Remembered before the write: if it commits but its answer is lost,
	// the next try recognises the stored lease as ours and still knows
	// that the node was taken over.
	n.attempt, n.attemptAt = next, began
	n.rememberLocked(next.Nonce)
	n.markedDead = n.markedDead || markedDead
	n.mu.Unlock()
	put, err := store.PutBytes(ctx, n.st, key, encode(next), cond)
	if err != nil {
		n.mu.Lock()
		switch {
		case store.Missing(err):
			if n.missingSince.IsZero() {
				n.missingSince = began
			}
		case errors.Is(err, store.ErrPrecondition) || getErr == nil:
			// The lease is there, or was just read: the store does not
			// say it is gone.
			n.missingSince = time.Time{}
		}
		n.mu.Unlock()
		return fmt.Errorf("write lease: %w", err)
	}
	n.mu.Lock()
	n.lease, n.leaseETag, n.renewedAt = next, put.ETag, began
	n.handedOff = 0
	n.unresolved = false
	n.missingSince = time.Time{}
	clear(n.restored)
	n.settleDone = false
	n.claimsMaybe = true
	n.liveCtx, n.liveCancel = context.WithCancel(context.Background())
	n.setStateLocked(StateSettling)
	n.mu.Unlock()
	n.m.epoch.Set(float64(next.Epoch))
	// A death an earlier attempt saw, whose write committed but lost its
	// answer, shows only in the DeadEpoch this attempt carried over.
	*died = markedDead || last.Epoch > 0 && next.DeadEpoch > last.DeadEpoch
	n.log.Info("lease acquired", "epoch", next.Epoch, "dead_epoch", next.DeadEpoch, "taken_over", *died)
	return nil
}

// record saves epoch in the epoch record before any lease write of it,
// so that no later run of the node reuses it.
func (n *Node) record(epoch uint64) error {
	if n.cfg.Epochs == nil {
		return nil
	}
	n.mu.Lock()
	done := epoch <= n.recorded
	n.mu.Unlock()
	if done {
		return nil
	}
	if err := n.cfg.Epochs.Save(epoch); err != nil {
		n.log.Error("cannot record the epoch on the local disk; the lease is not written", "epoch", epoch, "err", err)
		return fmt.Errorf("record epoch: %w", err)
	}
	n.mu.Lock()
	n.recorded = max(n.recorded, epoch)
	n.mu.Unlock()
	return nil
}

// Renew writes the lease once, conditionally on the last version this
// node wrote. While fenced it tries to come back under a new epoch
// instead; SettleStep then settles the held entries. A call made while
// another is under way (the loop's and StartDrain's) returns at once.
func (n *Node) Renew(ctx context.Context) error {
	if !n.renewMu.TryLock() {
		return nil
	}
	defer n.renewMu.Unlock()
	n.mu.Lock()
	state, busy := n.state, n.quarantining || n.stopped
	n.mu.Unlock()
	switch {
	case state == StateStarting:
		return nil
	case state == StateFenced && busy:
		return nil // the fence is still moving files, or we are stopping
	case state == StateFenced:
		if _, failed := n.gate.current(); failed {
			// A node that cannot write its gate record stays fenced:
			// it could not let its runners know it is back, nor
			// upload anything.
			if err := n.publishGate(); err != nil {
				return err
			}
		}
		died, err := n.acquire(ctx, false, false)
		if err != nil {
			n.m.renewals.WithLabelValues("error").Inc()
			if errors.Is(err, ErrDuplicateNode) {
				n.log.Error("lease written by another process: two sidecars share this node id", "err", err)
			} else {
				n.log.Warn("fenced: lease not re-acquired", "err", err)
			}
			return err
		}
		if err := n.afterDeath(ctx, died, false); err != nil {
			// The held entries settle; what was not held stays behind
			// the closed gate's settling rule until the next try.
			n.log.Error("back from a fence: older entries not all held", "err", err)
		}
		_ = n.publishGate()
		return nil
	}
	began := n.clock.Now()
	n.mu.Lock()
	next := n.lease
	etag := n.leaseETag
	resend := n.unresolved
	if resend {
		// The last attempt may have committed: send it again, so that
		// its own commit comes back as a 412 we can recognise.
		next, began = n.attempt, n.attemptAt
	}
	n.mu.Unlock()
	drained := n.Drain().Done
	n.mu.Lock()
	unsettled, handedOff := n.unsettled, n.handedOff
	n.mu.Unlock()
	if !resend {
		next.Seq++
		next.State = n.leaseState()
		next.Unsettled, next.Drained, next.Handoffs = unsettled, drained, handedOff
		// Wall and Nonce stay those of the epoch: a renewal that changes
		// nothing else changes the body only by Seq, so that peers can
		// tell its ETag without reading it (predictRenewal).
		n.mu.Lock()
		n.attempt, n.attemptAt = next, began
		n.mu.Unlock()
	}
	rctx, cancel := context.WithTimeout(ctx, n.renewEvery())
	defer cancel()
	key := n.cfg.Layout.LeaseKey(n.cfg.Node)
	put, err := store.PutBytes(rctx, n.st, key, encode(next), store.Condition{IfMatch: etag})
	if errors.Is(err, store.ErrPrecondition) && n.adoptCommitted(ctx, key) {
		if state != StateFenced {
			_ = n.publishGate() // the new deadline
		}
		return nil
	}
	switch {
	case err == nil:
		n.mu.Lock()
		n.lease, n.leaseETag = next, put.ETag
		n.unresolved = false
		fenced := n.state == StateFenced
		if !fenced {
			n.renewedAt = began
		}
		n.mu.Unlock()
		n.m.renewals.WithLabelValues("ok").Inc()
		n.m.renewSeconds.Observe(n.clock.Now().Sub(began).Seconds())
		if !fenced {
			_ = n.publishGate() // the new deadline
		}
		return nil
	case errors.Is(err, store.ErrPrecondition):
		// Someone else wrote our lease: a peer declared us dead. Our
		// token is stale; fence now rather than at the deadline.
		n.mu.Lock()
		n.unresolved = false
		n.mu.Unlock()
		n.m.renewals.WithLabelValues("lost").Inc()
		n.log.Warn("lease taken: fencing", "epoch", next.Epoch)
		n.fence(ctx, "lost")
		return err
	default:
		n.mu.Lock()
		// Unresolved only if it is the latest attempt and no lease write
		// (a concurrent renewal, say from StartDrain) succeeded since the
		// version it was based on: that one would have made it lose.
		if sameLease(n.attempt, next) && n.leaseETag == etag {
			n.unresolved = true
		}
		n.mu.Unlock()
		n.m.renewals.WithLabelValues("error").Inc()
		if ctx.Err() != nil {
			return err // the sidecar is stopping: no failure to report
		}
		n.log.Warn("lease renewal failed", "epoch", next.Epoch, "err", err)
		return err
	}
}

// writtenMax bounds the nonces remembered: one per epoch.
const writtenMax = 1024

// sameLease says whether a and b are the same lease body, byte for byte:
// the same write attempt (the nonce is the epoch's, Seq the renewal's).
func sameLease(a, b Lease) bool { return bytes.Equal(encode(a), encode(b)) }

// rememberLocked records the nonce of a lease write attempt.
func (n *Node) rememberLocked(nonce string) {
	n.written[nonce] = true
	n.writtenRing = append(n.writtenRing, nonce)
	if len(n.writtenRing) > writtenMax {
		delete(n.written, n.writtenRing[0])
		n.writtenRing = n.writtenRing[1:]
	}
}

// adoptCommitted handles a lost lease write whose cause may be our own
// earlier attempt: it committed, but its answer never reached us. If the
// stored lease is that attempt, adopt it and report true.
func (n *Node) adoptCommitted(ctx context.Context, key string) bool {
	data, info, err := store.GetBytes(ctx, n.st, key)
	if err != nil {
		return false
	}
	cur, err := DecodeLease(data)
	if err != nil {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if cur.Nonce == "" || !sameLease(cur, n.attempt) || cur.State == StateDead {
		return false
	}
	n.lease, n.leaseETag = cur, info.ETag
	n.unresolved = false
	if n.state != StateFenced {
		n.renewedAt = n.attemptAt
	}
	n.m.renewals.WithLabelValues("ok").Inc()
	return true
}

// leaseState is the state the node writes into its lease.
func (n *Node) leaseState() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.drain:
		return StateDraining
	case n.state == StateSettling:
		return StateSettling
	}
	return StateLive
}

// overdueLocked says whether the last successful renewal started more
// than TTL - margin ago, by the node's own monotonic clock: from then on
// the node must not act as owner.
func (n *Node) overdueLocked() bool {
	return n.clock.Now().Sub(n.renewedAt) > n.cfg.TTL-n.cfg.Margin
}

// CheckFence fences the node once its lease is overdue (overdueLocked), or
// once the last runner gate it could publish ran out: a node that cannot
// write its gate record uploads nothing, so it must not look live.
func (n *Node) CheckFence(ctx context.Context) {
	until := n.gate.uploadUntil()
	_, failed := n.gate.current()
	n.mu.Lock()
	active := n.state != StateStarting && n.state != StateFenced
	overdue := active && n.overdueLocked()
	gateOut := active && failed && !n.clock.Now().Before(until)
	n.mu.Unlock()
	switch {
	case overdue:
		n.log.Warn("lease not renewed within TTL - margin: fencing", "ttl", n.cfg.TTL, "margin", n.cfg.Margin)
		n.fence(ctx, "expired")
	case gateOut:
		n.log.Error("runner gate not published since its last deadline: fencing", "ttl", n.cfg.TTL)
		n.fence(ctx, "gate")
	}
}

// fence stops the node acting as owner and moves every entry the store
// knows as its own out of the runners' reach.
func (n *Node) fence(ctx context.Context, reason string) {
	n.mu.Lock()
	if n.state == StateFenced {
		n.mu.Unlock()
		return
	}
	epoch := n.lease.Epoch
	n.setStateLocked(StateFenced)
	switch {
	case n.stopped:
		n.fenceReason = GateStopped
	case reason == "lost":
		n.fenceReason = GateLost
	default:
		n.fenceReason = GateFenced
	}
	// Whatever kept this node from renewing may have kept its peers from
	// renewing too, for a while before it showed here: the silence they
	// accrued until now is no evidence. It starts again from zero once
	// this node is back (Scan).
	for _, p := range n.peers {
		p.silence = 0
	}
	n.lastScan = time.Time{} // no gap across the fence counts either
	n.quarantining = true
	n.liveCancel()
	n.mu.Unlock()
	// Closed first: uploads stopped above, so entries born from now on
	// are unknown to every peer and stay runnable.
	gateErr := n.publishGate()
	var moved []Entry
	var err error
	if !n.cfg.RunnerGate || gateErr != nil {
		// Wait for releases into the queue directories to finish or abort.
		n.releaseMu.Lock()
		moved, err = n.local.Quarantine(ctx, false)
		n.releaseMu.Unlock()
	}
	n.mu.Lock()
	n.quarantining = false
	n.mu.Unlock()
	n.m.fences.WithLabelValues(reason).Inc()
	n.m.quarantined.Add(float64(len(moved)))
	if err != nil {
		n.log.Error("fence: quarantine incomplete", "epoch", epoch, "moved", len(moved), "err", err)
		return
	}
	level := slog.LevelWarn
	if reason == "shutdown" {
		level = slog.LevelInfo // the ordinary end of a clean stop
	}
	n.log.Log(ctx, level, "fenced", "epoch", epoch, "reason", reason, "quarantined", len(moved))
}

// Stop fences the node because the sidecar is shutting down: nothing the
// store knows as this node's may stay visible to runners that no sidecar
// guards any more. A restart on the same disk settles the held entries.
func (n *Node) Stop(ctx context.Context) {
	n.mu.Lock()
	n.stopped = true
	n.mu.Unlock()
	n.fence(ctx, "shutdown")
}
