package fencesim

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// The runner gate (docs/gate.md). A node's sidecar publishes a gate record
// in its state directory; with the gate on, Mailman's runners (through the
// plugin) check it before every dequeue. The simulator keeps the record as
// the runners read it (gateRecord) and the publisher's state as
// runner.GateFile keeps it (diskGate). One clock stands for both
// CLOCK_BOOTTIME and the wall clock: the node's own, which entries are born
// on too; the slew is 0 (the simulator steps no wall clock), so a cutoff
// that misses a birth by a microsecond shows.

// gateRecord is one published gate record, its times on the node's clock.
type gateRecord struct {
	epoch    uint64
	boot     int // the boot of the kernel it was written on
	admit    fence.Admit
	deadline time.Time // zero: admit never applies
	since    time.Time
	cutoff   time.Time // never null: the writer always sets one
	reason   string
	deny     map[string]bool // "<queue>/<base>"
}

func denyKey(e fence.Entry) string { return e.Queue + "/" + e.Base }

// admits is the rule of docs/gate.md, with its reasons: what a runner on
// boot reading the record r at now may dequeue.
func (r *gateRecord) admits(e fence.Entry, now time.Time, boot int) (bool, string) {
	if r == nil {
		return false, "no gate"
	}
	if r.deny[denyKey(e)] {
		return false, "denied"
	}
	if !fence.ValidBase(e.Base) {
		return false, "bad name"
	}
	born := e.Born()
	if r.boot == boot && now.Before(r.deadline) {
		switch r.admit {
		case fence.AdmitAll:
			return true, "open"
		case fence.AdmitNew:
			if born.After(r.since) {
				return true, "after since"
			}
			return false, "before since"
		}
		return false, "admit none"
	}
	branch := "expired"
	if r.boot != boot {
		branch = "other boot"
	}
	if born.After(r.cutoff) {
		return true, branch + ", after cutoff"
	}
	return false, branch + ", before cutoff"
}

// open says whether the record admits every entry at now on boot.
func (r *gateRecord) open(now time.Time, boot int) bool {
	return r != nil && r.boot == boot && r.admit == fence.AdmitAll && now.Before(r.deadline)
}

var errGateWrite = errors.New("write gate record: input/output error")

// diskGate is the runner gate in a node's state directory: the record
// (durable, it outlives sidecar incarnations and goes with a wiped disk)
// and the publishing process's state, which a new incarnation rebuilds
// from the record as runner.NewGateFile does.
type diskGate struct {
	d   *disk
	rec *gateRecord // nil: never published (closed for every entry)

	// The publisher's process state.
	cur         fence.Cutoffs
	last        fence.RunnerGate
	have        bool
	floor       time.Time // the latest birth of an entry restored (or the old record's cutoff)
	wasSettling bool
	denied      []fence.Entry
}

var _ fence.GateDenials = (*diskGate)(nil)

// load starts a publisher process: it carries the record's cutoff over
// (as the floor of every later cutoff) and its settling rule.
func (g *diskGate) load() {
	g.cur, g.last, g.have, g.floor, g.wasSettling, g.denied = fence.Cutoffs{}, fence.RunnerGate{}, false, time.Time{}, false, nil
	r := g.rec
	if r == nil {
		return
	}
	g.cur.Cutoff, g.floor = r.cutoff, r.cutoff
	for k := range r.deny {
		q, base, _ := strings.Cut(k, "/")
		g.denied = append(g.denied, fence.Entry{Queue: q, Base: base, Kind: fence.KindPck})
	}
	sortEntries(g.denied)
	if r.admit == fence.AdmitNew && !r.deadline.IsZero() {
		g.wasSettling = true
		g.cur.Since, g.cur.Settling = r.since, true
	}
}

// PublishGate implements fence.GatePublisher. While the node's state
// directory fails (a fGateFail fault), every write fails and the record
// stays what it was.
func (g *diskGate) PublishGate(rg fence.RunnerGate) error {
	sn := g.d.node
	w := sn.w
	if inc := sn.inc; w.gated && inc != nil {
		if rg.Until.IsZero() && rg.Reason != fence.GateStarting {
			// With the gate as the fence nothing is quarantined: the
			// closed gate marks the fence, and owner contexts born before
			// it count as cancelled from now on, as Quarantine makes them
			// without the gate.
			inc.fenceGen++
			if !inc.closed {
				w.stats.Fences++
			}
			inc.closed = true
		} else if !rg.Until.IsZero() {
			inc.closed = false
		}
	}
	if w.gateFailing(sn.idx) {
		w.stats.GateWriteErrs++
		w.tracef(sn.idx, evNote, "gate record not written (%s, admit %s): %v", rg.Reason, rg.Admit, errGateWrite)
		return errGateWrite
	}
	now := sn.clock.Now()
	next := g.cur.Next(rg, now, g.floor)
	rec := &gateRecord{epoch: rg.Epoch, boot: sn.boot, admit: rg.Admit, deadline: rg.Until,
		since: next.Cutoff, cutoff: next.Cutoff, reason: rg.Reason}
	if next.Settling {
		rec.since = next.Since
	}
	if len(rg.Deny) > 0 {
		rec.deny = make(map[string]bool, len(rg.Deny))
		for _, e := range rg.Deny {
			rec.deny[denyKey(e)] = true
		}
	}
	if old := g.rec; old == nil || old.admit != rec.admit || old.reason != rec.reason || !old.since.Equal(rec.since) ||
		len(old.deny) != len(rec.deny) || old.boot != rec.boot {
		w.tracef(sn.idx, evNote, "gate record: admit %s (%s) since %s cutoff %s deny %d", rec.admit, rec.reason,
			sn.clockString(rec.since), sn.clockString(rec.cutoff), len(rec.deny))
	}
	g.cur, g.last, g.have, g.rec = next, rg, true, rec
	w.or.gatePublished(sn)
	return nil
}

// MarkDeath implements fence.GatePublisher.
func (g *diskGate) MarkDeath() { g.cur = g.cur.Death() }

// WasSettling implements fence.GatePublisher: what the record the process
// started from said.
func (g *diskGate) WasSettling() bool { return g.wasSettling }

// Denied implements fence.GateDenials: the deny list of the record the
// process started from.
func (g *diskGate) Denied() []fence.Entry { return g.denied }

// cover makes the published cutoff cover born before an entry born then is
// restored, publishing the last gate again when it does not (the
// contract of runner.GateFile.Cover).
func (g *diskGate) cover(born time.Time) error {
	if born.After(g.floor) {
		g.floor = born
	}
	if !g.have || !born.After(g.cur.Cutoff) {
		return nil
	}
	return g.PublishGate(g.last)
}

// admits says whether the node's runners may dequeue e now: true for
// every entry when they do not honour the gate.
func (sn *simNode) admits(e fence.Entry) (bool, string) {
	if !sn.w.gated {
		return true, "no gate"
	}
	return sn.disk.gate.rec.admits(e, sn.clock.Now(), sn.boot)
}

// clockString shows a time on the node's clock as seconds from the
// node's start, for traces.
func (sn *simNode) clockString(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return fmt.Sprintf("%.3fs", t.Sub(sn.clock.base).Seconds())
}

// gateFailing reports whether node's state directory refuses writes now.
func (w *world) gateFailing(node int) bool {
	for _, f := range w.sc.faults {
		if f.kind == fGateFail && f.node == node && w.now >= f.at && w.now < f.at+f.dur {
			return true
		}
	}
	return false
}

// covered checks the invariant the runner gate's safety rests on
// (docs/gate.md, "Why this is safe"): an entry in a node's queue
// directories is uploaded, or restored into them, only while the node's
// published record has a cutoff at or after its birth. An entry born
// later would be admitted once the record expires, while a peer may take
// it over.
func (o *oracle) covered(sn *simNode, e fence.Entry, what string) {
	r := sn.disk.gate.rec
	if r != nil && !e.Born().After(r.cutoff) {
		return
	}
	cut := "no gate record published"
	if r != nil {
		cut = "the published gate record's cutoff is " + sn.clockString(r.cutoff)
	}
	o.w.violate("gate", []fence.Entry{e}, "%s %s on %s, born %s on its clock, but %s",
		o.name(e), what, sn.id, sn.clockString(e.Born()), cut)
}

// gatePublished checks a record sn just published: its cutoff still
// covers every entry in the queue directories that the store may hold a
// copy of in sn's namespace.
func (o *oracle) gatePublished(sn *simNode) {
	d := sn.disk
	cutoff := d.gate.rec.cutoff
	var bad []fence.Entry
	for e := range d.files {
		k := d.inflight[e]
		if (d.keys[e] != "" || len(d.maybe[e]) > 0 || k != "" && k != "?") && e.Born().After(cutoff) {
			bad = append(bad, e)
		}
	}
	if len(bad) == 0 {
		return
	}
	sortEntries(bad)
	o.w.violate("gate", bad[:1], "%s published a gate record with cutoff %s, but %s (born %s) is in its queue directory and may be in the store",
		sn.id, sn.clockString(cutoff), o.name(bad[0]), sn.clockString(bad[0].Born()))
}
