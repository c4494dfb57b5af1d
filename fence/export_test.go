package fence

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ClaimsPassNow runs one claims pass at once, light or full, whatever is
// due.
func ClaimsPassNow(ctx context.Context, n *Node, light bool) error {
	return n.claimsPass(ctx, light)
}

// GateViewForTest is gateView with exported fields.
type GateViewForTest struct {
	Now             time.Time
	State           string
	Epoch           uint64
	Deadline        time.Time
	Drain, Settling bool
	Reason          string
	Stopped         bool
}

// DecideGateForTest runs decideGate.
func DecideGateForTest(v GateViewForTest) RunnerGate {
	return decideGate(gateView{now: v.Now, state: v.State, epoch: v.Epoch, deadline: v.Deadline,
		drain: v.Drain, settling: v.Settling, reason: v.Reason, stopped: v.Stopped})
}

// LoopErrorsForTest is the loop error counter of loop.
func (m *Metrics) LoopErrorsForTest(loop string) prometheus.Counter {
	return m.loopErrs.WithLabelValues(loop)
}
