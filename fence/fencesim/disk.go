package fencesim

import (
	"context"
	"slices"
	"sort"
	"time"

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
	// keys: the entry's confirmed copy; maybe: other copies the store may
	// hold (uploads whose answer was lost); inflight: the key of a mirror
	// upload on the wire.
	keys     map[fence.Entry]string
	maybe    map[fence.Entry][]string
	inflight map[fence.Entry]string
	// finished: finished locally while an upload was in flight.
	finished map[fence.Entry]bool
	// gone: copies to delete (finished entries, superseded copies).
	gone []string
	// since: when the entry last arrived in the queue directory.
	since map[fence.Entry]time.Duration
	// epoch: the node's epoch record in its state directory.
	epoch uint64
	// gate: the runner gate record in the state directory, and its
	// publisher's state.
	gate diskGate
}

// Last implements fence.EpochRecord: the record lives on the disk.
func (d *disk) Last() (uint64, error) { return d.epoch, nil }

// Save implements fence.EpochRecord.
func (d *disk) Save(epoch uint64) error {
	d.epoch = epoch
	return nil
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
	d.maybe = make(map[fence.Entry][]string)
	d.inflight = make(map[fence.Entry]string)
	d.finished = make(map[fence.Entry]bool)
	d.gone = nil
	d.since = make(map[fence.Entry]time.Duration)
	d.epoch = 0
	d.gate = diskGate{d: d}
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

// known reports whether the store may hold a copy of e in this node's
// namespace.
func (d *disk) known(e fence.Entry) bool {
	return d.keys[e] != "" || len(d.maybe[e]) > 0 || d.inflight[e] != ""
}

// restart forgets what a dead sidecar process had in flight: its uploads
// may or may not have landed. The new process's gate publisher starts
// from the record the last one left.
func (d *disk) restart() {
	d.gate.load()
	es := make([]fence.Entry, 0, len(d.inflight))
	for e := range d.inflight {
		es = append(es, e)
	}
	sortEntries(es)
	for _, e := range es {
		k := d.inflight[e]
		switch {
		case k == "?":
		case d.finished[e] || !d.present(e):
			d.gone = append(d.gone, k)
		default:
			d.maybe[e] = append(d.maybe[e], k)
		}
	}
	d.inflight = make(map[fence.Entry]string)
	d.finished = make(map[fence.Entry]bool)
}

// unconfirmed reports whether e still needs an upload: no confirmed copy
// and none on the wire.
func (d *disk) unconfirmed(e fence.Entry) bool { return d.keys[e] == "" && d.inflight[e] == "" }

// forget queues every copy of e this node knows for deletion.
func (d *disk) forget(e fence.Entry) {
	if k := d.keys[e]; k != "" {
		d.gone = append(d.gone, k)
	}
	d.gone = append(d.gone, d.maybe[e]...)
	delete(d.keys, e)
	delete(d.maybe, e)
}

// putFile adds or replaces e in the queue directory and tells the oracle.
func (d *disk) putFile(e fence.Entry, f *file) {
	was := d.present(e)
	if _, ok := d.files[e]; !ok {
		d.since[e] = d.node.w.now
	}
	d.files[e] = f
	if !was {
		d.or().onDisk(e, d.node.idx, true)
	}
	visible := e.Kind == fence.KindPck && !f.bak
	d.or().visible(e, d.node.idx, visible)
	if visible {
		d.node.wake(e.Queue)
	}
}

func (d *disk) removeFile(e fence.Entry) {
	if _, ok := d.files[e]; !ok {
		return
	}
	delete(d.files, e)
	delete(d.since, e)
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

// quarantine moves entries into the hold area: the known .pck files (the
// fence), every .pck (a drain), or every entry, .bak (held as .pck) and
// .psv included (start-up after the node was taken over while down).
func (d *disk) quarantine(all, everything bool) []fence.Entry {
	var moved []fence.Entry
	for e, f := range d.files {
		switch {
		case everything:
		case e.Kind != fence.KindPck || f.bak || !all && !d.known(e):
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

// oldest returns the oldest visible .pck of queue that the runner may
// dequeue, as a runner picks it; closed reports visible .pck files that
// the runner gate keeps from it.
func (d *disk) oldest(queue string) (best fence.Entry, found, closed bool) {
	for e, f := range d.files {
		if e.Queue != queue || e.Kind != fence.KindPck || f.bak || found && e.Base > best.Base {
			continue
		}
		if ok, _ := d.node.admits(e); !ok {
			closed = true
			continue
		}
		best, found = e, true
	}
	return best, found, closed
}

// inFlight lists the entries runners have in hand (.bak).
func (d *disk) inFlight() []fence.Entry {
	var out []fence.Entry
	for e, f := range d.files {
		if f.bak {
			out = append(out, e)
		}
	}
	sortEntries(out)
	return out
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
	d.forget(e)
	if d.inflight[e] != "" {
		d.finished[e] = true
	}
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
			d.node.wake(e.Queue)
			d.node.w.traceEntry(d.node.idx, evRunner, "recovered .bak as .pck", e)
			continue
		}
		psv := fence.Entry{Queue: "bad", Base: e.Base, Kind: fence.KindPsv}
		d.or().preserved(e, psv, d.node.idx)
		d.putFile(psv, &file{data: f.data})
		d.removeFile(e)
		d.forget(e)
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

// syncDue reports whether a mirror pass has anything to do.
func (d *disk) syncDue(g fence.Gate) bool {
	if len(d.gone) > 0 {
		return true
	}
	for e, f := range d.files {
		if g.Writable && d.unconfirmed(e) || g.Draining && e.Kind == fence.KindPck && !f.bak {
			return true
		}
	}
	return false
}

// sync is one pass of the mirror: hold everything while draining, upload
// what is not mirrored yet, delete copies of finished entries. As in the
// runner, where uploads and deletes have workers of their own, a delete
// that fails or waits on the store does not hold uploads back. Each
// upload is marked in flight before the gate is read, so a fence that
// runs meanwhile quarantines it.
func (d *disk) sync(ctx context.Context, inc *incarnation) {
	g := inc.n.Gate()
	if g.Draining {
		d.quarantine(true, false)
	}
	d.upload(ctx, inc)
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
}

// upload uploads, oldest first, the entries without a copy.
func (d *disk) upload(ctx context.Context, inc *incarnation) {
	st := inc.st
	var todo []fence.Entry
	for e := range d.files {
		if d.unconfirmed(e) {
			todo = append(todo, e)
		}
	}
	// Oldest first, as the runner's upload queue is in order of arrival.
	sortEntries(todo)
	sort.SliceStable(todo, func(i, j int) bool { return d.since[todo[i]] < d.since[todo[j]] })
	for _, e := range todo {
		f := d.files[e]
		if f == nil || !d.unconfirmed(e) {
			continue
		}
		// Marked in flight before the gate is read: a fence from here on
		// quarantines the entry.
		d.inflight[e] = "?"
		g := inc.n.Gate()
		if !g.Writable {
			delete(d.inflight, e)
			return
		}
		key := d.node.w.layout.MirrorKey(d.node.id, g.Epoch, e)
		d.inflight[e] = key
		d.or().covered(d.node, e, "uploaded")
		_, err := store.PutBytes(ctx, st, key, f.data, store.Condition{})
		delete(d.inflight, e)
		switch {
		case d.finished[e]:
			delete(d.finished, e)
			d.gone = append(d.gone, key)
		case !d.present(e):
			// Dropped meanwhile: the copy is the new owner's business.
		case err != nil:
			if !slices.Contains(d.maybe[e], key) {
				d.maybe[e] = append(d.maybe[e], key)
			}
		case d.keys[e] == "":
			d.keys[e] = key
		case d.keys[e] != key:
			d.gone = append(d.gone, key) // superseded by a newer copy
		}
		if err != nil {
			return
		}
	}
}
