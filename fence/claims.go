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
// scan while a peer is draining.
func (n *Node) ClaimsPass(ctx context.Context) error {
	n.mu.Lock()
	due := (n.state == StateLive || n.state == StateDraining) &&
		(n.clock.Now().Sub(n.lastClaims) >= 2*n.cfg.TTL || n.anyDrainingPeerLocked())
	if due {
		n.lastClaims = n.clock.Now()
	}
	n.mu.Unlock()
	if !due {
		return nil
	}
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
	held := make(map[Entry]bool)
	for _, e := range n.local.Held() {
		held[e] = true
	}
	live := make(map[string]bool, len(infos))
	var firstErr error
	for _, ci := range infos {
		live[ci.key] = true
		if err := n.claimStep(octx, ci, epoch, held); err != nil {
			firstErr = cmpErr(firstErr, err)
		}
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

func (n *Node) claimStep(ctx context.Context, ci claimInfo, epoch uint64, held map[Entry]bool) error {
	n.mu.Lock()
	cached, ok := n.claimCache[ci.key]
	n.mu.Unlock()
	if ok && cached.etag == ci.etag {
		ci.claim = cached.claim
	} else {
		c, etag, found, err := n.readClaim(ctx, ci.entry)
		if err != nil || !found {
			return err
		}
		ci.claim, ci.etag = c, etag
		n.mu.Lock()
		n.claimCache[ci.key] = cachedClaim{etag: etag, claim: c}
		n.mu.Unlock()
	}
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
	if !ownCopy && !cached.srcGone {
		_, err := n.st.Stat(ctx, src)
		switch {
		case err == nil:
			if c.Epoch != epoch {
				next := c
				next.Epoch, next.Token = epoch, c.Token+1
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
			return n.complete(ctx, e, c, how)
		case !errors.Is(err, store.ErrNotFound):
			return fmt.Errorf("stat old copy: %w", err)
		}
		n.rememberSrcGone(ci.key, ci.etag, c)
	}
	// The entry is finished: the claim is a tombstone that keeps the
	// previous owner from restoring a copy it held while it was away.
	if !n.mayCollect(c) {
		return nil
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
	n.claimCache[key] = cachedClaim{etag: etag, claim: c, srcGone: true}
	n.mu.Unlock()
}

// mayCollect says whether a finished entry's claim can go: the node it
// was taken from has come back and settled since (or is this node).
func (n *Node) mayCollect(c Claim) bool {
	if c.From == n.cfg.Node {
		return true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.peers[c.From]
	if p == nil || !p.known() {
		return false
	}
	settled := p.lease.State == StateLive || p.lease.State == StateDraining
	return settled && p.lease.Epoch > c.FromEpoch && n.clock.Now().Sub(p.readAt) < 2*n.cfg.TTL
}
