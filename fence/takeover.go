package fence

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

var errStopList = errors.New("stop listing")

// Takeover runs one round over every namespace that belongs to a takeover
// (a dead peer's epochs up to its DeadEpoch, and this node's own old epochs
// after it lost its disk): each entry goes to one node of the live set by
// rendezvous hashing, and this node takes its share, each entry won by a
// conditional claim. Cost is O(entries in those namespaces).
func (n *Node) Takeover(ctx context.Context) error {
	type target struct {
		node    string
		horizon uint64
		empty   *uint64
	}
	n.mu.Lock()
	if n.state != StateLive {
		n.takeoverMore = false
		n.mu.Unlock()
		return nil
	}
	live := n.liveSetLocked()
	var targets []target
	for _, p := range n.peers {
		if p.known() && p.lease.DeadEpoch > p.emptyUpTo {
			targets = append(targets, target{p.node, p.lease.DeadEpoch, &p.emptyUpTo})
		}
	}
	n.mu.Unlock()
	sort.Slice(targets, func(i, j int) bool { return targets[i].node < targets[j].node })
	octx, done, epoch := n.ownerCtx(ctx)
	defer done()
	n.mu.Lock()
	if n.lease.DeadEpoch > n.selfEmptyUpTo {
		targets = append(targets, target{n.cfg.Node, n.lease.DeadEpoch, &n.selfEmptyUpTo})
	}
	n.mu.Unlock()

	var firstErr error
	var more atomic.Bool
	defer func() {
		n.mu.Lock()
		n.takeoverMore = more.Load()
		n.mu.Unlock()
	}()
	for _, t := range targets {
		refs, err := n.listNamespace(octx, t.node, 0, t.horizon)
		if err != nil {
			firstErr = cmpErr(firstErr, err)
			continue
		}
		if len(refs) == 0 {
			n.mu.Lock()
			*t.empty = t.horizon
			n.mu.Unlock()
			continue
		}
		var mine []MirrorRef
		for _, r := range refs {
			if pick(r.Entry, live) == n.cfg.Node {
				mine = append(mine, r)
			}
		}
		n.log.Info("takeover round", "from", t.node, "dead_epoch", t.horizon, "entries", len(refs), "mine", len(mine), "live", len(live), "epoch", epoch)
		// A listing older than a TTL is not trusted: a claim collected
		// since (2 TTL after its entry finished) would let a stale copy's
		// entry be claimed afresh. The next round lists again.
		listed := n.clock.Now()
		del := n.newCopyDeleter()
		if err := forEach(octx, n.cfg.Concurrency, mine, func(r MirrorRef) error {
			if n.clock.Now().Sub(listed) > n.cfg.TTL {
				more.Store(true)
				return nil
			}
			return n.takeoverEntry(octx, r, epoch, del)
		}); err != nil {
			firstErr = cmpErr(firstErr, err)
		}
		if err := del.flush(octx); err != nil {
			firstErr = cmpErr(firstErr, err)
		}
	}
	return firstErr
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// listNamespace lists node's copies at epochs from..to. Keys that do not
// parse are skipped: nothing read from the store becomes a path unchecked.
func (n *Node) listNamespace(ctx context.Context, node string, from, to uint64) ([]MirrorRef, error) {
	var refs []MirrorRef
	err := n.st.List(ctx, n.cfg.Layout.NodePrefix(node), func(in store.Info) error {
		r, ok := n.cfg.Layout.ParseMirrorKey(in.Key)
		if !ok || r.Node != node {
			n.log.Debug("ignoring unexpected key", "key", in.Key)
			return nil
		}
		if r.Epoch > to {
			return errStopList
		}
		if r.Epoch >= from {
			refs = append(refs, r)
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStopList) {
		return nil, fmt.Errorf("list namespace %s: %w", node, err)
	}
	return refs, nil
}

// forEach runs f over items, at most limit at a time, stops starting new
// ones when ctx ends, and returns the first error (or ctx's).
func forEach[T any](ctx context.Context, limit int, items []T, f func(T) error) error {
	sem := make(chan struct{}, max(limit, 1))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for _, it := range items {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(it); err != nil {
				mu.Lock()
				first = cmpErr(first, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

func (n *Node) markInflight(e Entry) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.inflight[e] {
		return false
	}
	n.inflight[e] = true
	return true
}

func (n *Node) clearInflight(e Entry) {
	n.mu.Lock()
	delete(n.inflight, e)
	n.mu.Unlock()
}

// takeoverEntry wins r's entry with a conditional claim and restores it.
func (n *Node) takeoverEntry(ctx context.Context, r MirrorRef, epoch uint64, del *copyDeleter) error {
	if !n.markInflight(r.Entry) {
		return nil
	}
	defer n.clearInflight(r.Entry)
	began := n.clock.Now()
	var c Claim
	var ok bool
	// A claim whose answer was lost is recognised by the next attempt
	// (412, and the stored claim is ours): retry at once, not next round.
	err := retry(ctx, n.clock, time.Second, func() (err error) {
		c, ok, err = n.claimFor(ctx, r, epoch)
		return err
	})
	if err != nil || !ok {
		return err
	}
	n.mu.Lock()
	done := n.restored[r.Entry] == epoch
	n.mu.Unlock()
	if done || c.From != r.Node || c.FromEpoch != r.Epoch {
		return n.secondCopy(ctx, r, c, epoch, del)
	}
	if err := n.complete(ctx, r.Entry, c, "takeover", del); err != nil {
		return err
	}
	n.m.takeoverSecs.Observe(n.clock.Now().Sub(began).Seconds())
	return nil
}

// claimFor makes this node the owner of r's entry at epoch, or reports
// ok=false when another node owns it and is alive at the claim's epoch.
func (n *Node) claimFor(ctx context.Context, r MirrorRef, epoch uint64) (Claim, bool, error) {
	e := r.Entry
	for attempt := 0; attempt < 3; attempt++ {
		fresh := Claim{Owner: n.cfg.Node, Epoch: epoch, From: r.Node, FromEpoch: r.Epoch, Token: 1, Transfers: 1}
		lost, err := n.writeClaim(ctx, e, fresh, store.Condition{IfAbsent: true})
		if err != nil {
			return Claim{}, false, err
		}
		if !lost {
			n.log.Info("claimed", "entry", e.String(), "from", r.Node, "from_epoch", r.Epoch, "epoch", epoch, "token", 1)
			return fresh, true, nil
		}
		c, etag, found, err := n.readClaim(ctx, e)
		if err != nil {
			return Claim{}, false, err
		}
		if !found {
			// The claim that beat ours was collected meanwhile: the
			// entry is finished.
			return Claim{}, false, nil
		}
		n.mu.Lock()
		horizon := n.horizonLocked(c.Owner)
		n.mu.Unlock()
		if c.Owner == n.cfg.Node && c.Epoch == epoch {
			return c, true, nil
		}
		if c.Owner != n.cfg.Node && c.Epoch > horizon {
			return Claim{}, false, nil
		}
		next := c.successor(n.cfg.Node, epoch, r.Node, r.Epoch)
		if c.Owner != n.cfg.Node {
			next.Transfers++
		}
		lost, err = n.writeClaim(ctx, e, next, store.Condition{IfMatch: etag})
		if err != nil {
			return Claim{}, false, err
		}
		if lost {
			continue
		}
		n.log.Info("claimed", "entry", e.String(), "from", r.Node, "from_epoch", r.Epoch, "prev_owner", c.Owner, "epoch", epoch, "token", next.Token)
		return next, true, nil
	}
	return Claim{}, false, nil
}

// restoredAs is the entry a claimed entry becomes locally: itself, or a
// preserved copy in bad once it has moved more than MaxTransfers times.
func (n *Node) restoredAs(e Entry, c Claim) Entry {
	if e.Kind == KindPck && c.Transfers > n.cfg.MaxTransfers {
		return Entry{Queue: "bad", Base: e.Base, Kind: KindPsv}
	}
	return e
}

// complete fetches the copy claim c points at, stages and releases it
// locally, and only then hands the copy to del for deletion (G1: the
// entry is always in the store or in a durable local file, and in the
// store again before the old copy goes).
func (n *Node) complete(ctx context.Context, e Entry, c Claim, how string, del *copyDeleter) error {
	src := n.cfg.Layout.MirrorKey(c.From, c.FromEpoch, e)
	data, _, err := store.GetBytes(ctx, n.st, src)
	if errors.Is(err, store.ErrNotFound) {
		n.log.Info("claimed entry has no copy left: finished by its previous owner", "entry", e.String(), "from", c.From, "token", c.Token)
		return nil
	}
	if err != nil {
		return fmt.Errorf("get copy: %w", err)
	}
	target := n.restoredAs(e, c)
	if target != e {
		how = "preserved"
		n.log.Warn("entry moved too often: preserving it in bad", "entry", e.String(), "transfers", c.Transfers, "max", n.cfg.MaxTransfers, "token", c.Token)
	}
	if err := n.local.Stage(target, data); err != nil {
		return fmt.Errorf("stage: %w", err)
	}
	if err := n.release(ctx, target); err != nil {
		return err
	}
	n.mu.Lock()
	n.restored[e] = c.Epoch
	n.mu.Unlock()
	n.m.takeovers.WithLabelValues(how).Inc()
	n.log.Info("restored", "entry", target.String(), "from", c.From, "epoch", c.Epoch, "token", c.Token, "how", how)
	return del.add(ctx, e, src)
}

// secondCopy handles r, a copy of an entry that this node already claimed
// at epoch from another copy: its node had mirrored it again under a
// later epoch (after a settle) and died before the older copy was deleted.
// If this node restored the entry, r is a duplicate and goes; if the
// claimed copy is still there, that one is restored first and r waits for
// the next round; if neither, r is the entry's only copy and the claim is
// pointed at it.
func (n *Node) secondCopy(ctx context.Context, r MirrorRef, c Claim, epoch uint64, del *copyDeleter) error {
	e := r.Entry
	target := n.restoredAs(e, c)
	n.mu.Lock()
	done := n.restored[e] == epoch
	n.mu.Unlock()
	key := n.cfg.Layout.MirrorKey(r.Node, r.Epoch, e)
	if done || n.local.Has(target) || n.local.Has(e) {
		if err := retry(ctx, n.clock, time.Second, func() error { return n.st.Delete(ctx, key) }); err != nil {
			return fmt.Errorf("delete second copy: %w", err)
		}
		n.log.Info("second copy of a restored entry deleted", "entry", e.String(), "from", r.Node, "from_epoch", r.Epoch, "epoch", epoch, "token", c.Token)
		return nil
	}
	_, err := n.st.Stat(ctx, n.cfg.Layout.MirrorKey(c.From, c.FromEpoch, e))
	switch {
	case err == nil:
		return n.complete(ctx, e, c, "takeover", del)
	case !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("stat claimed copy: %w", err)
	}
	cur, etag, found, err := n.readClaim(ctx, e)
	if err != nil || !found || cur.Owner != n.cfg.Node || cur.Epoch != epoch {
		return err
	}
	next := cur.successor(n.cfg.Node, epoch, r.Node, r.Epoch)
	lost, err := n.writeClaim(ctx, e, next, store.Condition{IfMatch: etag})
	if err != nil || lost {
		return err
	}
	n.log.Info("claimed", "entry", e.String(), "from", r.Node, "from_epoch", r.Epoch, "epoch", epoch, "token", next.Token)
	return n.complete(ctx, e, next, "takeover", del)
}
