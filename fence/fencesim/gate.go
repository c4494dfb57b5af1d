package fencesim

import (
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// diskGate is the runner gate record in a node's state directory: it
// outlives sidecar incarnations and goes with a wiped disk. Times are on
// the node's clock, which is also the clock entries are born on.
type diskGate struct {
	d    *disk
	cur  fence.Cutoffs
	last fence.RunnerGate
	have bool
}

// PublishGate implements fence.GatePublisher.
func (g *diskGate) PublishGate(rg fence.RunnerGate) error {
	g.cur = g.cur.Next(rg, g.d.node.clock.Now(), g.d.floor)
	g.last, g.have = rg, true
	return nil
}

// MarkDeath implements fence.GatePublisher.
func (g *diskGate) MarkDeath() { g.cur = g.cur.Death() }

// WasSettling implements fence.GatePublisher.
func (g *diskGate) WasSettling() bool { return g.cur.Settling }

// cover raises the cutoff floor to born before an entry born then is
// restored, publishing the last gate again with it.
func (g *diskGate) cover(born time.Time) {
	if !born.After(g.d.floor) {
		return
	}
	g.d.floor = born
	if g.have {
		_ = g.PublishGate(g.last)
	}
}
