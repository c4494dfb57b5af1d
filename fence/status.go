package fence

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

// Orphans filters copies in this node's namespace whose entry is gone
// locally down to those the node may delete: a copy whose entry is
// claimed by another node (taken over, or handed off by a drain) is that
// node's to remove. It reads every claim once.
func (n *Node) Orphans(ctx context.Context, refs []MirrorRef) ([]MirrorRef, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	claimed := make(map[Entry]bool)
	err := n.st.List(ctx, n.cfg.Layout.ClaimPrefix(), func(in store.Info) error {
		if e, ok := n.cfg.Layout.ParseClaimKey(in.Key); ok {
			claimed[e] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list claims: %w", err)
	}
	var out []MirrorRef
	for _, r := range refs {
		if !claimed[r.Entry] {
			out = append(out, r)
			continue
		}
		c, _, found, err := n.readClaim(ctx, r.Entry)
		if err != nil {
			return nil, err
		}
		if !found || c.Owner == n.cfg.Node {
			out = append(out, r)
		}
	}
	return out, nil
}

// ClusterStatus is what the store says about the cluster.
type ClusterStatus struct {
	// Nodes lists every node with a lease or a namespace, by id.
	Nodes []NodeStatus `json:"nodes"`
	// Claims counts claim objects (transfers in progress and tombstones).
	Claims int `json:"claims"`
	// Taken is when the status was read (the reader's wall clock).
	Taken time.Time `json:"taken"`
}

// NodeStatus is one node's lease and the entries in its namespace.
type NodeStatus struct {
	// Node is the node id.
	Node string `json:"node"`
	// Lease is the node's lease body; nil if it has none.
	Lease *Lease `json:"lease,omitempty"`
	// LeaseAge is the time since the lease was last written, by the
	// store's clock against the reader's (for humans; no decision uses
	// it), to the second on S3.
	LeaseAge time.Duration `json:"lease_age_ns"`
	// State is live, settling, draining, dead, or expired when the lease
	// is older than TTL + grace by wall clock.
	State string `json:"state"`
	// Entries counts copies in the node's namespace.
	Entries int `json:"entries"`
	// Queues breaks the entries down by queue.
	Queues []QueueStatus `json:"queues"`
}

// QueueStatus is one queue of one node's namespace.
type QueueStatus struct {
	// Queue is the queue name.
	Queue string `json:"queue"`
	// Entries counts copies.
	Entries int `json:"entries"`
	// Oldest is the enqueue time of the oldest entry.
	Oldest time.Time `json:"oldest"`
	// Bytes sums the copies' sizes.
	Bytes int64 `json:"bytes"`
}

// ReadStatus reads leases, namespaces and claims under layout. It lists
// every key once: O(objects).
func ReadStatus(ctx context.Context, st store.Store, layout Layout, grace time.Duration) (ClusterStatus, error) {
	now := time.Now()
	nodes := make(map[string]*NodeStatus)
	get := func(id string) *NodeStatus {
		if nodes[id] == nil {
			nodes[id] = &NodeStatus{Node: id, State: "no lease"}
		}
		return nodes[id]
	}
	err := st.List(ctx, layout.LeasePrefix(), func(in store.Info) error {
		id, ok := layout.ParseLeaseKey(in.Key)
		if !ok {
			return nil
		}
		data, info, err := store.GetBytes(ctx, st, in.Key)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		l, err := DecodeLease(data)
		if err != nil {
			return nil
		}
		ns := get(id)
		ns.Lease = &l
		// Renewals keep Wall (the epoch's start): the store's time of the
		// last write says how old the lease is.
		written := info.Modified
		if written.IsZero() {
			written = l.Wall
		}
		ns.LeaseAge = now.Sub(written)
		ns.State = l.State
		if l.State != StateDead && ns.LeaseAge > time.Duration(l.TTLMillis)*time.Millisecond+grace {
			ns.State = "expired"
		}
		return nil
	})
	if err != nil {
		return ClusterStatus{}, fmt.Errorf("list leases: %w", err)
	}
	queues := make(map[string]map[string]*QueueStatus)
	err = st.List(ctx, layout.Prefix()+"q/", func(in store.Info) error {
		r, ok := layout.ParseMirrorKey(in.Key)
		if !ok {
			return nil
		}
		ns := get(r.Node)
		ns.Entries++
		if queues[r.Node] == nil {
			queues[r.Node] = make(map[string]*QueueStatus)
		}
		q := queues[r.Node][r.Entry.Queue]
		if q == nil {
			q = &QueueStatus{Queue: r.Entry.Queue}
			queues[r.Node][r.Entry.Queue] = q
		}
		q.Entries++
		q.Bytes += in.Size
		t := BaseTime(r.Entry.Base)
		when := time.Unix(int64(t), int64((t-float64(int64(t)))*1e9)).UTC()
		if q.Oldest.IsZero() || when.Before(q.Oldest) {
			q.Oldest = when
		}
		return nil
	})
	if err != nil {
		return ClusterStatus{}, fmt.Errorf("list namespaces: %w", err)
	}
	claims := 0
	err = st.List(ctx, layout.ClaimPrefix(), func(store.Info) error { claims++; return nil })
	if err != nil {
		return ClusterStatus{}, fmt.Errorf("list claims: %w", err)
	}
	out := ClusterStatus{Claims: claims, Taken: now.UTC()}
	for id, ns := range nodes {
		for _, q := range queues[id] {
			ns.Queues = append(ns.Queues, *q)
		}
		sort.Slice(ns.Queues, func(i, j int) bool { return ns.Queues[i].Oldest.Before(ns.Queues[j].Oldest) })
		out.Nodes = append(out.Nodes, *ns)
	}
	sort.Slice(out.Nodes, func(i, j int) bool { return out.Nodes[i].Node < out.Nodes[j].Node })
	return out, nil
}
