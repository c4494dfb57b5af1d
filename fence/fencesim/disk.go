package fencesim

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// disk is one node's queue directories, hold area and mirror index. It
// outlives sidecar incarnations (unless wiped). Mailman's runners act on
// it directly; each sidecar incarnation sees it through a localView,
// which implements fence.Local.
//
// fencetest.Local quarantines only entries whose upload has finished; the
// simulator's uploads take time, so this model also honours the
// contract's "or with an upload in flight" clause, which the real runner
// must too.
type disk struct {
	node  *simNode
	files map[fence.Entry]*file
	held  map[fence.Entry][]byte
	// keys: the entry's confirmed copy; maybe: a copy the store may hold
	// (an upload in flight or one whose answer was lost).
	keys     map[fence.Entry]string
	maybe    map[fence.Entry]string
	inflight map[fence.Entry]bool
	// finished: finished locally while an upload was in flight.
	finished map[fence.Entry]bool
	gone     []string
}

type file struct {
	data     []byte
	bak      bool
	bakCount int
}

func newDisk(n *simNode) *disk {
	d := &disk{node: n}
	d.reset()
	return d
}

func (d *disk) reset() {
	d.files = make(map[fence.Entry]*file)
	d.held = make(map[fence.Entry][]byte)
	d.keys = make(map[fence.Entry]string)
	d.maybe = make(map[fence.Entry]string)
	d.inflight = make(map[fence.Entry]bool)
	d.finished = make(map[fence.Entry]bool)
	d.gone = nil
}

func sortEntries(es []fence.Entry) {
	sort.Slice(es, func(i, j int) bool {
		if es[i].Queue != es[j].Queue {
			return es[i].Queue < es[j].Queue
		}
		if es[i].Base != es[j].Base {
			return es[i].Base < es[j].Base
		}
		return es[i].Kind < es[j].Kind
	})
}

func (d *disk) or() *oracle { return d.node.w.or }

func (d *disk) present(e fence.Entry) bool {
	_, f := d.files[e]
	_, h := d.held[e]
	return f || h
}

func (d *disk) known(e fence.Entry) bool { return d.keys[e] != "" || d.maybe[e] != "" }

// putFile adds or replaces e in the queue directory and tells the oracle.
func (d *disk) putFile(e fence.Entry, f *file) {
	was := d.present(e)
	d.files[e] = f
	if !was {
		d.or().onDisk(e, d.node.idx, true)
	}
	d.or().visible(e, d.node.idx, e.Kind == fence.KindPck && !f.bak)
}

func (d *disk) removeFile(e fence.Entry) {
	if _, ok := d.files[e]; !ok {
		return
	}
	delete(d.files, e)
	d.or().visible(e, d.node.idx, false)
	if !d.present(e) {
		d.or().onDisk(e, d.node.idx, false)
	}
}

func (d *disk) hold(e fence.Entry, data []byte) {
	was := d.present(e)
	d.held[e] = data
	if !was {
		d.or().onDisk(e, d.node.idx, true)
	}
}

func (d *disk) unhold(e fence.Entry) {
	if _, ok := d.held[e]; !ok {
		return
	}
	delete(d.held, e)
	if !d.present(e) {
		d.or().onDisk(e, d.node.idx, false)
	}
}

// quarantine moves Mailman-visible .pck files (all, or the known ones)
// into the hold area.
func (d *disk) quarantine(all bool) []fence.Entry {
	var moved []fence.Entry
	for e, f := range d.files {
		if e.Kind != fence.KindPck || f.bak || (!all && !d.known(e)) {
			continue
		}
		moved = append(moved, e)
	}
	sortEntries(moved)
	for _, e := range moved {
		f := d.files[e]
		d.hold(e, f.data)
		d.removeFile(e)
		d.node.w.traceEntry(d.node.idx, evDisk, "hold", e)
	}
	return moved
}

// Mailman's side.

// enqueue writes a new .pck (temp file + rename, as Mailman does).
func (d *disk) enqueue(e fence.Entry, data []byte) {
	d.putFile(e, &file{data: data})
}

// oldest returns the oldest visible .pck of queue, as a runner picks it.
func (d *disk) oldest(queue string) (fence.Entry, bool) {
	var best fence.Entry
	found := false
	for e, f := range d.files {
		if e.Queue != queue || e.Kind != fence.KindPck || f.bak {
			continue
		}
		if !found || e.Base < best.Base {
			best, found = e, true
		}
	}
	return best, found
}

// dequeue renames e's .pck to .bak.
func (d *disk) dequeue(e fence.Entry) bool {
	f := d.files[e]
	if f == nil || f.bak || e.Kind != fence.KindPck {
		return false
	}
	f.bak = true
	d.or().visible(e, d.node.idx, false)
	return true
}

// finish unlinks e's .bak and queues its copy for deletion.
func (d *disk) finish(e fence.Entry) {
	f := d.files[e]
	if f == nil || !f.bak {
		return
	}
	d.or().finished(e, d.node.idx)
	d.removeFile(e)
	if k := d.keys[e]; k != "" {
		d.gone = append(d.gone, k)
	}
	if k := d.maybe[e]; k != "" {
		if d.inflight[e] {
			d.finished[e] = true
		} else {
			d.gone = append(d.gone, k)
		}
	}
	delete(d.keys, e)
	delete(d.maybe, e)
}

// recover is Mailman's runner start: every .bak back to .pck with its
// count raised, or to bad as .psv at the third time.
func (d *disk) recover() {
	var baks []fence.Entry
	for e, f := range d.files {
		if f.bak {
			baks = append(baks, e)
		}
	}
	sortEntries(baks)
	for _, e := range baks {
		f := d.files[e]
		f.bakCount++
		if f.bakCount < 3 {
			f.bak = false
			d.or().visible(e, d.node.idx, true)
			d.node.w.traceEntry(d.node.idx, evRunner, "recovered .bak as .pck", e)
			continue
		}
		psv := fence.Entry{Queue: "bad", Base: e.Base, Kind: fence.KindPsv}
		d.or().preserved(e, psv, d.node.idx)
		d.putFile(psv, &file{data: f.data})
		d.removeFile(e)
		if k := d.keys[e]; k != "" {
			d.gone = append(d.gone, k)
		}
		delete(d.keys, e)
		delete(d.maybe, e)
		d.node.w.traceEntry(d.node.idx, evRunner, "recovery preserved", psv)
	}
}

// wipe loses the disk.
func (d *disk) wipe() {
	var es []fence.Entry
	for e := range d.files {
		es = append(es, e)
	}
	for e := range d.held {
		if _, ok := d.files[e]; !ok {
			es = append(es, e)
		}
	}
	sortEntries(es)
	unmirrored := make(map[fence.Entry]bool)
	for _, e := range es {
		if !d.known(e) {
			unmirrored[e] = true
		}
	}
	d.reset()
	for _, e := range es {
		d.or().visible(e, d.node.idx, false)
		d.or().wiped(e, d.node.idx, unmirrored[e])
	}
}

// sync is one pass of the mirror: hold everything while draining, delete
// copies of finished entries, upload what is not mirrored yet. Each
// upload is marked in flight before the gate is read, so a fence that
// runs meanwhile quarantines it.
func (d *disk) sync(ctx context.Context, inc *incarnation) {
	g := inc.n.Gate()
	if g.Draining {
		d.quarantine(true)
	}
	st := inc.st
	for len(d.gone) > 0 {
		k := d.gone[0]
		if err := st.Delete(ctx, k); err != nil {
			return
		}
		if len(d.gone) > 0 && d.gone[0] == k {
			d.gone = d.gone[1:]
		}
	}
	var todo []fence.Entry
	for e := range d.files {
		if !d.known(e) {
			todo = append(todo, e)
		}
	}
	sortEntries(todo)
	for _, e := range todo {
		f := d.files[e]
		if f == nil || d.known(e) {
			continue
		}
		d.inflight[e] = true
		g := inc.n.Gate()
		if !g.Writable {
			delete(d.inflight, e)
			return
		}
		key := d.node.w.layout.MirrorKey(d.node.id, g.Epoch, e)
		d.maybe[e] = key
		_, err := store.PutBytes(ctx, st, key, f.data, store.Condition{})
		delete(d.inflight, e)
		if err != nil {
			if d.finished[e] {
				delete(d.finished, e)
				d.gone = append(d.gone, key)
			}
			return
		}
		if d.maybe[e] == key {
			delete(d.maybe, e)
		}
		switch {
		case d.present(e):
			if d.keys[e] == "" {
				d.keys[e] = key
			}
		case d.finished[e]:
			delete(d.finished, e)
			d.gone = append(d.gone, key)
		}
	}
}

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
		v.inc.w.stats.Fences++
		v.inc.w.tracef(v.d.node.idx, evNote, "fence: quarantine known .pck files")
	}
	return v.d.quarantine(all), nil
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
	stale := d.maybe[e] // an earlier upload whose answer was lost
	if d.inflight[e] {
		stale = ""
	}
	d.maybe[e] = key
	if _, err := store.PutBytes(ctx, v.inc.stNoYield, key, data, store.Condition{}); err != nil {
		return "", err
	}
	delete(d.maybe, e)
	d.keys[e] = key
	for _, k := range []string{old, stale} {
		if k != "" && k != key {
			if err := v.inc.stNoYield.Delete(ctx, k); err != nil {
				return "", err
			}
		}
	}
	return key, nil
}

// Release implements fence.Local.
func (v *localView) Release(ctx context.Context, e fence.Entry) error {
	if v.inc.enter(ctx) {
		return opErr("release", e.String(), store.KindTransient, "canceled")
	}
	d := v.d
	_, visible := d.files[e]
	data, isHeld := d.held[e]
	if visible && !isHeld {
		return nil
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
