package fence

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"
)

// Lease states.
const (
	// StateLive is a node that renews its lease and owns its namespace.
	StateLive = "live"
	// StateSettling is a node that came back under a new epoch and is
	// settling the entries it held while fenced.
	StateSettling = "settling"
	// StateDraining is a node handing its backlog to its peers.
	StateDraining = "draining"
	// StateDead is a lease a peer declared dead; only a new epoch of the
	// node revives it.
	StateDead = "dead"
	// StateFenced is a node's own view of itself while it cannot renew;
	// it is never written to the store.
	StateFenced = "fenced"
	// StateStarting is a node that has not yet acquired its lease.
	StateStarting = "starting"
)

// Lease is the body of a node's lease object. Peers judge liveness only by
// its ETag changing; the fields say what the holder is doing.
type Lease struct {
	// Node is the holder's id.
	Node string `json:"node"`
	// Epoch increases every time the node starts or comes back from a
	// fence.
	Epoch uint64 `json:"epoch"`
	// Seq increases with every renewal within an epoch.
	Seq uint64 `json:"seq"`
	// State is live, settling, draining or dead.
	State string `json:"state"`
	// DeadEpoch is the highest epoch of this node ever declared dead (by a
	// peer, or by the node itself after losing its disk). Copies in its
	// namespace at epochs up to DeadEpoch belong to a takeover.
	DeadEpoch uint64 `json:"dead_epoch"`
	// DeadBy names the peer that declared the node dead.
	DeadBy string `json:"dead_by,omitempty"`
	// Unsettled says the node still holds entries from before its current
	// epoch that it could not settle yet: claims that keep it from
	// restoring them must stay.
	Unsettled bool `json:"unsettled,omitempty"`
	// Drained says the node finished a drain: it holds nothing, so no
	// claim needs to stay for its sake until it starts a new epoch.
	Drained bool `json:"drained,omitempty"`
	// Handoffs counts the entries the node handed to peers in this epoch.
	// A peer that sees it change knows that claims naming it may exist,
	// also when the drain that wrote them was cancelled before the peer
	// saw the node draining (the body then differs from a plain renewal).
	Handoffs uint64 `json:"handoffs,omitempty"`
	// TTLMillis is the holder's lease TTL, for status displays.
	TTLMillis int64 `json:"ttl_ms"`
	// Wall is the writer's wall clock when the epoch began (or when a
	// peer declared it dead), for humans only: no decision uses it.
	// Renewals keep it, so that they change the body only by Seq.
	Wall time.Time `json:"wall"`
	// Nonce is random for each epoch (and each declaration of death): it
	// tells this process's lease writes from another's with the same node
	// id. With Epoch and Seq it makes every lease body, and so its ETag,
	// unique.
	Nonce string `json:"nonce"`
}

// Claim is the body of an entry's claim object: written, conditionally,
// on every change of owner.
type Claim struct {
	// Owner is the node that owns the entry now.
	Owner string `json:"owner"`
	// Epoch is the owner's epoch when it claimed the entry.
	Epoch uint64 `json:"epoch"`
	// From is the node whose namespace held the copy that was claimed.
	From string `json:"from"`
	// FromEpoch is the epoch of that copy's namespace.
	FromEpoch uint64 `json:"from_epoch"`
	// Token strictly increases with every change of owner.
	Token uint64 `json:"token"`
	// Transfers counts takeovers of the entry after a node's death.
	Transfers int `json:"transfers"`
	// Handoff marks a transfer made by a draining node, not a death.
	Handoff bool `json:"handoff,omitempty"`
	// Past lists the earlier owners and sources of the entry, each with
	// the highest epoch it held the entry at. With From, they are the
	// nodes that may still hold a stale copy: the claim, a tombstone once
	// the entry is finished, stays until each of them has settled.
	Past []Holder `json:"past,omitempty"`
	// Nonce makes every claim body, and so its ETag, unique.
	Nonce string `json:"nonce"`
}

// Holder is a node and the epoch at which it held an entry.
type Holder struct {
	// Node is the holder's id.
	Node string `json:"node"`
	// Epoch is the highest epoch at which it held the entry.
	Epoch uint64 `json:"epoch"`
}

// successor is the claim that moves c's entry to owner at epoch, taken
// from the copy of from at fromEpoch: the token goes up and the previous
// owner and source join the past holders.
func (c Claim) successor(owner string, epoch uint64, from string, fromEpoch uint64) Claim {
	past := withHolder(append([]Holder(nil), c.Past...), c.From, c.FromEpoch)
	past = withHolder(past, c.Owner, c.Epoch)
	return Claim{Owner: owner, Epoch: epoch, From: from, FromEpoch: fromEpoch,
		Token: c.Token + 1, Transfers: c.Transfers, Past: past}
}

// holders lists every node that may hold a stale copy of c's entry.
func (c Claim) holders() []Holder {
	return withHolder(append([]Holder(nil), c.Past...), c.From, c.FromEpoch)
}

// withHolder adds node at epoch to past, keeping one row per node with
// its highest epoch, sorted by node.
func withHolder(past []Holder, node string, epoch uint64) []Holder {
	if node == "" {
		return past
	}
	for i := range past {
		if past[i].Node == node {
			past[i].Epoch = max(past[i].Epoch, epoch)
			return past
		}
	}
	past = append(past, Holder{Node: node, Epoch: epoch})
	sort.Slice(past, func(i, j int) bool { return past[i].Node < past[j].Node })
	return past
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err))
	}
	return b
}

// DecodeLease parses a lease body.
func DecodeLease(data []byte) (Lease, error) {
	var l Lease
	if err := json.Unmarshal(data, &l); err != nil {
		return Lease{}, fmt.Errorf("decode lease: %w", err)
	}
	if !ValidName(l.Node) {
		return Lease{}, fmt.Errorf("decode lease: invalid node %q", l.Node)
	}
	return l, nil
}

// DecodeClaim parses a claim body.
func DecodeClaim(data []byte) (Claim, error) {
	var c Claim
	if err := json.Unmarshal(data, &c); err != nil {
		return Claim{}, fmt.Errorf("decode claim: %w", err)
	}
	if !ValidName(c.Owner) || !ValidName(c.From) {
		return Claim{}, fmt.Errorf("decode claim: invalid owner %q or from %q", c.Owner, c.From)
	}
	for _, h := range c.Past {
		if !ValidName(h.Node) {
			return Claim{}, fmt.Errorf("decode claim: invalid past holder %q", h.Node)
		}
	}
	return c, nil
}
