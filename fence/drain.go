package fence

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/mmsidecar/mmsidecar/store"
)

// ErrNoPeer means a draining node has no live peer to hand entries to.
var ErrNoPeer = errors.New("no live peer to hand entries to")

// StartDrain makes the node hand its unstarted backlog to its live peers:
// every Mailman-visible .pck is held (so no local runner starts it), and
// each held entry is given to one peer by a conditional claim. Entries in
// flight finish here. The node stops taking over from dead peers.
func (n *Node) StartDrain(ctx context.Context) {
	n.mu.Lock()
	n.drain = true
	n.drainEmpty = false
	if n.state == StateLive {
		n.setStateLocked(StateDraining)
	}
	n.mu.Unlock()
	n.log.Info("draining")
	// Mailman's runners start nothing new from here on.
	_ = n.publishGate()
	_ = n.Renew(ctx)
}

// TryStartDrain starts a drain (StartDrain) only when a live peer can
// take the entries. With none it returns ErrNoPeer and holds nothing: a
// drain then only hides the queue from Mailman until it is cancelled.
func (n *Node) TryStartDrain(ctx context.Context) error {
	n.mu.Lock()
	alone := !n.drain && len(n.liveSetLocked()) < 2
	n.mu.Unlock()
	if alone {
		return ErrNoPeer
	}
	n.StartDrain(ctx)
	return nil
}

// CancelDrain ends a drain: the node takes work again and says so in its
// lease; the entries still held for handoff go back to Mailman's queues
// through Resettle (the scan loop), each once its claim says it is still
// this node's, while entries already handed off stay with their new
// owner. Until every such copy is picked up, DrainStep goes on handing
// again those whose new owner died first: no one else would. It reports
// whether a drain was under way.
func (n *Node) CancelDrain(ctx context.Context) bool {
	n.mu.Lock()
	was := n.drain
	n.drain, n.drainEmpty, n.drainWaiting = false, false, 0
	n.drainTail = n.drainTail || was
	if n.state == StateDraining {
		n.setStateLocked(StateLive)
	}
	n.mu.Unlock()
	if was {
		n.log.Info("drain cancelled")
		_ = n.Renew(ctx)
	}
	return was
}

// DrainStatus says whether a drain is under way and whether it is done:
// nothing queued, in flight or held here, and nothing left in this node's
// namespace for a peer to pick up.
type DrainStatus struct {
	// Draining is true once StartDrain was called.
	Draining bool
	// Done is true when the node holds nothing.
	Done bool
	// Local is what the node holds.
	Local Counts
	// Waiting counts copies in the store that peers have not picked up.
	Waiting int
	// Peers counts live peers that can take entries.
	Peers int
}

// Drain returns the drain status.
func (n *Node) Drain() DrainStatus {
	c := n.local.Counts()
	n.mu.Lock()
	defer n.mu.Unlock()
	peers := len(n.liveSetLocked()) - 1
	return DrainStatus{
		Draining: n.drain,
		Done:     n.drain && n.drainEmpty && c.Pck == 0 && c.Bak == 0 && c.Held == 0,
		Local:    c,
		Waiting:  n.drainWaiting,
		Peers:    peers,
	}
}

// DrainStep hands every held entry to a live peer, hands again entries
// whose chosen peer died before picking them up, and records whether
// anything is left. After a cancelled drain it does only the second, until
// no handed-off copy waits.
func (n *Node) DrainStep(ctx context.Context) error {
	n.mu.Lock()
	draining := n.drain && n.state == StateDraining
	tail := !n.drain && n.drainTail && n.state == StateLive
	if !draining && !tail {
		n.mu.Unlock()
		return nil
	}
	var peers []string
	epochs := make(map[string]uint64)
	for _, node := range n.liveSetLocked() {
		if node != n.cfg.Node {
			peers = append(peers, node)
			epochs[node] = n.peers[node].lease.Epoch
		}
	}
	ownFrom := n.lease.DeadEpoch + 1
	n.mu.Unlock()
	if len(peers) == 0 {
		n.log.Warn("drain: waiting for a live peer")
		return ErrNoPeer
	}
	sort.Strings(peers)
	octx, done, _ := n.ownerCtx(ctx)
	defer done()
	if tail {
		return n.drainTailStep(octx, peers, epochs)
	}
	var firstErr error
	for _, e := range n.local.Held() {
		n.mu.Lock()
		cancelled := !n.drain
		n.mu.Unlock()
		if cancelled {
			break // CancelDrain: the rest goes back to Mailman
		}
		if err := n.handOff(octx, e, peers, epochs); err != nil {
			firstErr = cmpErr(firstErr, err)
		}
	}
	// Copies left in our namespace whose entry we no longer hold are
	// waiting for their new owner; if that owner died, choose another.
	refs, err := n.listNamespace(octx, n.cfg.Node, ownFrom, ^uint64(0))
	if err != nil {
		return cmpErr(firstErr, err)
	}
	waiting := 0
	listed := make(map[Entry]bool, len(refs))
	for _, r := range refs {
		listed[r.Entry] = true
		if n.local.Has(r.Entry) {
			continue
		}
		waiting++
		if err := n.rehandOff(octx, r, peers, epochs); err != nil {
			firstErr = cmpErr(firstErr, err)
		}
	}
	n.mu.Lock()
	for e := range n.handedRefs {
		if !listed[e] {
			delete(n.handedRefs, e) // picked up by its new owner
		}
	}
	n.drainWaiting = waiting
	n.drainEmpty = len(refs) == 0 && firstErr == nil
	n.mu.Unlock()
	return firstErr
}

// drainTailStep follows the copies a cancelled drain handed off: one the
// new owner picked up (its copy here is gone) is forgotten, one whose new
// owner died first is handed again. The tail ends when none is left.
func (n *Node) drainTailStep(ctx context.Context, peers []string, epochs map[string]uint64) error {
	n.mu.Lock()
	refs := make([]MirrorRef, 0, len(n.handedRefs))
	for _, r := range n.handedRefs {
		refs = append(refs, r)
	}
	n.mu.Unlock()
	sort.Slice(refs, func(i, j int) bool { return refs[i].Entry.String() < refs[j].Entry.String() })
	var firstErr error
	for _, r := range refs {
		_, err := n.st.Stat(ctx, n.cfg.Layout.MirrorKey(r.Node, r.Epoch, r.Entry))
		switch {
		case errors.Is(err, store.ErrNotFound):
			n.mu.Lock()
			delete(n.handedRefs, r.Entry)
			n.mu.Unlock()
		case err != nil:
			firstErr = cmpErr(firstErr, fmt.Errorf("drain: %w", err))
		default:
			if err := n.rehandOff(ctx, r, peers, epochs); err != nil {
				firstErr = cmpErr(firstErr, err)
			}
		}
	}
	n.mu.Lock()
	if len(n.handedRefs) == 0 {
		n.drainTail = false
	}
	n.mu.Unlock()
	return firstErr
}

// handOff gives the held entry e to a peer: its copy is made durable in
// this node's namespace, a claim names the peer as owner, and the local
// file goes; the peer's claims pass restores it from the copy.
func (n *Node) handOff(ctx context.Context, e Entry, peers []string, epochs map[string]uint64) error {
	key, err := n.local.Mirror(ctx, e)
	if err != nil {
		return fmt.Errorf("mirror before handoff: %w", err)
	}
	ref, ok := n.cfg.Layout.ParseMirrorKey(key)
	if !ok {
		return fmt.Errorf("mirror before handoff: bad key %q", key)
	}
	to := pick(e, peers)
	c, etag, found, err := n.readClaim(ctx, e)
	if err != nil {
		return err
	}
	next := Claim{Owner: to, Epoch: epochs[to], From: n.cfg.Node, FromEpoch: ref.Epoch, Token: 1, Handoff: true}
	cond := store.Condition{IfAbsent: true}
	if found {
		if c.Owner != n.cfg.Node {
			// Someone else owns it already: ours was a stale copy.
			return n.local.Drop(e)
		}
		next = c.successor(to, epochs[to], n.cfg.Node, ref.Epoch)
		next.Handoff, cond = true, store.Condition{IfMatch: etag}
	}
	lost, err := n.writeClaim(ctx, e, next, cond)
	if err != nil || lost {
		return err
	}
	if err := n.local.Drop(e); err != nil {
		return fmt.Errorf("drop after handoff: %w", err)
	}
	n.m.handoffs.Inc()
	n.mu.Lock()
	n.handedOff++
	n.handedRefs[e] = ref
	n.mu.Unlock()
	n.log.Info("handed off", "entry", e.String(), "to", to, "token", next.Token)
	return nil
}

// rehandOff reassigns a handed-off copy whose new owner died first.
func (n *Node) rehandOff(ctx context.Context, r MirrorRef, peers []string, epochs map[string]uint64) error {
	c, etag, found, err := n.readClaim(ctx, r.Entry)
	if err != nil || !found || c.From != n.cfg.Node {
		return err
	}
	n.mu.Lock()
	dead := c.Epoch <= n.horizonLocked(c.Owner)
	n.mu.Unlock()
	if !dead {
		return nil
	}
	to := pick(r.Entry, peers)
	next := c.successor(to, epochs[to], n.cfg.Node, r.Epoch)
	next.Handoff = true
	_, err = n.writeClaim(ctx, r.Entry, next, store.Condition{IfMatch: etag})
	return err
}
