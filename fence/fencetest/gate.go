package fencetest

import (
	"sync"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// Gate records the runner gates a node publishes, keeps their cutoffs as
// the runner's publisher does (on the node's clock, which these tests
// take for wall time too), and answers, as Mailman's runners with the
// plugin do, whether an entry may be dequeued (docs/gate.md).
type Gate struct {
	mu       sync.Mutex
	now      func() time.Time
	gates    []fence.RunnerGate
	cuts     []fence.Cutoffs
	cur      fence.Cutoffs
	settling bool
	fail     error
}

// NewGate returns a recorder reading the time from now.
func NewGate(now func() time.Time) *Gate { return &Gate{now: now} }

// PublishGate implements fence.GatePublisher.
func (g *Gate) PublishGate(rg fence.RunnerGate) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fail != nil {
		return g.fail
	}
	g.cur = g.cur.Next(rg, g.now(), time.Time{})
	g.gates = append(g.gates, rg)
	g.cuts = append(g.cuts, g.cur)
	return nil
}

// MarkDeath implements fence.GatePublisher.
func (g *Gate) MarkDeath() {
	g.mu.Lock()
	g.cur = g.cur.Death()
	g.mu.Unlock()
}

// WasSettling implements fence.GatePublisher: what SetSettling said.
func (g *Gate) WasSettling() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.settling
}

// SetSettling says the earlier run left a settling record.
func (g *Gate) SetSettling(s bool) {
	g.mu.Lock()
	g.settling = s
	g.mu.Unlock()
}

// Since is the settling rule's start: HoldOlder holds what is born up to it.
func (g *Gate) Since() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cur.Since
}

// Fail makes every publish fail with err (nil: succeed again).
func (g *Gate) Fail(err error) {
	g.mu.Lock()
	g.fail = err
	g.mu.Unlock()
}

// Last returns the last gate published; ok is false when none was.
func (g *Gate) Last() (fence.RunnerGate, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.gates) == 0 {
		return fence.RunnerGate{}, false
	}
	return g.gates[len(g.gates)-1], true
}

// All returns every gate published, in order.
func (g *Gate) All() []fence.RunnerGate {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]fence.RunnerGate(nil), g.gates...)
}

// Admits says whether a runner reading the last published record at now
// may dequeue e. No record published: nothing is admitted.
func (g *Gate) Admits(e fence.Entry, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.gates) == 0 {
		return false
	}
	return Admits(g.gates[len(g.gates)-1], g.cur, e, now)
}

// Admits is the rule of docs/gate.md on the node's clock, without slew.
func Admits(rg fence.RunnerGate, c fence.Cutoffs, e fence.Entry, now time.Time) bool {
	for _, d := range rg.Deny {
		if d == e {
			return false
		}
	}
	born := e.Born()
	if !rg.Until.IsZero() && now.Before(rg.Until) {
		switch rg.Admit {
		case fence.AdmitAll:
			return true
		case fence.AdmitNew:
			return born.After(c.Since)
		}
		return false
	}
	return !c.Cutoff.IsZero() && born.After(c.Cutoff)
}
