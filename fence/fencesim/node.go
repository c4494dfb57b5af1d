package fencesim

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

const (
	classSidecar = 1 // the coordinator and the mirror
	classRunner  = 2 // Mailman's runners
)

var queues = []string{"in", "pipeline", "out"}

// simNode is one machine: a disk, Mailman's runners and the current
// sidecar incarnation (a fence.Node and its loops).
type simNode struct {
	w     *world
	idx   int
	id    string
	clock *nodeClock
	disk  *disk
	inc   *incarnation
	incs  int

	crashes   int
	freshDisk bool // wiped and not started since
	mailmanUp bool
	mmGen     int
	busy      [3]bool
	// waiting: the runner found its queue empty and sleeps until a file
	// shows up (then it notices it within one sleep_time, as a polling
	// runner does).
	waiting [3]bool

	pauseAll     time.Duration // whole node paused until
	pauseSidecar time.Duration // sidecar alone paused until
	pausedSince  time.Duration // when the latest pause of the sidecar began
	// inFlightAtPause: the entries the runners had in hand (.bak) then.
	inFlightAtPause []fence.Entry
	// boot counts the kernel's boots: a whole-node crash reboots it.
	boot int
	// retired: stopped for good (crashed without restart, or drained).
	retired  bool
	draining bool

	// mirrorable: the sidecar could mirror (live gate, store reachable,
	// not paused) continuously since mirrorableSince.
	mirrorable      bool
	mirrorableSince time.Duration
}

// incarnation is one sidecar process on a node.
type incarnation struct {
	w         *world
	node      *simNode
	no        int
	n         *fence.Node
	st        *storeView
	stNoYield *storeView
	local     *localView
	dead      bool
	tasks     []*task
	fenceGen  uint64
	// closed: the last gate this process decided was closed (fenced).
	closed   bool
	started  bool
	startErr error
	// watchFn and watchEvery: the watchdog's event, allocated once.
	watchFn    func()
	watchEvery time.Duration
}

// at schedules fn for the node: it waits out pauses of its class.
func (sn *simNode) at(t time.Duration, class int, fn func()) {
	sn.w.push(&event{at: t, fn: fn, node: sn, class: class})
}

func (sn *simNode) pausedUntil(class int) time.Duration {
	u := sn.pauseAll
	if class == classSidecar && sn.pauseSidecar > u {
		u = sn.pauseSidecar
	}
	return u
}

// every returns d on the node's clock, give or take up to 5% (as the
// node's own loops jitter), as sim time.
func (sn *simNode) every(d time.Duration) time.Duration {
	d += time.Duration(sn.w.rng.Int64N(int64(d/10)+1)) - d/20
	return sn.clock.simDur(d)
}

// startSidecar starts a new incarnation: Start, then the loops; Mailman
// starts after it when withMailman (a whole-node start).
func (sn *simNode) startSidecar(fresh, withMailman bool) {
	w := sn.w
	if sn.retired || sn.inc != nil {
		return
	}
	sn.incs++
	sn.disk.restart()
	inc := &incarnation{w: w, node: sn, no: sn.incs}
	inc.st = &storeView{s: w.st, inc: inc}
	inc.stNoYield = &storeView{s: w.st, inc: inc, noYield: true}
	inc.local = &localView{d: sn.disk, inc: inc}
	sc := w.sc
	cfg := fence.Config{Node: sn.id, Layout: w.layout, TTL: sc.ttl, Grace: sc.grace, Margin: sc.margin,
		MaxTransfers: sc.maxTransfers, Concurrency: 1, Epochs: sn.disk, Gate: &sn.disk.gate, RunnerGate: w.gated}
	rnd := rand.New(rand.NewPCG(w.seed, uint64(sn.idx)<<32|uint64(sn.incs)))
	log := slog.New(&logHandler{w: w, node: sn.idx})
	n, err := fence.New(cfg, inc.st, inc.local, sn.clock, rnd, nil, log)
	if err != nil {
		panic(fmt.Sprintf("fencesim: config of seed %d: %v", w.seed, err))
	}
	inc.n = n
	sn.inc = inc
	w.tracef(sn.idx, evFault, "sidecar incarnation %d starts (fresh disk %v, with mailman %v)", inc.no, fresh, withMailman)
	inc.spawn("start", func(ctx context.Context) { inc.startErr = n.Start(ctx, fresh) }, func() {
		if inc.startErr != nil {
			w.tracef(sn.idx, evFault, "sidecar start failed, process exits: %v", inc.startErr)
			inc.kill()
			sn.inc = nil
			gen := sn.crashes
			sn.at(w.now+time.Second, classSidecar, func() {
				if sn.crashes == gen { // else a crash since owns the restart
					sn.restart(fresh)
				}
			})
			return
		}
		inc.started = true
		sn.freshDisk = false
		w.tracef(sn.idx, evNote, "sidecar started")
		inc.loopRenew()
		inc.loopSettle()
		inc.loopWatchdog()
		inc.loopScan()
		inc.loopSync()
		if withMailman {
			sn.startMailman()
		}
		if sn.draining && !w.opt.AbandonDrain {
			// The operator's drain outlives a sidecar restart.
			inc.spawn("drain", func(ctx context.Context) { inc.n.StartDrain(ctx) }, nil)
		}
	})
}

func (inc *incarnation) loopRenew() {
	if inc.dead {
		return
	}
	inc.spawn("renew", func(ctx context.Context) { _ = inc.n.Renew(ctx) }, func() {
		d := inc.w.sc.ttl / 3
		if st, _ := inc.n.State(); st == fence.StateFenced {
			d /= 3
		}
		inc.node.at(inc.w.now+inc.node.every(d), classSidecar, inc.loopRenew)
	})
}

func (inc *incarnation) loopSettle() {
	if inc.dead {
		return
	}
	inc.spawn("settle", func(ctx context.Context) { _ = inc.n.SettleStep(ctx) }, func() {
		inc.node.at(inc.w.now+inc.node.every(inc.w.sc.watchdog), classSidecar, inc.loopSettle)
	})
}

func (inc *incarnation) loopWatchdog() {
	if inc.dead {
		return
	}
	inc.n.CheckFence(context.Background())
	if inc.watchFn == nil {
		inc.watchFn = inc.loopWatchdog
		inc.watchEvery = inc.node.clock.simDur(inc.w.sc.watchdog)
	}
	inc.node.at(inc.w.now+inc.watchEvery, classSidecar, inc.watchFn)
}

func (inc *incarnation) loopScan() {
	if inc.dead {
		return
	}
	n := inc.n
	inc.spawn("scan", n.ScanStep, func() {
		sn := inc.node
		if sn.draining && n.Drain().Done {
			sn.drained()
			return
		}
		if n.TakeoverPending() {
			// As Run does: the next round follows at once.
			sn.at(inc.w.now, classSidecar, inc.loopScan)
			return
		}
		d := inc.w.sc.ttl / 3
		busy := sn.draining
		for _, p := range n.Peers() {
			if p.Lease.State == fence.StateDraining {
				busy = true
			}
		}
		if busy {
			d /= 2
		}
		next := inc.w.now + sn.every(d)
		if dl, ok := n.UntilPeerDeadline(); ok {
			// As NextScan does: a silent peer is judged on time.
			next = min(next, inc.w.now+sn.clock.simDur(dl))
		}
		sn.at(next, classSidecar, inc.loopScan)
	})
}

func (inc *incarnation) loopSync() {
	if inc.dead {
		return
	}
	if !inc.node.disk.syncDue(inc.n.Gate()) {
		inc.node.at(inc.w.now+inc.node.every(inc.w.sc.syncEvery), classSidecar, inc.loopSync)
		return
	}
	inc.spawn("sync", func(ctx context.Context) { inc.node.disk.sync(ctx, inc) }, func() {
		inc.node.at(inc.w.now+inc.node.every(inc.w.sc.syncEvery), classSidecar, inc.loopSync)
	})
}

// startNode starts the whole node: the sidecar, and Mailman once it has
// started; with the runner gate and the relaxed start order, Mailman at
// once (its runners then wait for the gate record).
func (sn *simNode) startNode(fresh bool) {
	if sn.w.gated && sn.w.sc.mailmanFirst {
		sn.startMailman()
	}
	sn.startSidecar(fresh, !sn.mailmanUp)
}

// restart starts a new sidecar process, and Mailman if it is not running.
func (sn *simNode) restart(fresh bool) {
	if sn.mailmanUp {
		sn.startSidecar(fresh, false)
		return
	}
	sn.startNode(fresh)
}

// pauseBegins notes, when f starts a pause of the sidecar (not one that
// extends another), when it began and what the runners had in hand.
func (sn *simNode) pauseBegins(f fault) {
	if sn.pauseAll <= f.at && sn.pauseSidecar <= f.at {
		sn.pausedSince = f.at
		sn.inFlightAtPause = sn.disk.inFlight()
	}
}

// startMailman runs Mailman's recovery and starts its runners.
func (sn *simNode) startMailman() {
	if sn.mailmanUp || sn.retired {
		return
	}
	if sn.w.sc.recovery {
		sn.disk.recover()
	}
	sn.mailmanUp = true
	sn.mmGen++
	sn.busy = [3]bool{}
	sn.waiting = [3]bool{}
	sn.w.tracef(sn.idx, evFault, "mailman starts")
	sn.w.or.mailman(sn.idx, true)
	gen := sn.mmGen
	for q := range queues {
		sn.at(sn.w.now+time.Duration(sn.w.rng.Int64N(int64(sn.w.sc.runnerSleep))), classRunner, func() { sn.poll(q, gen) })
	}
}

func (sn *simNode) stopMailman() {
	if !sn.mailmanUp {
		return
	}
	sn.mailmanUp = false
	sn.mmGen++
	sn.w.or.mailman(sn.idx, false)
}

// poll is one runner iteration: dequeue the oldest .pck, or sleep.
func (sn *simNode) poll(q, gen int) {
	w := sn.w
	if sn.mmGen != gen || sn.busy[q] {
		return
	}
	e, ok, closed := sn.disk.oldest(queues[q])
	if !ok && closed {
		// The gate keeps every .pck from the runner: it idles a
		// sleep_time and lists again.
		w.stats.ClosedPolls++
		sn.at(w.now+sn.clock.simDur(w.sc.runnerSleep), classRunner, func() { sn.poll(q, gen) })
		return
	}
	if !ok {
		sn.waiting[q] = true
		return
	}
	if w.gated && !sn.disk.gate.rec.open(sn.clock.Now(), sn.boot) {
		w.stats.GateNewRuns++
	}
	sn.disk.dequeue(e)
	w.or.run(e, sn.idx)
	w.traceEntry(sn.idx, evRunner, "dequeue", e)
	sn.busy[q] = true
	d := w.sc.procMin + time.Duration(w.rng.Int64N(int64(w.sc.procMax-w.sc.procMin)))
	if w.rng.Float64() < w.sc.longProcP {
		d = w.sc.ttl + time.Duration(w.rng.Int64N(int64(2*w.sc.ttl)))
	}
	sn.at(w.now+sn.clock.simDur(d), classRunner, func() { sn.complete(q, gen, e) })
}

// wake tells queue's runner that a .pck appeared: it sees it at its next
// listing, within one sleep_time.
func (sn *simNode) wake(queue string) {
	for q, name := range queues {
		if name != queue || !sn.mailmanUp || !sn.waiting[q] {
			continue
		}
		sn.waiting[q] = false
		gen := sn.mmGen
		d := time.Duration(sn.w.rng.Int64N(int64(sn.w.sc.runnerSleep)))
		sn.at(sn.w.now+sn.clock.simDur(d), classRunner, func() { sn.poll(q, gen) })
	}
}

// complete finishes e: its successor goes into the next queue first.
func (sn *simNode) complete(q, gen int, e fence.Entry) {
	w := sn.w
	if sn.mmGen != gen {
		return
	}
	sn.busy[q] = false
	if q+1 < len(queues) {
		w.newEntry(sn, queues[q+1])
	}
	if f := sn.disk.files[e]; f != nil && f.bak {
		sn.disk.finish(e)
		w.traceEntry(sn.idx, evRunner, "finish", e)
	} else {
		// Someone moved the .bak away while the runner had it: the work
		// is done, the unlink fails, the moved file will run again.
		w.or.finished(e, sn.idx)
		w.traceEntry(sn.idx, evRunner, "finish (its .bak was moved away)", e)
	}
	sn.poll(q, gen)
}

// crash kills the whole node (or only its sidecar); restart < 0 never
// brings it back.
func (sn *simNode) crash(whole, wipe bool, restart time.Duration) {
	w := sn.w
	if sn.retired {
		return
	}
	w.tracef(sn.idx, evFault, "CRASH whole=%v wipe=%v restart=%v", whole, wipe, restart)
	if sn.inc != nil {
		sn.inc.kill()
		sn.inc = nil
	}
	if whole {
		sn.stopMailman()
		sn.boot++
	}
	if wipe {
		sn.disk.wipe()
		sn.freshDisk = true
	}
	if restart < 0 {
		sn.retired = true
		sn.stopMailman()
		return
	}
	sn.crashes++
	gen := sn.crashes
	w.at(w.now+restart, func() {
		if sn.crashes != gen {
			return // a later crash owns the restart
		}
		w.disturb()
		sn.restart(wipe || sn.freshDisk)
	})
}

// drained is the operator stopping a node whose drain is done, or
// leaving it idle.
func (sn *simNode) drained() {
	w := sn.w
	w.stats.Drains++
	w.tracef(sn.idx, evFault, "drain done")
	if sn.inc != nil {
		// The operator stops the sidecar: Stop fences it (nothing is left
		// to quarantine after a finished drain), then the process ends.
		sn.inc.n.Stop(context.Background())
		sn.inc.kill()
		sn.inc = nil
	}
	sn.stopMailman()
	sn.retired = true
}

// updateMirrorable tracks whether the sidecar can mirror now (G1).
func (sn *simNode) updateMirrorable() {
	w := sn.w
	ok := sn.inc != nil && !sn.inc.dead && sn.pausedUntil(classSidecar) <= w.now && !w.unreachable(sn.idx)
	if ok {
		ok = sn.inc.n.Gate().Writable
	}
	if ok != sn.mirrorable {
		sn.mirrorable = ok
		sn.mirrorableSince = w.now
	}
}
