package fencesim

import (
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"
)

// scenario is everything a seed decides up front: the cluster, its
// timing, the workload, the store's fault rates and the fault schedule.
type scenario struct {
	nodes                   int
	ttl, grace, margin      time.Duration
	watchdog                time.Duration
	maxTransfers            int
	quietAt, end            time.Duration
	posts                   int
	rates                   []float64
	syncEvery, runnerSleep  time.Duration
	procMin, procMax        time.Duration
	longProcP               float64
	latZeroP                float64
	latMax                  time.Duration
	spikeP                  float64
	spikeMax                time.Duration
	lostP, transientP       float64
	conflictP               float64
	lagBound                time.Duration
	recovery                bool
	faults                  []fault
	modelLimit              time.Duration
	beyondPlanned           bool
	firstFault, lastFaultAt time.Duration
	// With the runner gate (drawGate): Mailman starts with its node, not
	// after the sidecar (the start order the gate relaxes).
	gated        bool
	mailmanFirst bool
}

type faultKind int

const (
	fCrash        faultKind = iota // whole node, disk kept
	fCrashWipe                     // whole node, disk lost
	fCrashSidecar                  // sidecar alone; Mailman keeps running
	fPause                         // whole node frozen
	fPauseSidecar                  // sidecar frozen, runners keep going
	fPartition                     // one node cut off from the store
	fOutage                        // store down for everyone
	fDrain                         // operator drains the node
	fRetire                        // whole node crashes for good
	fGateFail                      // the node's state directory refuses writes (gate records)
)

var faultNames = map[faultKind]string{
	fCrash: "crash", fCrashWipe: "crash+wipe", fCrashSidecar: "sidecar-crash", fPause: "pause",
	fPauseSidecar: "sidecar-pause", fPartition: "partition", fOutage: "outage", fDrain: "drain", fRetire: "crash-forever",
	fGateFail: "gate-write-errors",
}

type fault struct {
	kind   faultKind
	node   int
	at     time.Duration
	dur    time.Duration // pause, partition or outage length; restart delay
	beyond bool          // planned beyond the timing model
}

func (f fault) String() string {
	s := fmt.Sprintf("%s node%d at %.3fs for %v", faultNames[f.kind], f.node, f.at.Seconds(), f.dur)
	if f.beyond {
		s += " (beyond the model)"
	}
	return s
}

func uniform(r *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(r.Int64N(int64(hi-lo)))
}

// pauseLength draws a pause within the timing model, half of them close
// to its limit.
func pauseLength(r *rand.Rand, limit time.Duration) time.Duration {
	if r.IntN(2) == 0 {
		return uniform(r, limit*4/5, limit)
	}
	return uniform(r, 10*time.Millisecond, limit)
}

// Options select what a run may do beyond the defaults.
type Options struct {
	// Beyond is the share of seeds that plan one fault beyond the timing
	// model (a pause, or a sidecar outage with runners going, longer than
	// margin + grace). 0 means the default of 0.2; negative means none.
	Beyond float64
	// NoRecovery turns off Mailman's .bak recovery when a whole node
	// restarts on its old disk.
	NoRecovery bool
	// AbandonDrain: a drain ends when the draining node's sidecar
	// restarts (nobody issues it again).
	AbandonDrain bool
	// RunnerGate runs the nodes with the runner gate as the fence
	// (fence.Config.RunnerGate): Mailman's runners check the node's gate
	// record before every dequeue, Mailman may start before the sidecar,
	// and the state directory can refuse the record's writes for a while.
	RunnerGate bool
	// CancelDrain: the operator cancels every drain after a random time
	// (up to 3 TTL) unless it finished first; the node stays.
	CancelDrain bool
	// Trace is how many trace events a violation prints (default 50).
	Trace int
	// Dump, when set, receives the whole trace ring of the run.
	Dump io.Writer
}

// newScenario draws a scenario from the seed.
func newScenario(r *rand.Rand, opt Options) *scenario {
	sc := &scenario{}
	sc.nodes = 3 + r.IntN(3)
	sc.ttl = []time.Duration{2 * time.Second, 3 * time.Second, 3 * time.Second, 4 * time.Second}[r.IntN(4)]
	sc.margin = uniform(r, sc.ttl/20, sc.ttl/4)
	sc.grace = uniform(r, sc.margin, sc.ttl/2)
	sc.watchdog = min(max(sc.ttl/30, 5*time.Millisecond), 250*time.Millisecond)
	sc.maxTransfers = []int{1, 1, 2, 3}[r.IntN(4)]
	sc.modelLimit = sc.margin + sc.grace
	for i := 0; i < sc.nodes; i++ {
		sc.rates = append(sc.rates, 0.98+0.04*r.Float64())
	}
	sc.syncEvery = uniform(r, 50*time.Millisecond, 250*time.Millisecond)
	sc.runnerSleep = uniform(r, 100*time.Millisecond, 600*time.Millisecond)
	sc.procMin = uniform(r, 5*time.Millisecond, 50*time.Millisecond)
	sc.procMax = sc.procMin + uniform(r, 20*time.Millisecond, 600*time.Millisecond)
	sc.longProcP = 0.02 * r.Float64()
	sc.latZeroP = 0.3 + 0.6*r.Float64()
	sc.latMax = uniform(r, time.Millisecond, 40*time.Millisecond)
	sc.spikeP = 0.01 * r.Float64()
	sc.spikeMax = uniform(r, 50*time.Millisecond, sc.ttl/3)
	sc.lostP = 0.05 * r.Float64() * r.Float64()
	sc.transientP = 0.02 * r.Float64()
	sc.conflictP = r.Float64()
	sc.lagBound = 2*time.Second + 4*sc.syncEvery
	sc.recovery = !opt.NoRecovery
	sc.posts = 45 + r.IntN(60)

	length := time.Duration(7+r.IntN(5)) * sc.ttl
	sc.firstFault = 2 * sc.ttl
	sc.lastFaultAt = length
	sc.quietAt = length
	sc.end = sc.quietAt + 5*sc.ttl + time.Second

	beyond := opt.Beyond
	if beyond == 0 {
		beyond = 0.2
	}
	sc.beyondPlanned = r.Float64() < beyond
	nf := 2 + r.IntN(6)
	retired, drained := 0, false
	for i := 0; i < nf; i++ {
		f := fault{node: r.IntN(sc.nodes), at: uniform(r, sc.firstFault, sc.lastFaultAt-sc.ttl)}
		limit := sc.modelLimit
		switch k := r.IntN(100); {
		case k < 16:
			f.kind, f.dur = fCrash, uniform(r, 100*time.Millisecond, 4*sc.ttl)
		case k < 24:
			f.kind, f.dur = fCrashWipe, uniform(r, 100*time.Millisecond, 4*sc.ttl)
		case k < 34:
			f.kind, f.dur = fCrashSidecar, uniform(r, 10*time.Millisecond, limit/2)
		case k < 48:
			f.kind, f.dur = fPause, pauseLength(r, limit)
		case k < 60:
			f.kind, f.dur = fPauseSidecar, pauseLength(r, limit)
		case k < 76:
			f.kind, f.dur = fPartition, uniform(r, sc.ttl/4, 3*sc.ttl)
		case k < 88:
			f.kind, f.dur = fOutage, uniform(r, sc.ttl/4, 3*sc.ttl)
		case k < 93:
			if drained || sc.nodes < 4 {
				f.kind, f.dur = fPartition, uniform(r, sc.ttl/4, 3*sc.ttl)
				break
			}
			drained = true
			retired++
			f.kind = fDrain
		case k < 97:
			// A cascade: node after node dies while holding what it took
			// over, so entries move again and again (G6).
			step := sc.ttl + sc.grace + sc.ttl
			for j := 0; j < sc.nodes-1 && f.at+time.Duration(j)*step < sc.lastFaultAt-sc.ttl; j++ {
				sc.faults = append(sc.faults, fault{kind: fCrash, node: (f.node + j) % sc.nodes,
					at: f.at + time.Duration(j)*step, dur: uniform(r, step, 2*step)})
			}
			continue
		default:
			if retired+1 >= sc.nodes-1 {
				f.kind, f.dur = fCrash, uniform(r, 100*time.Millisecond, 4*sc.ttl)
				break
			}
			retired++
			f.kind, f.dur = fRetire, -1
		}
		sc.faults = append(sc.faults, f)
	}
	if sc.beyondPlanned {
		f := fault{node: r.IntN(sc.nodes), at: uniform(r, sc.firstFault, sc.lastFaultAt-sc.ttl), beyond: true}
		f.dur = uniform(r, sc.modelLimit+10*time.Millisecond, 3*sc.ttl)
		switch r.IntN(3) {
		case 0:
			f.kind = fPause
		case 1:
			f.kind = fPauseSidecar
		default:
			f.kind = fCrashSidecar
		}
		sc.faults = append(sc.faults, f)
	}
	return sc
}

// drawGate adds what the runner gate changes: the start order, and
// windows in which a node's gate record cannot be written. It draws from
// its own source, so the rest of the scenario is the seed's without the
// gate.
func (sc *scenario) drawGate(r *rand.Rand) {
	sc.gated = true
	sc.mailmanFirst = r.IntN(2) == 0
	if r.IntN(3) != 0 {
		return
	}
	for range 1 + r.IntN(2) {
		sc.faults = append(sc.faults, fault{kind: fGateFail, node: r.IntN(sc.nodes),
			at: uniform(r, sc.firstFault, sc.lastFaultAt-sc.ttl), dur: uniform(r, sc.ttl/3, 2*sc.ttl)})
	}
}

func (sc *scenario) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nodes=%d ttl=%v grace=%v margin=%v (model limit margin+grace=%v) max_transfers=%d\n",
		sc.nodes, sc.ttl, sc.grace, sc.margin, sc.modelLimit, sc.maxTransfers)
	if sc.gated {
		fmt.Fprintf(&b, "runner gate: on (slew 0), mailman starts with its node: %v\n", sc.mailmanFirst)
	}
	fmt.Fprintf(&b, "clock rates=%.4f posts=%d quiet_at=%v end=%v sync=%v runner_sleep=%v proc=%v..%v long_proc=%.3f recovery=%v\n",
		sc.rates, sc.posts, sc.quietAt, sc.end, sc.syncEvery, sc.runnerSleep, sc.procMin, sc.procMax, sc.longProcP, sc.recovery)
	fmt.Fprintf(&b, "store: zero_latency=%.2f latency<=%v spikes=%.4f<=%v lost_answer=%.4f transient=%.4f conflict=%.2f\n",
		sc.latZeroP, sc.latMax, sc.spikeP, sc.spikeMax, sc.lostP, sc.transientP, sc.conflictP)
	for _, f := range sc.faults {
		fmt.Fprintf(&b, "fault: %s\n", f)
	}
	return b.String()
}
