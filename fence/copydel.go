package fence

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// copyDeleteBatch is the most old copies deleted by one DeleteMany.
const copyDeleteBatch = 500

// copyDeleter deletes the old copies of restored entries in batches: a
// takeover round restores thousands of entries, and one DELETE each was a
// quarter of its requests. A copy is only added once its entry is durable
// and released locally (G1), so a delay costs nothing but the copy's life
// in the store; a copy that outlives its batch (the delete failed, or the
// node fenced first) is found by the next round or claims pass, which
// knows the entry was restored (secondCopy, claimStep) and deletes it.
//
// The delay is bounded: a batch goes once it is full, or once its oldest
// copy waited maxAge, checked on every add, and flush sends the rest.
type copyDeleter struct {
	n      *Node
	maxAge time.Duration

	mu    sync.Mutex
	keys  []oldCopy
	first time.Time
}

// oldCopy is a copy to delete and the entry it was restored as.
type oldCopy struct {
	entry Entry
	key   string
}

// newCopyDeleter returns a deleter whose batches wait at most a quarter
// TTL (and never more than a second) for more copies.
func (n *Node) newCopyDeleter() *copyDeleter {
	age := n.cfg.TTL / 4
	if age > time.Second {
		age = time.Second
	}
	return &copyDeleter{n: n, maxAge: age}
}

// add queues key, the old copy of restored entry e, for deletion and
// sends the batch if it is due.
func (d *copyDeleter) add(ctx context.Context, e Entry, key string) error {
	d.mu.Lock()
	now := d.n.clock.Now()
	if len(d.keys) == 0 {
		d.first = now
	}
	d.keys = append(d.keys, oldCopy{entry: e, key: key})
	var batch []oldCopy
	if len(d.keys) >= copyDeleteBatch || now.Sub(d.first) >= d.maxAge {
		batch, d.keys = d.keys, nil
	}
	d.mu.Unlock()
	return d.send(ctx, batch)
}

// flush sends whatever is queued.
func (d *copyDeleter) flush(ctx context.Context) error {
	d.mu.Lock()
	batch := d.keys
	d.keys = nil
	d.mu.Unlock()
	return d.send(ctx, batch)
}

// send deletes batch and records, in the claim cache, that the claims'
// copies are gone: the claims pass then neither deletes them again nor
// checks for them.
func (d *copyDeleter) send(ctx context.Context, batch []oldCopy) error {
	if len(batch) == 0 {
		return nil
	}
	keys := make([]string, len(batch))
	for i, c := range batch {
		keys[i] = c.key
	}
	err := retry(ctx, d.n.clock, time.Second, func() error { return d.n.st.DeleteMany(ctx, keys) })
	if err != nil {
		d.n.log.Warn("old copies of restored entries not deleted: the next round deletes them", "keys", len(keys), "first", keys[0], "err", err)
		return fmt.Errorf("delete old copies: %w", err)
	}
	n := d.n
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range batch {
		key := n.cfg.Layout.ClaimKey(c.entry)
		cc, ok := n.claimCache[key]
		if ok && n.cfg.Layout.MirrorKey(cc.claim.From, cc.claim.FromEpoch, c.entry) == c.key {
			cc.srcGone = true
			n.claimCache[key] = cc
		}
	}
	return nil
}
