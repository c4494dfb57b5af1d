package fencesim

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"
)

// The simulator is single-threaded in effect: one scheduler goroutine pops
// events in (time, sequence) order, and the real fence code runs in task
// goroutines that hold the baton one at a time. A task gives the baton
// back only at the simulator's own yield points (store latency, a clock
// wait) or when it ends, so every interleaving is a function of the seed.

type event struct {
	at  time.Duration
	seq uint64
	fn  func()
	// node and class, when set, make the event wait out the node's pauses.
	node  *simNode
	class int
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*q = old[:n-1]
	return e
}

// at schedules fn at sim time t (never in the past).
func (w *world) at(t time.Duration, fn func()) { w.push(&event{at: t, fn: fn}) }

func (w *world) push(ev *event) {
	if ev.at < w.now {
		ev.at = w.now
	}
	w.seq++
	ev.seq = w.seq
	heap.Push(&w.q, ev)
}

// task is one step of a node's loop (Renew, Scan+Takeover+..., Sync,
// Start), run by the real fence code on a worker goroutine.
type task struct {
	w       *world
	inc     *incarnation
	name    string
	fn      func(context.Context)
	ctx     context.Context
	wk      *worker
	resume  chan bool // scheduler → task: false resumes, true kills
	report  chan report
	then    func()
	lastCtx context.Context
	// owners maps the owner contexts (derived from the node's live
	// context) this task used to the fence generation they were born in.
	owners   map[context.Context]uint64
	finished bool
}

type report struct {
	done  bool
	alive bool // the worker goroutine survived the task
	until time.Duration
}

// worker is a goroutine that runs tasks one after another, so that the
// fence code's deep stacks are grown once, not once per step.
type worker struct {
	jobs chan *task
}

func (wk *worker) loop() {
	for t := range wk.jobs {
		t.run()
	}
}

func (t *task) run() {
	ok := false
	defer func() { t.report <- report{done: true, alive: ok} }()
	t.fn(t.ctx)
	ok = true
}

// spawn starts fn as a task of inc and runs it until it first yields;
// then runs on the scheduler when the task ends.
func (inc *incarnation) spawn(name string, fn func(ctx context.Context), then func()) {
	w := inc.w
	t := &task{w: w, inc: inc, name: name, fn: fn, ctx: context.Background(),
		resume: make(chan bool), report: make(chan report), then: then}
	inc.tasks = append(inc.tasks, t)
	if n := len(w.idle); n > 0 {
		t.wk = w.idle[n-1]
		w.idle = w.idle[:n-1]
	} else {
		t.wk = &worker{jobs: make(chan *task)}
		go t.wk.loop()
	}
	w.cur = t
	t.wk.jobs <- t
	w.await(t)
}

// runTask hands the baton back to a suspended t.
func (w *world) runTask(t *task) {
	w.cur = t
	t.resume <- false
	w.await(t)
}

// await waits until the running task t yields or ends.
func (w *world) await(t *task) {
	r := <-t.report
	w.cur = nil
	if r.done {
		t.finish(r.alive)
		if t.then != nil && !t.inc.dead {
			t.then()
		}
		return
	}
	t.inc.node.at(r.until, classSidecar, func() {
		if t.finished || t.inc.dead {
			return
		}
		w.runTask(t)
	})
}

func (t *task) finish(alive bool) {
	t.finished = true
	t.owners = nil
	if alive {
		t.w.idle = append(t.w.idle, t.wk)
	}
	tasks := t.inc.tasks[:0]
	for _, o := range t.inc.tasks {
		if o != t {
			tasks = append(tasks, o)
		}
	}
	t.inc.tasks = tasks
}

// sleep blocks the running task for d of sim time. On the scheduler
// goroutine (synchronous steps) it returns at once.
func (w *world) sleep(d time.Duration) {
	t := w.cur
	if t == nil {
		return
	}
	if t.inc.dead {
		runtime.Goexit()
	}
	if d <= 0 {
		return
	}
	t.report <- report{until: w.now + d}
	if <-t.resume {
		runtime.Goexit()
	}
	t.syncCancel()
}

// syncCancel waits, after a resume, until the context the task last used
// is cancelled if a fence since its birth cancelled it: the fence code
// cancels owner contexts through context.AfterFunc goroutines, and the
// code that resumes must see that deterministically.
func (t *task) syncCancel() {
	ctx := t.lastCtx
	if ctx == nil {
		return
	}
	g, ok := t.owners[ctx]
	if !ok || g >= t.inc.fenceGen {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for ctx.Err() == nil {
		if time.Now().After(deadline) {
			panic(fmt.Sprintf("fencesim: %s/%s: owner context not cancelled 10s after a fence", t.inc.node.id, t.name))
		}
		runtime.Gosched()
	}
}

// enter is called first by every store, disk and clock operation of an
// incarnation. A dead incarnation's goroutine ends here. It reports
// whether ctx counts as cancelled: cancelled for real, or an owner
// context born before the node's latest fence.
func (inc *incarnation) enter(ctx context.Context) bool {
	t := inc.w.cur
	if inc.dead {
		if t == nil {
			panic("fencesim: dead incarnation " + inc.node.id + " called on the scheduler")
		}
		runtime.Goexit()
	}
	if ctx == nil || t == nil {
		return false
	}
	t.lastCtx = ctx
	return inc.cancelled(ctx)
}

func (inc *incarnation) cancelled(ctx context.Context) bool {
	t := inc.w.cur
	if ctx == nil || t == nil {
		return false
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return true
	}
	if ctx == t.ctx {
		return false
	}
	if _, ok := ctx.Deadline(); ok {
		// Renew's per-call timeout runs on the real clock: ignored.
		return false
	}
	if t.owners == nil {
		t.owners = make(map[context.Context]uint64)
	}
	g, ok := t.owners[ctx]
	if !ok {
		t.owners[ctx] = inc.fenceGen
		return false
	}
	return g < inc.fenceGen
}

// kill ends every task of inc: suspended goroutines unwind with
// runtime.Goexit, and the scheduler waits for each to be gone.
func (inc *incarnation) kill() {
	if inc.dead {
		return
	}
	inc.dead = true
	w := inc.w
	for len(inc.tasks) > 0 {
		t := inc.tasks[0]
		w.cur = t
		t.resume <- true
		r := <-t.report
		if !r.done {
			panic("fencesim: killed task yielded")
		}
		w.cur = nil
		t.finish(r.alive)
	}
}

// nodeClock is a node's fence.Clock: Now runs at the node's own rate.
type nodeClock struct {
	w    *world
	rate float64
	base time.Time
}

// Now returns the node's reading of the sim clock.
func (c *nodeClock) Now() time.Time {
	return c.base.Add(time.Duration(float64(c.w.now) * c.rate))
}

// After waits d of the node's time (as sim time) and returns a channel
// that already holds the time.
func (c *nodeClock) After(d time.Duration) <-chan time.Time {
	c.w.sleep(c.simDur(d))
	ch := make(chan time.Time, 1)
	ch <- c.Now()
	return ch
}

// simDur converts a duration on the node's clock to sim time.
func (c *nodeClock) simDur(d time.Duration) time.Duration {
	return time.Duration(float64(d)/c.rate) + 1
}
