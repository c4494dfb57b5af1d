package fencesim

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// Stats is what one run observed.
type Stats struct {
	// Events is the number of scheduler events run.
	Events int
	// Entries counts entries created; Finished those Mailman finished.
	Entries, Finished int
	// Fences counts self-fences (quarantines of known entries).
	Fences int
	// LostAnswers counts writes that committed but answered an error.
	LostAnswers int
	// LostYoung counts entries lost with a wiped disk within the lag bound.
	LostYoung int
	// Drains counts drains that completed.
	Drains int
	// DrainCancels counts drains the operator cancelled (CancelDrain).
	DrainCancels int
	// RestoredFinished counts entries restored after Mailman finished them
	// somewhere (re-runs of entries in flight at a fence or crash).
	RestoredFinished int
	// CrossNode counts entries dequeued on more than one node; Reruns
	// entries dequeued more than once.
	CrossNode, Reruns int
	// Beyond is true when a fault beyond the timing model happened.
	Beyond bool
	// BeyondG2 counts entries seen as .pck on two nodes beyond the model;
	// with the runner gate, only entries in flight (.bak) on a node when
	// its pause or sidecar kill began count (any other is a violation),
	// and seen means visible and admitted.
	BeyondG2 int
	// Gated says the run's runners honoured the runner gate.
	Gated bool
	// InFlightBeyond counts the entries in flight (.bak) on a node when a
	// fault beyond the model began there; InFlightDup those of them that
	// were dequeued on two nodes.
	InFlightBeyond, InFlightDup int
	// ClosedPolls counts runner passes that found .pck files but the gate
	// admitted none; GateNewRuns dequeues admitted while the gate was not
	// open (entries born after its cutoff, or after since while
	// settling); GateWriteErrs gate records that could not be written.
	ClosedPolls, GateNewRuns, GateWriteErrs int
	// G5Checked counts crashes whose failover was timed; G5Worst is the
	// slowest, as a fraction of the allowed bound.
	G5Checked int
	G5Worst   float64
	// Preserved counts entries a takeover preserved in bad (G6), and
	// MaxTransfers is the most transfers an entry restored as .pck had.
	Preserved, MaxTransfers int
	// TraceEvents counts trace records.
	TraceEvents int
	// Digest hashes the whole trace: within one process, equal digests
	// mean equal runs.
	Digest uint64
}

// Violation is a broken guarantee, with everything needed to replay it.
type Violation struct {
	// Seed replays the run.
	Seed uint64
	// Guarantee is G1, G2, G3, G5, G6, "gate" (an entry uploaded or
	// restored that the published gate record's cutoff does not cover) or
	// "sim".
	Guarantee string
	// At is the sim time of the violation.
	At time.Duration
	// Msg says what broke.
	Msg string
	// Report is the scenario and the trace, ready to print.
	Report string
}

func (v *Violation) Error() string {
	return fmt.Sprintf("seed %d: %s violated at %.3fs: %s", v.Seed, v.Guarantee, v.At.Seconds(), v.Msg)
}

// Result is the outcome of one seed.
type Result struct {
	Seed      uint64
	Violation *Violation
	Stats     Stats
}

type world struct {
	seed   uint64
	opt    Options
	sc     *scenario
	rng    *rand.Rand
	now    time.Duration
	seq    uint64
	q      eventQueue
	cur    *task
	idle   []*worker
	st     *simStore
	nodes  []*simNode
	layout fence.Layout
	or     *oracle
	tr     *tracer
	fail   *Violation
	stats  Stats
	// gated: Mailman's runners honour the runner gate, and it is the
	// fence (fence.Config.RunnerGate).
	gated bool
	// beyondAt is when the run went beyond the timing model.
	beyondAt time.Duration
	beyondG2 map[fence.Entry]bool
	// inFlight: entries in flight on a node when a fault beyond the model
	// began there.
	inFlight    map[fence.Entry]bool
	lastDisturb time.Duration
	// nextSettleCheck and pendingG5 decide an early end.
	nextSettleCheck time.Duration
	// nextExposureCheck paces the continuous G1 check.
	nextExposureCheck time.Duration
	pendingG5         int
	ids               int
}

// Run simulates one seed.
func Run(seed uint64, opt Options) Result {
	if opt.Trace <= 0 {
		opt.Trace = 50
	}
	w := &world{seed: seed, opt: opt, rng: rand.New(rand.NewPCG(seed, 0x5eed)), layout: fence.NewLayout("mm"),
		beyondAt: math.MaxInt64, beyondG2: make(map[fence.Entry]bool), inFlight: make(map[fence.Entry]bool), gated: opt.RunnerGate}
	w.sc = newScenario(w.rng, opt)
	if w.gated {
		// Drawn apart, so that a seed's scenario is the same with the
		// gate on and off.
		w.sc.drawGate(rand.New(rand.NewPCG(seed, 0x6a7e)))
	}
	w.tr = newTracer()
	w.or = newOracle(w)
	w.st = newSimStore(w)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < w.sc.nodes; i++ {
		sn := &simNode{w: w, idx: i, id: fmt.Sprintf("node%d", i)}
		sn.clock = &nodeClock{w: w, rate: w.sc.rates[i], base: base.Add(time.Duration(w.rng.Int64N(int64(time.Hour))))}
		sn.disk = newDisk(sn)
		w.nodes = append(w.nodes, sn)
	}
	for _, sn := range w.nodes {
		w.at(time.Duration(w.rng.Int64N(int64(w.sc.ttl/3))), func() { sn.startNode(false) })
	}
	w.schedulePosts()
	for _, f := range w.sc.faults {
		w.at(f.at, func() { w.apply(f) })
	}
	w.loop()
	w.finish()
	if opt.Dump != nil {
		fmt.Fprintf(opt.Dump, "seed %d\n%s", seed, w.sc)
		for _, ev := range w.tr.last(len(w.tr.ring)) {
			fmt.Fprintln(opt.Dump, w.format(ev))
		}
	}
	w.tr.release()
	return Result{Seed: seed, Violation: w.fail, Stats: w.stats}
}

func (w *world) loop() {
	defer w.shutdown()
	for w.q.Len() > 0 && w.fail == nil {
		ev := heap.Pop(&w.q).(*event)
		if ev.at > w.sc.end || ev.at > w.sc.quietAt && w.settled(ev.at) {
			break
		}
		w.now = ev.at
		if sn := ev.node; sn != nil {
			if until := sn.pausedUntil(ev.class); until > w.now {
				ev.at = until
				w.push(ev)
				continue
			}
		}
		ev.fn()
		w.stats.Events++
		if ev.node != nil {
			ev.node.updateMirrorable()
		} else {
			for _, sn := range w.nodes {
				sn.updateMirrorable()
			}
		}
		if w.gated {
			// Admission changes with time and records, not only files.
			w.or.recheckG2()
		}
		if w.now >= w.nextExposureCheck {
			w.nextExposureCheck = w.now + w.sc.ttl/2
			w.checkExposure()
		}
	}
	if w.fail == nil {
		w.finalCheck()
	}
}

// settled reports, once a TTL in the quiet period, whether the run may
// end early: every entry finished (or preserved, or lost young) and no
// failover still being timed.
func (w *world) settled(at time.Duration) bool {
	if at < w.nextSettleCheck {
		return false
	}
	w.nextSettleCheck = at + w.sc.ttl
	if w.pendingG5 > 0 {
		return false
	}
	for _, es := range w.or.all {
		if es.term == termNone {
			return false
		}
	}
	return true
}

// shutdown ends every goroutine the run started.
func (w *world) shutdown() {
	for _, sn := range w.nodes {
		if sn.inc != nil {
			sn.inc.kill()
		}
	}
	for _, wk := range w.idle {
		close(wk.jobs)
	}
	w.idle = nil
}

func (w *world) finish() {
	w.stats.Entries = len(w.or.all)
	for _, es := range w.or.all {
		if es.term == termFinished {
			w.stats.Finished++
		}
	}
	w.stats.CrossNode, w.stats.Reruns = w.or.duplicates()
	w.stats.Beyond = w.beyondAt != math.MaxInt64
	w.stats.BeyondG2 = len(w.beyondG2)
	w.stats.Gated = w.gated
	w.stats.InFlightBeyond = len(w.inFlight)
	w.stats.InFlightDup = w.or.crossNodeOf(w.inFlight)
	w.stats.Digest = w.tr.hash
	w.stats.TraceEvents = w.tr.n
}

func (w *world) nodeName(i int) string {
	if i < 0 || i >= len(w.nodes) {
		return "?"
	}
	return w.nodes[i].id
}

// latency draws one leg of a store request.
func (w *world) latency() time.Duration {
	sc := w.sc
	if w.rng.Float64() < sc.spikeP {
		return uniform(w.rng, sc.latMax, sc.spikeMax)
	}
	if w.rng.Float64() < sc.latZeroP {
		return 0
	}
	return uniform(w.rng, 0, sc.latMax)
}

// unreachable reports whether node cannot reach the store now.
func (w *world) unreachable(node int) bool {
	for _, f := range w.sc.faults {
		if (f.kind == fOutage || f.kind == fPartition && f.node == node) && w.now >= f.at && w.now < f.at+f.dur {
			return true
		}
	}
	return false
}

// disturb marks a fault starting or ending, for G5's quiet windows.
func (w *world) disturb() { w.lastDisturb = w.now }

// goneBeyond marks the run beyond the timing model from at; inFlight are
// the entries the node's runners had in hand when the fault began.
func (w *world) goneBeyond(at time.Duration, why string, inFlight []fence.Entry) {
	for _, e := range inFlight {
		w.inFlight[e] = true
	}
	if at < w.beyondAt {
		w.beyondAt = at
		w.at(at, func() { w.tracef(-1, evFault, "beyond the timing model from here: %s", why) })
	}
}

// apply starts one fault.
func (w *world) apply(f fault) {
	sn := w.nodes[f.node]
	w.disturb()
	w.at(f.at+max(f.dur, 0), w.disturb)
	w.tracef(f.node, evFault, "FAULT %s", f)
	limit := w.sc.modelLimit
	switch f.kind {
	case fCrash, fCrashWipe:
		sn.crash(true, f.kind == fCrashWipe, f.dur)
		w.watchFailover(sn, f)
	case fRetire:
		sn.crash(true, false, -1)
		w.watchFailover(sn, f)
	case fCrashSidecar:
		if sn.retired || !sn.mailmanUp || sn.inc == nil {
			return
		}
		// A crash during a pause of the sidecar extends it: the sidecar
		// has not acted since the pause began.
		since := f.at
		inFlight := sn.disk.inFlight()
		if max(sn.pauseAll, sn.pauseSidecar) > f.at {
			since = min(since, sn.pausedSince)
			inFlight = append(inFlight, sn.inFlightAtPause...)
		}
		sn.crash(false, false, f.dur)
		inc0 := sn.incs
		w.at(max(since+limit, f.at), func() {
			inc := sn.inc
			if sn.mailmanUp && (inc == nil || sn.incs == inc0 || !inc.started && w.starting(inc)) {
				w.goneBeyond(max(since+limit, f.at), fmt.Sprintf("%s's sidecar down longer than margin+grace while its runners run", sn.id), inFlight)
			}
		})
	case fPause:
		sn.pauseBegins(f)
		sn.pauseAll = max(sn.pauseAll, f.at+f.dur)
		// A pause that begins during another extends it: the sidecar
		// has not run since the first began.
		if stall := max(sn.pauseAll, sn.pauseSidecar) - sn.pausedSince; stall > limit {
			w.goneBeyond(sn.pausedSince+limit, fmt.Sprintf("%s paused %v in a row > margin+grace %v", sn.id, stall, limit), sn.inFlightAtPause)
		}
	case fPauseSidecar:
		sn.pauseBegins(f)
		sn.pauseSidecar = max(sn.pauseSidecar, f.at+f.dur)
		if stall := max(sn.pauseAll, sn.pauseSidecar) - sn.pausedSince; stall > limit && sn.mailmanUp {
			w.goneBeyond(sn.pausedSince+limit, fmt.Sprintf("%s's sidecar paused %v in a row > margin+grace %v", sn.id, stall, limit), sn.inFlightAtPause)
		}
	case fPartition, fOutage, fGateFail:
		w.at(f.at+f.dur, func() { w.tracef(f.node, evFault, "FAULT END %s", faultNames[f.kind]) })
	case fDrain:
		if sn.retired || sn.inc == nil || !sn.inc.started || sn.draining {
			return
		}
		sn.draining = true
		inc := sn.inc
		inc.spawn("drain", func(ctx context.Context) { inc.n.StartDrain(ctx) }, nil)
		if w.opt.CancelDrain {
			w.at(w.now+uniform(w.rng, w.sc.ttl/10, 3*w.sc.ttl), func() { w.cancelDrain(sn) })
		}
	}
}

// cancelDrain is the operator's `mmsidecar drain -cancel` on sn: the
// node takes work again and its held entries go back to Mailman.
func (w *world) cancelDrain(sn *simNode) {
	if !sn.draining || sn.retired {
		return
	}
	sn.draining = false
	w.stats.DrainCancels++
	w.tracef(sn.idx, evFault, "FAULT drain cancelled")
	if inc := sn.inc; inc != nil && inc.started {
		inc.spawn("cancel drain", func(ctx context.Context) { inc.n.CancelDrain(ctx) }, nil)
	}
}

// starting reports whether inc has not written its first lease yet.
func (w *world) starting(inc *incarnation) bool {
	st, _ := inc.n.State()
	return st == fence.StateStarting
}

// schedulePosts spreads fresh posts over the run.
func (w *world) schedulePosts() {
	for i := 0; i < w.sc.posts; i++ {
		at := uniform(w.rng, w.sc.ttl, w.sc.quietAt)
		pick := w.rng.Uint64()
		w.at(at, func() {
			var up []*simNode
			for _, sn := range w.nodes {
				if sn.mailmanUp && !sn.draining && !sn.retired {
					up = append(up, sn)
				}
			}
			if len(up) > 0 {
				w.newEntry(up[pick%uint64(len(up))], "in")
			}
		})
	}
}

// newEntry writes a fresh entry into queue on sn, as Mailman does.
func (w *world) newEntry(sn *simNode, queue string) {
	w.ids++
	at := sn.clock.Now()
	base := fmt.Sprintf("%d.%06d+%040x", at.Unix(), at.Nanosecond()/1000, w.ids)
	e := fence.Entry{Queue: queue, Base: base, Kind: fence.KindPck}
	w.or.create(e, sn.idx)
	sn.disk.enqueue(e, []byte(fmt.Sprintf("entry %d born on %s", w.ids, sn.id)))
	w.traceEntry(sn.idx, evRunner, "enqueue", e)
}

// lastDisturbBefore is the last disturbance before f started.
func (w *world) lastDisturbBefore(f fault) time.Duration {
	last := time.Duration(0)
	for _, g := range w.sc.faults {
		if g.at < f.at {
			end := g.at + max(g.dur, 0)
			if g.kind == fDrain || g.kind == fRetire {
				end = w.sc.end
			}
			last = max(last, min(end, f.at))
		}
	}
	return last
}
