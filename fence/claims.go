package fence

import (
	"context"
	"errors"
	"fmt"

	"github.com/mmsidecar/mmsidecar/store"
)

// claimInfo is one listed claim.
type claimInfo struct {
	key   string
	entry Entry
	etag  string
	claim Claim
}

// ClaimsPass lists the claims and handles this node's own: it completes
// transfers it won but has not finished (a crash between claim and restore,
// or a handoff from a draining peer), deletes old copies of entries it
// holds, and collects the claims of finished entries once no node can
// still settle a held copy against them. It runs every 2 TTL, and every
// scan while a peer is draining; ScanStep defers it (up to 4 TTL) while a
// takeover has entries left, and a pass that runs while one has is light:
// it handles the claims it knows (its own writes, and what it read
// before) and reads no other, so that its survivors do not each read the
// thousands of claims the others write; the next pass after the takeover
// reads them. An idle cluster skips it: once a pass has found no claim at
// all, none is listed again until one may exist (see claimsMaybe).
func (n *Node) ClaimsPass(ctx context.Context) error {
	n.mu.Lock()
	due := (n.state == StateLive || n.state == StateDraining) &&
		((n.claimsMaybe && n.clock.Now().Sub(n.lastClaims) >= 2*n.cfg.TTL) || n.anyDrainingPeerLocked())
	light := n.takeoverMore
	if due {
		n.lastClaims = n.clock.Now()
		// Cleared before the listing: a claim written meanwhile sets it
		// again.
		n.claimsMaybe = false
	}
	n.mu.Unlock()
	if !due {
		return nil
	}
	err := n.claimsPass(ctx, light)
	if err != nil {
		n.mu.Lock()
		n.claimsMaybe = true
		n.mu.Unlock()
	}
	return err
}

// claimsPass lists the claims and steps through them; light reads none
// that the cache does not hold at its listed version.
func (n *Node) claimsPass(ctx context.Context, light bool) error {
	octx, done, epoch := n.ownerCtx(ctx)
	defer done()
	var infos []claimInfo
	err := n.st.List(octx, n.cfg.Layout.ClaimPrefix(), func(in store.Info) error {
		e, ok := n.cfg.Layout.ParseClaimKey(in.Key)
		if ok {
			infos = append(infos, claimInfo{key: in.Key, entry: e, etag: in.ETag})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list claims: %w", err)
	}
	if len(infos) > 0 {
		n.mu.Lock()
		n.claimsMaybe = true
		n.mu.Unlock()
	}
	held := make(map[Entry]bool)
	for _, e := range n.local.Held() {
		held[e] = true
	}
	live := make(map[string]bool, len(infos))
	del := n.newCopyDeleter()
	var firstErr error
	unread := 0
	for _, ci := range infos {
		live[ci.key] = true
		read, err := n.claimStep(octx, ci, epoch, held, del, light)
		if !read {
			unread++
		}
		if err != nil {
			firstErr = cmpErr(firstErr, err)
		}
	}
	kind := "full"
	if light {
		kind = "light"
	}
	n.m.claimsPasses.WithLabelValues(kind).Inc()
	if unread > 0 {
		n.m.claimsDeferred.Add(float64(unread))
		n.log.Debug("light claims pass during a takeover", "claims", len(infos), "unread", unread, "epoch", epoch)
	}
	if err := del.flush(octx); err != nil {
		firstErr = cmpErr(firstErr, err)
	}
	n.mu.Lock()
	for k := range n.claimCache {
		if !live[k] {
			delete(n.claimCache, k)
		}
	}
	n.mu.Unlock()
	return firstErr
}

// claimStep handles one listed claim if it is this node's. It reports
// known=false, doing nothing, when light and the cache does not hold the
// claim at its listed version.
func (n *Node) claimStep(ctx context.Context, ci claimInfo, epoch uint64, held map[Entry]bool, del *copyDeleter, light bool) (known bool, err error) {
	n.mu.Lock()
	cached, ok := n.claimCache[ci.key]
	n.mu.Unlock()
	switch {
	case ok && cached.etag == ci.etag:
		ci.claim = cached.claim
	case light:
		return false, nil
	default:
		c, etag, found, err := n.readClaim(ctx, ci.entry)
		if err != nil || !found {
			return true, err
		}
		ci.claim, ci.etag = c, etag
		n.mu.Lock()
		n.claimCache[ci.key] = cachedClaim{etag: etag, claim: c}
		n.mu.Unlock()
	}
	return true, n.handleClaim(ctx, ci, cached, epoch, held, del)
}

// handleClaim acts on ci if this node owns it; cached is what the cache
// held for it before this pass.
func (n *Node) handleClaim(ctx context.Context, ci claimInfo, cached cachedClaim, epoch uint64, held map[Entry]bool, del *copyDeleter) error {
	c, e := ci.claim, ci.entry
	if c.Owner != n.cfg.Node || !n.markInflight(e) {
		return nil
	}
	defer n.clearInflight(e)
	target := n.restoredAs(e, c)
	src := n.cfg.Layout.MirrorKey(c.From, c.FromEpoch, e)
	ownCopy := c.From == n.cfg.Node && c.FromEpoch == 0
	if n.local.Has(target) || n.local.Has(e) {
		n.mu.Lock()
		drain := n.drain
		n.mu.Unlock()
		if held[target] && c.Epoch == epoch && !drain {
			// Staged by a takeover whose release failed: finish it
			// before the old copy goes, or it stays held for good.
			if err := n.release(ctx, target); err != nil {
				return err
			}
		}
		if !ownCopy && !cached.srcGone {
			if err := n.st.Delete(ctx, src); err != nil {
				return fmt.Errorf("delete old copy: %w", err)
			}
			n.rememberSrcGone(ci.key, ci.etag, c)
		}
		return nil
	}
	n.mu.Lock()
	restored := n.restored[e] == c.Epoch && c.Epoch == epoch
	n.mu.Unlock()
	if restored && !ownCopy && !cached.srcGone {
		// Restored by this node in this epoch and finished since; only
		// the delete of the old copy did not happen: never restore twice.
		if err := n.st.Delete(ctx, src); err != nil {
			return fmt.Errorf("delete old copy: %w", err)
		}
		n.rememberSrcGone(ci.key, ci.etag, c)
		cached.srcGone = true
	}
	if !ownCopy && !cached.srcGone {
		_, err := n.st.Stat(ctx, src)
		switch {
		case err == nil:
			if c.Epoch != epoch {
				next := c
				next.Epoch, next.Token = epoch, c.Token+1
				// A copy this node may have left under the old epoch is
				// deleted before the claim goes.
				next.Past = withHolder(append([]Holder(nil), c.Past...), c.Owner, c.Epoch)
				lost, err := n.writeClaim(ctx, e, next, store.Condition{IfMatch: ci.etag})
				if err != nil || lost {
					return err
				}
				c = next
			}
			how := "takeover"
			if c.Handoff {
				how = "handoff"
			}
			return n.complete(ctx, e, c, how, del)
		case !errors.Is(err, store.ErrNotFound):
			return fmt.Errorf("stat old copy: %w", err)
		}
		n.rememberSrcGone(ci.key, ci.etag, c)
	}
	// The entry is finished: the claim is a tombstone that keeps earlier
	// holders from restoring a stale copy, and a later takeover of a
	// leftover copy from starting the tokens again at 1.
	if !n.mayCollect(c) {
		return nil
	}
	if gone, err := n.ownCopiesGone(ctx, c, target, epoch); err != nil || !gone {
		return err
	}
	if !n.finishedLongEnough(ci.key, ci.etag) {
		return nil
	}
	if !ownCopy {
		if err := n.deleteLateCopy(ctx, e, src, c, "the old owner's upload committed after the takeover"); err != nil {
			return err
		}
	}
	// A copy this node left under an earlier epoch of its own (a restore
	// mirrored there whose release failed before the node died): the
	// takeover of that epoch meets this node's claim and leaves it, and
	// would claim it afresh once the claim is gone.
	for _, h := range c.Past {
		if h.Node == n.cfg.Node && h.Epoch < c.Epoch {
			key := n.cfg.Layout.MirrorKey(h.Node, h.Epoch, e)
			if err := n.deleteLateCopy(ctx, e, key, c, "left by this node under an earlier epoch"); err != nil {
				return err
			}
		}
	}
	if err := n.st.Delete(ctx, ci.key); err != nil {
		return fmt.Errorf("delete claim: %w", err)
	}
	n.m.claimsGC.Inc()
	n.log.Debug("claim collected", "entry", e.String(), "token", c.Token)
	return nil
}

func (n *Node) rememberSrcGone(key, etag string, c Claim) {
	n.mu.Lock()
	cc := n.claimCache[key]
	if cc.etag != etag {
		cc = cachedClaim{}
	}
	cc.etag, cc.claim, cc.srcGone = etag, c, true
	n.claimCache[key] = cc
	n.mu.Unlock()
}

// finishedLongEnough records that the claim at key (version etag) is
// collectable and says whether that was first seen 2 TTL ago or more.
func (n *Node) finishedLongEnough(key, etag string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	cc, ok := n.claimCache[key]
	if !ok || cc.etag != etag {
		return false
	}
	now := n.clock.Now()
	if cc.finishedAt.IsZero() {
		cc.finishedAt = now
		n.claimCache[key] = cc
		return false
	}
	return now.Sub(cc.finishedAt) >= 2*n.cfg.TTL
}

// mayCollect says whether a finished entry's claim can go: every node
// that may hold a stale copy (the claim's source and past holders) has
// settled under a newer epoch with nothing left unsettled, or finished a
// drain, so none can restore the entry again.
func (n *Node) mayCollect(c Claim) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, h := range c.holders() {
		if h.Node == n.cfg.Node {
			continue // the owner itself: it holds no copy (checked before)
		}
		p := n.peers[h.Node]
		if p == nil || !p.known() {
			return false
		}
		l := p.lease
		settled := (l.State == StateLive || l.State == StateDraining) && l.Epoch > h.Epoch && !l.Unsettled
		drained := l.Drained && l.Epoch >= h.Epoch
		if !settled && !drained {
			return false
		}
	}
	return true
}

// ownCopiesGone says whether this node's namespace has no copy of target
// left at the claim's epoch or the current one: a copy whose delete is
// still on its way would be restored by a takeover if the node died, and
// only the claim keeps that takeover's token above the last one.
func (n *Node) ownCopiesGone(ctx context.Context, c Claim, target Entry, epoch uint64) (bool, error) {
	for _, ep := range []uint64{c.Epoch, epoch} {
		_, err := n.st.Stat(ctx, n.cfg.Layout.MirrorKey(n.cfg.Node, ep, target))
		switch {
		case err == nil:
			return false, nil
		case !errors.Is(err, store.ErrNotFound):
			return false, fmt.Errorf("stat own copy: %w", err)
		}
		if c.Epoch == epoch {
			break
		}
	}
	return true, nil
}

// deleteLateCopy deletes src, a stale copy of a finished entry, if it is
// in the store: the copy its claim was won from, there again (an upload
// of the old owner that committed after the takeover had deleted it), or
// one the owner left under an earlier epoch (why says which). The claim
// is all that keeps such a copy from being claimed afresh and run again,
// so it only goes once the copy has.
func (n *Node) deleteLateCopy(ctx context.Context, e Entry, src string, c Claim, why string) error {
	_, err := n.st.Stat(ctx, src)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("stat old copy: %w", err)
	}
	if err := n.st.Delete(ctx, src); err != nil {
		return fmt.Errorf("delete late copy: %w", err)
	}
	n.m.lateCopies.Inc()
	n.log.Warn("late copy of a finished entry deleted", "why", why, "entry", e.String(), "key", src, "token", c.Token)
	return nil
}
