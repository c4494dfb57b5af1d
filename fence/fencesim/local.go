package fencesim

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// localView is one sidecar incarnation's fence.Local over the disk.
type localView struct {
	d   *disk
	inc *incarnation
}

var _ fence.Local = (*localView)(nil)

var errGateClosed = &store.OpError{Op: "put", Kind: store.KindTransient, Code: "fenced", Err: errors.New("gate closed")}

// Quarantine implements fence.Local. With all false it is the fence:
// owner contexts born before it count as cancelled from now on.
func (v *localView) Quarantine(ctx context.Context, all bool) ([]fence.Entry, error) {
	v.inc.enter(ctx)
	if !all {
		v.inc.fenceGen++
		if !v.inc.w.gated {
			v.inc.w.stats.Fences++ // with the gate, counted where it closes
		}
		v.inc.w.tracef(v.d.node.idx, evNote, "fence: quarantine known .pck files")
	}
	// With all, the contract says Mailman is not running: every entry is
	// held, .bak and .psv included. (A sidecar restarted alone, beyond the
	// model, breaks that promise; the runner then loses its file.)
	return v.d.quarantine(all, all), nil
}

// HoldOlder implements fence.Local: an entry is born at its base's time
// on its node's clock, which the node's coordinator reads too.
func (v *localView) HoldOlder(ctx context.Context) (held, inFlight []fence.Entry, err error) {
	v.inc.enter(ctx)
	d := v.d
	since := d.gate.cur.Since
	for e, f := range d.files {
		if e.Born().After(since) {
			continue
		}
		if f.bak {
			inFlight = append(inFlight, e)
			continue
		}
		held = append(held, e)
	}
	sortEntries(held)
	sortEntries(inFlight)
	for _, e := range held {
		d.hold(e, d.files[e].data)
		d.removeFile(e)
		d.node.w.traceEntry(d.node.idx, evDisk, "hold older", e)
	}
	return held, inFlight, nil
}

// Hold implements fence.Local.
func (v *localView) Hold(e fence.Entry) (bool, error) {
	v.inc.enter(nil)
	d := v.d
	f := d.files[e]
	if f == nil || f.bak {
		return false, nil
	}
	d.hold(e, f.data)
	d.removeFile(e)
	d.node.w.traceEntry(d.node.idx, evDisk, "hold", e)
	return true, nil
}

// Held implements fence.Local.
func (v *localView) Held() []fence.Entry {
	v.inc.enter(nil)
	out := make([]fence.Entry, 0, len(v.d.held))
	for e := range v.d.held {
		out = append(out, e)
	}
	sortEntries(out)
	return out
}

// Stage implements fence.Local.
func (v *localView) Stage(e fence.Entry, data []byte) error {
	v.inc.enter(nil)
	d := v.d
	if d.present(e) {
		return nil
	}
	d.or().staged(e, d.node.idx)
	d.hold(e, append([]byte(nil), data...))
	d.node.w.traceEntry(d.node.idx, evDisk, "stage", e)
	return nil
}

// Mirror implements fence.Local. It runs each request in one step (it is
// called under the fence's release lock).
func (v *localView) Mirror(ctx context.Context, e fence.Entry) (string, error) {
	if v.inc.enter(ctx) {
		return "", opErr("put", e.String(), store.KindTransient, "canceled")
	}
	return v.mirror(ctx, e)
}

func (v *localView) mirror(ctx context.Context, e fence.Entry) (string, error) {
	d := v.d
	g := v.inc.n.Gate()
	if !g.Writable {
		return "", errGateClosed
	}
	data, isHeld := d.held[e]
	if f, ok := d.files[e]; ok && !isHeld {
		data = f.data
	} else if !isHeld {
		return "", fmt.Errorf("mirror %s: not on disk", e)
	}
	old := d.keys[e]
	if old != "" {
		if r, ok := d.node.w.layout.ParseMirrorKey(old); ok && r.Epoch >= g.OwnFrom {
			return old, nil
		}
	}
	key := d.node.w.layout.MirrorKey(d.node.id, g.Epoch, e)
	if !isHeld {
		// A held entry is covered before it is restored (Release).
		d.or().covered(d.node, e, "uploaded")
	}
	if _, err := store.PutBytes(ctx, v.inc.stNoYield, key, data, store.Condition{}); err != nil {
		if !slices.Contains(d.maybe[e], key) {
			d.maybe[e] = append(d.maybe[e], key)
		}
		return "", err
	}
	// Older copies (the confirmed one, and any whose answer was lost) go
	// once the new one is durable; the mirror loop deletes them.
	for _, k := range append([]string{old}, d.maybe[e]...) {
		if k != "" && k != key {
			d.gone = append(d.gone, k)
		}
	}
	delete(d.maybe, e)
	d.keys[e] = key
	return key, nil
}

// Release implements fence.Local.
func (v *localView) Release(ctx context.Context, e fence.Entry) error {
	if v.inc.enter(ctx) {
		return opErr("release", e.String(), store.KindTransient, "canceled")
	}
	d := v.d
	_, inQueue := d.files[e]
	data, isHeld := d.held[e]
	if inQueue && !isHeld {
		// Already in the queue directory (say in flight as .bak after a
		// takeover of this node's own old epoch): the caller deletes the
		// old copy next, so the entry must be mirrored at this epoch.
		_, err := v.mirror(ctx, e)
		return err
	}
	if !isHeld {
		return fmt.Errorf("release %s: not held", e)
	}
	if _, err := v.mirror(ctx, e); err != nil {
		return err
	}
	if v.inc.cancelled(ctx) {
		return opErr("release", e.String(), store.KindTransient, "canceled")
	}
	// The gate's cutoff covers the birth of every entry restored here.
	if err := d.gate.cover(e.Born()); err != nil {
		return opErr("release", e.String(), store.KindTransient, "gate not written")
	}
	d.or().covered(d.node, e, "restored")
	d.or().released(e, d.node.idx)
	d.putFile(e, &file{data: data})
	d.unhold(e)
	d.node.w.traceEntry(d.node.idx, evDisk, "release", e)
	return nil
}

// Drop implements fence.Local.
func (v *localView) Drop(e fence.Entry) error {
	v.inc.enter(nil)
	d := v.d
	if _, ok := d.held[e]; ok {
		d.node.w.traceEntry(d.node.idx, evDisk, "drop", e)
	}
	d.unhold(e)
	delete(d.keys, e)
	delete(d.maybe, e)
	return nil
}

// Has implements fence.Local.
func (v *localView) Has(e fence.Entry) bool {
	v.inc.enter(nil)
	return v.d.present(e)
}

// Counts implements fence.Local.
func (v *localView) Counts() fence.Counts {
	v.inc.enter(nil)
	var c fence.Counts
	for e, f := range v.d.files {
		if f.bak {
			c.Bak++
		} else if e.Kind == fence.KindPck {
			c.Pck++
		}
		if !v.d.known(e) {
			c.Unmirrored++
		}
	}
	c.Held = len(v.d.held)
	return c
}
