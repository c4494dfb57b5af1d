package fence

import (
	"encoding/json"
	"fmt"
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
	// TTLMillis is the holder's lease TTL, for status displays.
	TTLMillis int64 `json:"ttl_ms"`
	// Wall is the writer's wall clock, for humans only: no decision uses it.
	Wall time.Time `json:"wall"`
	// Nonce makes every lease body, and so its ETag, unique.
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
	// Nonce makes every claim body, and so its ETag, unique.
	Nonce string `json:"nonce"`
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
	return c, nil
}
