package fencesim

import (
	"fmt"
	"math/bits"
	"sort"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// oracle knows every entry the simulation created and where it is, and
// checks G1, G2 and G6 as the disks and the store change.
type oracle struct {
	w       *world
	entries map[fence.Entry]*entryState
	ids     map[string]int // base → id, for short names
	all     []*entryState
	// alive has a bit per node whose Mailman runners run.
	alive uint64
	// multi: with the runner gate, entries visible on two nodes or more,
	// which G2 judges again as admission changes.
	multi map[*entryState]bool
}

type termKind uint8

const (
	termNone termKind = iota
	termFinished
	termPreserved
	termLost // lost in a disk wipe, allowed: younger than the lag bound or never mirrorable
)

type entryState struct {
	id      int
	e       fence.Entry
	born    time.Duration
	bornOn  int
	term    termKind
	visible uint64 // nodes where it is a Mailman-visible .pck
	onDisk  uint64 // disks holding it (queue directory or hold area)
	inStore int    // mirror copies in the store
	// runs lists the nodes that dequeued it, in order.
	runs      []int
	transfers int // changes of owner by takeover, counted from claim writes
	preserved *entryState
}

func newOracle(w *world) *oracle {
	return &oracle{w: w, entries: make(map[fence.Entry]*entryState), ids: make(map[string]int), multi: make(map[*entryState]bool)}
}

func (o *oracle) name(e fence.Entry) string {
	id, ok := o.ids[e.Base]
	if !ok {
		return e.String()
	}
	if e.Kind == fence.KindPsv {
		return fmt.Sprintf("%s/#%d.psv", e.Queue, id)
	}
	return fmt.Sprintf("%s/#%d", e.Queue, id)
}

// create registers a new entry born on node.
func (o *oracle) create(e fence.Entry, node int) *entryState {
	es := &entryState{id: len(o.all) + 1, e: e, born: o.w.now, bornOn: node}
	if id, ok := o.ids[e.Base]; ok {
		es.id = id
	} else {
		o.ids[e.Base] = es.id
	}
	o.entries[e] = es
	o.all = append(o.all, es)
	return es
}

func (o *oracle) get(e fence.Entry) *entryState {
	es := o.entries[e]
	if es == nil {
		o.w.violate("sim", []fence.Entry{e}, "entry %s appeared from nowhere", e)
		es = o.create(e, -1)
	}
	return es
}

// visible records whether e is a Mailman-visible .pck on node (G2).
func (o *oracle) visible(e fence.Entry, node int, on bool) {
	es := o.get(e)
	bit := uint64(1) << node
	if on {
		es.visible |= bit
	} else {
		es.visible &^= bit
	}
	if o.w.gated {
		if bits.OnesCount64(es.visible) >= 2 {
			o.multi[es] = true
		} else {
			delete(o.multi, es)
		}
	}
	if on {
		o.checkG2(es)
	}
}

// checkG2 fails when es is a .pck that the runners of two nodes may
// dequeue: visible there, and with the runner gate, admitted.
func (o *oracle) checkG2(es *entryState) {
	v := es.visible & o.alive
	if bits.OnesCount64(v) < 2 {
		return
	}
	var who []string
	for i, sn := range o.w.nodes {
		if v&(1<<i) == 0 {
			continue
		}
		ok, why := sn.admits(es.e)
		if !ok {
			v &^= 1 << i
			continue
		}
		if o.w.gated {
			who = append(who, sn.id+" ("+why+")")
		} else {
			who = append(who, sn.id)
		}
	}
	if len(who) < 2 {
		return
	}
	what := "a visible .pck"
	if o.w.gated {
		what = "a visible .pck the gate admits"
	}
	o.w.violate("G2", []fence.Entry{es.e}, "%s is %s on %v at once", o.name(es.e), what, who)
}

// recheckG2 judges again the entries visible on two nodes or more.
func (o *oracle) recheckG2() {
	if len(o.multi) == 0 {
		return
	}
	es := make([]*entryState, 0, len(o.multi))
	for s := range o.multi {
		es = append(es, s)
	}
	sort.Slice(es, func(i, j int) bool {
		return es[i].id < es[j].id || es[i].id == es[j].id && es[i].e.Queue < es[j].e.Queue
	})
	for _, s := range es {
		o.checkG2(s)
	}
}

// mailman records whether node's runners run; starting them re-checks G2.
func (o *oracle) mailman(node int, on bool) {
	bit := uint64(1) << node
	if !on {
		o.alive &^= bit
		return
	}
	o.alive |= bit
	for _, es := range o.all {
		if es.visible&bit != 0 {
			o.checkG2(es)
		}
	}
}

func (o *oracle) onDisk(e fence.Entry, node int, on bool) {
	es := o.get(e)
	if on {
		es.onDisk |= 1 << node
		return
	}
	es.onDisk &^= 1 << node
	o.checkG1(es, "removed from "+o.w.nodes[node].id)
}

func (o *oracle) storeCopy(e fence.Entry, delta int) {
	es := o.get(e)
	es.inStore += delta
	if es.inStore < 0 {
		o.w.violate("sim", []fence.Entry{e}, "negative copy count for %s", o.name(e))
	}
	if delta < 0 {
		o.checkG1(es, "last copy deleted from the store")
	}
}

func (o *oracle) checkG1(es *entryState, how string) {
	if es.term != termNone || es.onDisk != 0 || es.inStore > 0 {
		return
	}
	o.w.violate("G1", []fence.Entry{es.e}, "%s (born %.3fs on %s) is on no disk and not in the store: %s",
		o.name(es.e), es.born.Seconds(), o.w.nodeName(es.bornOn), how)
}

// wiped records that node's disk lost e. Losing an unmirrored entry is
// allowed when it is younger than the lag bound, or when the node could
// not mirror (store unreachable, fenced, paused) for the whole bound.
func (o *oracle) wiped(e fence.Entry, node int, unmirrored bool) {
	es := o.get(e)
	es.onDisk &^= 1 << node
	if es.term != termNone || es.onDisk != 0 || es.inStore > 0 {
		return
	}
	w := o.w
	since := w.nodes[node].mirrorableSince
	start := max(es.born, since)
	if w.nodes[node].mirrorable && w.now-start > w.sc.lagBound {
		w.violate("G1", []fence.Entry{e}, "%s lost with %s's disk: mirrorable for %v, lag bound %v (unmirrored=%v)",
			o.name(e), w.nodes[node].id, w.now-start, w.sc.lagBound, unmirrored)
		return
	}
	es.term = termLost
	w.stats.LostYoung++
}

// run records a dequeue on node.
func (o *oracle) run(e fence.Entry, node int) {
	es := o.get(e)
	es.runs = append(es.runs, node)
}

func (o *oracle) finished(e fence.Entry, node int) {
	es := o.get(e)
	if es.term == termNone {
		es.term = termFinished
	}
}

// preserved records that e became psv (by Mailman's recovery or a
// transfer beyond the bound).
func (o *oracle) preserved(e, psv fence.Entry, node int) {
	es := o.get(e)
	if es.term == termNone {
		es.term = termPreserved
	}
	ps := o.entries[psv]
	if ps == nil {
		ps = o.create(psv, node)
	}
	es.preserved = ps
}

// staged is the fence code writing e into a hold area.
func (o *oracle) staged(e fence.Entry, node int) {
	if e.Kind == fence.KindPsv {
		if o.entries[e] != nil {
			return
		}
		orig := fence.Entry{Queue: "", Base: e.Base, Kind: fence.KindPck}
		for _, es := range o.all {
			if es.e.Base == e.Base && es.e.Kind == fence.KindPck {
				orig = es.e
			}
		}
		o.preserved(orig, e, node)
		return
	}
	o.get(e)
}

// released is the fence code making e visible on node (G6).
func (o *oracle) released(e fence.Entry, node int) {
	es := o.get(e)
	if e.Kind == fence.KindPsv {
		o.w.stats.Preserved++
	} else if es.transfers > 0 {
		o.w.stats.MaxTransfers = max(o.w.stats.MaxTransfers, es.transfers)
	}
	if e.Kind == fence.KindPck && es.transfers > o.w.sc.maxTransfers {
		o.w.violate("G6", []fence.Entry{e}, "%s restored as .pck on %s after %d transfers (max %d)",
			o.name(e), o.w.nodes[node].id, es.transfers, o.w.sc.maxTransfers)
	}
	if es.term != termNone {
		o.w.stats.RestoredFinished++
	}
}

func (o *oracle) transfer(e fence.Entry) {
	if es := o.entries[e]; es != nil {
		es.transfers++
	}
}

// inProcessing reports whether es is back in processing: finished,
// preserved, or queued or in flight on a node whose runners run.
func (o *oracle) inProcessing(es *entryState, except int) bool {
	if es.term != termNone {
		return true
	}
	for i, n := range o.w.nodes {
		if i == except || !n.mailmanUp {
			continue
		}
		if f := n.disk.files[es.e]; f != nil {
			if f.bak || es.e.Kind != fence.KindPck {
				return true
			}
			// Queued: with the runner gate, only where it admits it.
			if ok, _ := n.admits(es.e); ok {
				return true
			}
		}
	}
	return false
}

// crossNodeOf counts the entries of set dequeued on more than one node.
func (o *oracle) crossNodeOf(set map[fence.Entry]bool) int {
	n := 0
	for e := range set {
		es := o.entries[e]
		if es == nil {
			continue
		}
		for _, r := range es.runs {
			if r != es.runs[0] {
				n++
				break
			}
		}
	}
	return n
}

// duplicates counts entries dequeued on more than one node, and entries
// dequeued more than once overall.
func (o *oracle) duplicates() (crossNode, reruns int) {
	for _, es := range o.all {
		if len(es.runs) > 1 {
			reruns++
		}
		for _, n := range es.runs[min(1, len(es.runs)):] {
			if n != es.runs[0] {
				crossNode++
				break
			}
		}
	}
	return crossNode, reruns
}

// stuck returns the entries that are neither finished nor in processing,
// leaving out those that sit only on the disks of nodes that never came
// back.
func (o *oracle) stuck() []*entryState {
	var out []*entryState
	for _, es := range o.all {
		if es.term != termNone || o.inProcessing(es, -1) {
			continue
		}
		stranded := es.onDisk != 0
		for i, n := range o.w.nodes {
			if es.onDisk&(1<<i) != 0 && !n.retired {
				stranded = false
			}
		}
		if stranded && es.inStore == 0 {
			continue
		}
		out = append(out, es)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}
