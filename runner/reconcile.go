package runner

import (
	"context"
	"fmt"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// storedCopy is one copy of an entry found in the node's namespace.
type storedCopy struct {
	ref  fence.MirrorRef
	key  string
	size int64
}

// Reconcile rescans the queue directories and the hold area, lists the
// node's namespace in the store (only epochs >= the gate's OwnFrom), and
// brings the store in line: local entries whose copy is missing (or of
// another size) are uploaded; copies whose entry is gone locally are
// deleted, but only those that orphans returns (nil: all), and only after
// every upload queued before them is durable. Listing failures are
// retried with backoff until ctx ends. Uploads only start after the first
// Reconcile, which makes the mirror Ready.
func (m *Mirror) Reconcile(ctx context.Context, orphans func(context.Context, []fence.MirrorRef) ([]fence.MirrorRef, error)) error {
	if err := m.scanHold(); err != nil {
		return fmt.Errorf("reconcile: list hold area: %w", err)
	}
	m.rescan("reconcile")
	g := m.gate()
	copies, err := m.listOwn(ctx, g)
	if err != nil {
		return err
	}

	m.mu.Lock()
	m.reconciled = true
	uploads := m.ups.next
	var candidates []fence.MirrorRef
	for e, st := range m.index {
		if st.where != locNone {
			m.reconcileEntryLocked(st, copies[e])
		}
	}
	for e, cs := range copies {
		st := m.index[e]
		if st != nil && st.where != locNone {
			continue // reconcileEntryLocked kept one copy and cleans the rest
		}
		current := m.cfg.Layout.MirrorKey(m.cfg.Node, g.Epoch, e)
		for _, c := range cs {
			// A finished entry whose delete is queued, or whose upload
			// is running, has that one copy in hand; any other copy
			// (say of an epoch before a settle re-mirrored it) is an
			// orphan like the copies of entries this node never saw.
			if st != nil && (st.delQueued && c.key == st.durable || st.up != nil && (c.key == st.durable || c.key == current)) {
				continue
			}
			candidates = append(candidates, c.ref)
		}
	}
	uploads = m.ups.next - uploads
	m.mu.Unlock()

	refs := candidates
	if orphans != nil && len(candidates) > 0 {
		refs, err = orphans(ctx, candidates)
		if err != nil {
			return fmt.Errorf("reconcile: filter orphans: %w", err)
		}
	}
	m.mu.Lock()
	barrier := m.ups.next
	deletes := 0
	for _, ref := range refs {
		if ref.Node != m.cfg.Node || ref.Epoch < g.OwnFrom {
			continue
		}
		if st := m.index[ref.Entry]; st != nil && st.where != locNone {
			continue
		}
		m.queueDeleteLocked(delFinished, m.cfg.Layout.MirrorKey(m.cfg.Node, ref.Epoch, ref.Entry), ref.Entry, barrier)
		deletes++
	}
	local := 0
	for _, st := range m.index {
		if st.where != locNone {
			local++
		}
	}
	m.mu.Unlock()
	m.ready.Store(true)
	m.log.Info("reconciled", "epoch", g.Epoch, "own_from", g.OwnFrom, "local", local,
		"stored", len(copies), "uploads", uploads, "orphans", len(candidates), "deletes", deletes)
	return nil
}

// listOwn lists the node's copies at epochs >= g.OwnFrom by entry.
func (m *Mirror) listOwn(ctx context.Context, g fence.Gate) (map[fence.Entry][]storedCopy, error) {
	prefix := m.cfg.Layout.NodePrefix(m.cfg.Node)
	bo := backoff{r: m.rand}
	for {
		copies := make(map[fence.Entry][]storedCopy)
		err := m.st.List(ctx, prefix, func(in store.Info) error {
			ref, ok := m.cfg.Layout.ParseMirrorKey(in.Key)
			if !ok || ref.Node != m.cfg.Node {
				m.noteOnce(reasonBadName, "store", in.Key, nil)
				return nil
			}
			if ref.Epoch >= g.OwnFrom {
				copies[ref.Entry] = append(copies[ref.Entry], storedCopy{ref: ref, key: in.Key, size: in.Size})
			}
			return nil
		})
		if err == nil {
			return copies, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("reconcile: list %s: %w", prefix, ctx.Err())
		}
		m.log.Warn("reconcile: listing the store failed; retrying", "prefix", prefix, "code", store.CodeOf(err), "err", err)
		if !m.sleep(ctx, bo.next()) {
			return nil, fmt.Errorf("reconcile: list %s: %w", prefix, ctx.Err())
		}
	}
}

// reconcileEntryLocked settles a local entry against its stored copies.
func (m *Mirror) reconcileEntryLocked(st *entryState, cs []storedCopy) {
	if st.up != nil {
		return // the running upload settles it
	}
	var best, newest *storedCopy
	for i := range cs {
		c := &cs[i]
		if newest == nil || c.ref.Epoch > newest.ref.Epoch {
			newest = c
		}
		if c.size == st.seen.size && (best == nil || c.ref.Epoch > best.ref.Epoch) {
			best = c
		}
	}
	switch {
	case best != nil:
		if st.durable != best.key || st.durVer == (version{}) {
			st.durVer = st.seen
		}
		st.durable, st.durEpoch, st.delQueued = best.key, best.ref.Epoch, false
	case newest != nil:
		// A copy of other contents: replace it.
		st.durable, st.durEpoch, st.durVer = newest.key, newest.ref.Epoch, version{}
		m.requestUploadLocked(st)
	default:
		st.durable, st.durVer = "", version{}
		m.requestUploadLocked(st)
	}
	for _, c := range cs {
		if c.key != st.durable {
			m.queueDeleteLocked(delCleanup, c.key, st.e, 0)
		}
	}
}
