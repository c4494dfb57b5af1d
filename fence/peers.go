package fence

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

// peer is what this node knows of another node's lease.
type peer struct {
	node string
	// etag is the lease's ETag in the last listing.
	etag string
	// silence is how long etag has not changed, counted on this node's
	// clock only across its own successful scans.
	silence time.Duration
	// lease is the last body known, read or predicted, with the ETag it
	// had; readAt is when it was last read (a GET).
	lease     Lease
	leaseETag string
	readAt    time.Time
	// emptyUpTo: the namespace is known empty up to this epoch.
	emptyUpTo uint64
}

func (p *peer) known() bool { return p.leaseETag != "" }

func (p *peer) dead() bool { return p.known() && p.lease.State == StateDead }

// PeerView is a snapshot of a peer for status output and tests.
type PeerView struct {
	// Node is the peer's id.
	Node string
	// Lease is the last lease body read.
	Lease Lease
	// Silence is how long its lease has not changed, by this node's clock.
	Silence time.Duration
}

// Peers returns what this node knows of its peers, sorted by id.
func (n *Node) Peers() []PeerView {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]PeerView, 0, len(n.peers))
	for _, p := range n.peers {
		out = append(out, PeerView{Node: p.node, Lease: p.lease, Silence: p.silence})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Scan lists the leases once, updates each peer's silence and declares
// dead every peer silent for TTL + grace. Silence only accrues between
// this node's own successful scans, while its own lease renewals succeed,
// and by at most two scan intervals per gap: when the store is away (or
// read-only) for everyone, nobody's silence is evidence.
func (n *Node) Scan(ctx context.Context) error {
	type listed struct{ node, etag string }
	var leases []listed
	err := n.st.List(ctx, n.cfg.Layout.LeasePrefix(), func(in store.Info) error {
		if node, ok := n.cfg.Layout.ParseLeaseKey(in.Key); ok && node != n.cfg.Node {
			leases = append(leases, listed{node, in.ETag})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list leases: %w", err)
	}
	now := n.clock.Now()
	n.mu.Lock()
	var gap time.Duration
	// Silence is evidence only while this node's own writes work: when
	// the store answers reads but refuses writes (a MinIO cluster that
	// lost write quorum), every lease goes silent at once.
	writing := (n.state == StateLive || n.state == StateDraining) && now.Sub(n.renewedAt) <= 2*n.renewEvery()
	if !n.lastScan.IsZero() && writing {
		gap = min(now.Sub(n.lastScan), 2*n.renewEvery())
	}
	n.lastScan = now
	seen := make(map[string]bool, len(leases))
	var toRead []*peer
	for _, l := range leases {
		seen[l.node] = true
		p := n.peers[l.node]
		if p == nil {
			p = &peer{node: l.node}
			n.peers[l.node] = p
		}
		if p.etag != l.etag {
			p.etag, p.silence = l.etag, 0
		} else {
			p.silence += gap
		}
		stale := p.leaseETag != p.etag
		if stale && p.known() && n.predictRenewalLocked(p) {
			stale = false
		}
		if stale {
			// Something other than a plain renewal: a new peer, a new
			// epoch, a state change. Claims may have come with it.
			n.claimsMaybe = true
		}
		// It is read at once, unless it was read less than a TTL ago: a
		// peer whose every renewal defeats the prediction (an older
		// version, a store whose ETags are not MD5s) is read once a TTL.
		if stale && (!p.known() || now.Sub(p.readAt) >= n.cfg.TTL || p.silence >= n.deadAfter()) {
			toRead = append(toRead, p)
		}
	}
	for node := range n.peers {
		if !seen[node] {
			delete(n.peers, node)
			n.claimsMaybe = true
		}
	}
	n.mu.Unlock()

	for _, p := range toRead {
		n.readPeer(ctx, p)
	}
	n.mu.Lock()
	var dying []*peer
	mayJudge := n.state == StateLive || n.state == StateDraining
	for _, p := range n.peers {
		if mayJudge && p.known() && p.leaseETag == p.etag && !p.dead() && p.silence >= n.deadAfter() {
			dying = append(dying, p)
		}
	}
	n.countPeersLocked()
	n.mu.Unlock()
	// Map order is random: act in node order, so that a run is a
	// function of its inputs (the simulator replays seeds).
	sort.Slice(dying, func(i, j int) bool { return dying[i].node < dying[j].node })
	for _, p := range dying {
		n.markDead(ctx, p)
	}
	return nil
}

func (n *Node) deadAfter() time.Duration { return n.cfg.TTL + n.cfg.Grace }

// UntilPeerDeadline is the time from now until the first peer that went
// silent since the last scan reaches TTL + grace of silence, the moment a
// scan may declare it dead; ok is false when no such moment lies ahead.
// Silence only accrues while this node's own renewals work (see Scan), so
// there is none while they fail; and a deadline already passed (the last
// scans failed, or the peer's lease could not be read) is left to the
// normal scan interval, so that a failing store is not scanned in a loop.
func (n *Node) UntilPeerDeadline() (time.Duration, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.clock.Now()
	judging := (n.state == StateLive || n.state == StateDraining) && !n.lastScan.IsZero() &&
		now.Sub(n.renewedAt) <= 2*n.renewEvery()
	if !judging {
		return 0, false
	}
	since := now.Sub(n.lastScan)
	var best time.Duration
	ok := false
	for _, p := range n.peers {
		if !p.known() || p.dead() || p.silence <= 0 {
			continue
		}
		left := n.deadAfter() - p.silence - since
		if left > 0 && (!ok || left < best) {
			best, ok = left, true
		}
	}
	return best, ok
}

// predictRenewals is how many renewals past the last lease body known of a
// peer a listed ETag is looked for in.
const predictRenewals = 16

// predictRenewalLocked recognises p's listed ETag as a plain renewal of
// the lease body this node knows: the same body with Seq up by at most
// predictRenewals (renewals change nothing else, see Renew; ETags are the
// body's MD5 on every store). It then takes that body as read, without a
// GET, and reports true. Any other change, or a store whose ETags are not
// MD5s, needs a read.
func (n *Node) predictRenewalLocked(p *peer) bool {
	next := p.lease
	for range predictRenewals {
		next.Seq++
		if store.ETagOf(encode(next)) == p.etag {
			p.lease, p.leaseETag = next, p.etag
			n.m.peerReads.WithLabelValues("predicted").Inc()
			return true
		}
	}
	return false
}

func (n *Node) readPeer(ctx context.Context, p *peer) {
	data, info, err := store.GetBytes(ctx, n.st, n.cfg.Layout.LeaseKey(p.node))
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return
		}
		n.mu.Lock()
		silence := p.silence
		n.mu.Unlock()
		if silence >= n.deadAfter() {
			// The peer would be declared dead: a lease the store cannot
			// serve holds its takeover back (seen on a MinIO cluster
			// with a server down), and an operator should know why.
			n.log.Warn("peer silent past TTL + grace, but its lease cannot be read: takeover waits", "peer", p.node, "silence", silence, "err", err)
			return
		}
		n.log.Debug("read peer lease", "peer", p.node, "err", err)
		return
	}
	l, err := DecodeLease(data)
	if err != nil {
		n.log.Warn("peer lease unreadable", "peer", p.node, "err", err)
		return
	}
	n.m.peerReads.WithLabelValues("read").Inc()
	n.mu.Lock()
	if info.ETag != p.etag {
		// It changed again since the listing: that is a sign of life.
		p.etag, p.silence = info.ETag, 0
	}
	if l.Epoch != p.lease.Epoch || l.DeadEpoch != p.lease.DeadEpoch {
		p.emptyUpTo = min(p.emptyUpTo, l.DeadEpoch)
	}
	p.lease, p.leaseETag, p.readAt = l, info.ETag, n.clock.Now()
	n.mu.Unlock()
}

// markDead declares p dead by a conditional write on the exact lease
// version this node watched go silent. If p renewed meanwhile the write
// loses and p lives on; if it wins, p's next renewal loses and p fences.
func (n *Node) markDead(ctx context.Context, p *peer) {
	n.mu.Lock()
	next, etag := p.lease, p.leaseETag
	silence := p.silence
	n.mu.Unlock()
	next.State = StateDead
	next.DeadEpoch = max(next.DeadEpoch, next.Epoch)
	next.DeadBy = n.cfg.Node
	next.Seq++
	next.Wall = time.Now().UTC()
	next.Nonce = Nonce(n.rnd)
	put, err := store.PutBytes(ctx, n.st, n.cfg.Layout.LeaseKey(p.node), encode(next), store.Condition{IfMatch: etag})
	if err != nil {
		if errors.Is(err, store.ErrPrecondition) {
			return // it renewed: the next scan sees that
		}
		// The store refused a write to the peer's lease key, or did not
		// answer it: the peer's own renewals go to that key, so its
		// silence may be the store's doing (a MinIO cluster keeps keys
		// that had writes in flight when it lost quorum locked for a
		// minute or more after it is back). Its silence starts again, so
		// that once the key takes writes the peer has TTL + grace to
		// renew before it can be declared dead.
		n.mu.Lock()
		p.silence = 0
		n.mu.Unlock()
		n.m.deadMarkErrs.WithLabelValues(store.CodeOf(err)).Inc()
		n.log.Warn("declare peer dead: write refused; its silence starts again", "peer", p.node, "silence", silence, "code", store.CodeOf(err), "err", err)
		return
	}
	n.mu.Lock()
	p.lease, p.leaseETag, p.etag, p.readAt = next, put.ETag, put.ETag, n.clock.Now()
	n.mu.Unlock()
	n.m.deadMarks.Inc()
	n.log.Warn("declared peer dead", "peer", p.node, "epoch", next.Epoch, "silence", silence)
}

// liveSet returns the nodes that share takeovers: this node and every peer
// whose lease is moving and which is neither dead nor draining.
func (n *Node) liveSetLocked() []string {
	set := []string{n.cfg.Node}
	for _, p := range n.peers {
		if p.known() && !p.dead() && p.lease.State != StateDraining && p.silence < n.deadAfter() {
			set = append(set, p.node)
		}
	}
	sort.Strings(set)
	return set
}

func (n *Node) anyDrainingPeerLocked() bool {
	for _, p := range n.peers {
		if p.lease.State == StateDraining && !p.dead() {
			return true
		}
	}
	return false
}

func (n *Node) countPeersLocked() {
	counts := map[string]int{StateLive: 0, StateSettling: 0, StateDraining: 0, StateDead: 0}
	for _, p := range n.peers {
		counts[p.lease.State]++
	}
	for s, c := range counts {
		n.m.peers.WithLabelValues(s).Set(float64(c))
	}
}

// horizonLocked returns the highest epoch of node that counts as dead:
// claims made at or below it may be taken over. A node this node has not
// read a lease of counts as alive: it may have joined since the last scan.
func (n *Node) horizonLocked(node string) uint64 {
	if node == n.cfg.Node {
		return n.lease.DeadEpoch
	}
	p := n.peers[node]
	if p == nil || !p.known() {
		return 0
	}
	return p.lease.DeadEpoch
}

// pick returns the node among set that takes e: rendezvous hashing, so
// that survivors agree without talking and each takes about its share.
func pick(e Entry, set []string) string {
	var best string
	var bestScore uint64
	for _, node := range set {
		h := fnv.New64a()
		h.Write([]byte(node))
		h.Write([]byte{0})
		h.Write([]byte(e.Queue))
		h.Write([]byte{0})
		h.Write([]byte(e.Base))
		score := mix(h.Sum64())
		if best == "" || score > bestScore {
			best, bestScore = node, score
		}
	}
	return best
}

// mix is a 64-bit finalizer that spreads FNV's output.
func mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
