package fencetest

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// Local is an in-memory model of one node's queue directories, hold area
// and mirror, implementing fence.Local. Mailman's side is driven by
// Enqueue, Dequeue and Finish; the mirror's by Sync.
type Local struct {
	mu     sync.Mutex
	node   string
	layout fence.Layout
	st     store.Store
	gate   func() fence.Gate
	files  map[fence.Entry]*file
	held   map[fence.Entry][]byte
	keys   map[fence.Entry]string
	gone   map[fence.Entry]string
	stages map[fence.Entry]int
	since  func() time.Time
}

type file struct {
	data []byte
	bak  bool
}

// NewLocal returns an empty node model.
func NewLocal(node string, layout fence.Layout, st store.Store, gate func() fence.Gate) *Local {
	l := &Local{node: node, layout: layout, st: st, gate: gate}
	l.Wipe()
	return l
}

// Wipe forgets everything, as a node whose disk was lost.
func (l *Local) Wipe() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.files = make(map[fence.Entry]*file)
	l.held = make(map[fence.Entry][]byte)
	l.keys = make(map[fence.Entry]string)
	l.gone = make(map[fence.Entry]string)
	l.stages = make(map[fence.Entry]int)
}

// SetGate replaces the gate function (a restarted node has a new coordinator).
func (l *Local) SetGate(g func() fence.Gate) {
	l.mu.Lock()
	l.gate = g
	l.mu.Unlock()
}

// Enqueue writes a new Mailman-visible .pck.
func (l *Local) Enqueue(e fence.Entry, data []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.files[e] = &file{data: data}
}

// Dequeue renames e's .pck to .bak, as a runner does; false if e is not
// visible as a .pck.
func (l *Local) Dequeue(e fence.Entry) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.files[e]
	if f == nil || f.bak {
		return false
	}
	f.bak = true
	return true
}

// Finish removes e's .bak: the runner is done with it.
func (l *Local) Finish(e fence.Entry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.files[e]; f != nil && f.bak {
		delete(l.files, e)
		if k := l.keys[e]; k != "" {
			l.gone[e] = k
			delete(l.keys, e)
		}
	}
}

// Visible returns the entries visible to Mailman's runners as .pck.
func (l *Local) Visible() []fence.Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []fence.Entry
	for e, f := range l.files {
		if !f.bak {
			out = append(out, e)
		}
	}
	sortEntries(out)
	return out
}

// Sync mirrors every unmirrored local entry while the gate is open, holds
// every .pck while draining, and deletes copies of finished entries.
func (l *Local) Sync(ctx context.Context) error {
	g := l.gate()
	if g.Draining {
		l.holdQueued()
	}
	l.mu.Lock()
	var todo []fence.Entry
	for e := range l.files {
		if l.keys[e] == "" {
			todo = append(todo, e)
		}
	}
	gone := l.gone
	l.gone = make(map[fence.Entry]string)
	l.mu.Unlock()
	for _, k := range gone {
		if err := l.st.Delete(ctx, k); err != nil {
			return err
		}
	}
	if !g.Writable {
		return nil
	}
	sortEntries(todo)
	for _, e := range todo {
		l.mu.Lock()
		f := l.files[e]
		l.mu.Unlock()
		if f == nil {
			continue
		}
		key := l.layout.MirrorKey(l.node, g.Epoch, e)
		if _, err := store.PutBytes(ctx, l.st, key, f.data, store.Condition{}); err != nil {
			return err
		}
		l.mu.Lock()
		if _, still := l.files[e]; still {
			l.keys[e] = key
		} else {
			l.gone[e] = key
		}
		l.mu.Unlock()
	}
	return nil
}

// holdQueued holds every queued entry (not those in flight), as the
// runner does while draining.
func (l *Local) holdQueued() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for e, f := range l.files {
		if !f.bak {
			l.held[e] = f.data
			delete(l.files, e)
		}
	}
}

// Quarantine implements fence.Local.
func (l *Local) Quarantine(ctx context.Context, all bool) ([]fence.Entry, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var moved []fence.Entry
	for e, f := range l.files {
		if !all && (f.bak || l.keys[e] == "") {
			continue
		}
		l.held[e] = f.data
		delete(l.files, e)
		moved = append(moved, e)
	}
	sortEntries(moved)
	return moved, nil
}

// SetHoldSince sets where HoldOlder reads the settling rule's start
// (Gate.Since); unset, it holds every entry that is not in flight.
func (l *Local) SetHoldSince(since func() time.Time) {
	l.mu.Lock()
	l.since = since
	l.mu.Unlock()
}

// HoldOlder implements fence.Local: the node's clock is taken as wall
// time, so an entry is born at its base's time on that clock.
func (l *Local) HoldOlder(ctx context.Context) (held, inFlight []fence.Entry, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	since := time.Unix(1<<40, 0)
	if l.since != nil {
		since = l.since()
	}
	for e, f := range l.files {
		if !e.Born().After(since) {
			if f.bak {
				inFlight = append(inFlight, e)
				continue
			}
			l.held[e] = f.data
			delete(l.files, e)
			held = append(held, e)
		}
	}
	sortEntries(held)
	sortEntries(inFlight)
	return held, inFlight, nil
}

// Hold implements fence.Local.
func (l *Local) Hold(e fence.Entry) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.files[e]
	if f == nil || f.bak {
		return false, nil
	}
	l.held[e] = f.data
	delete(l.files, e)
	return true, nil
}

// Recover renames every .bak back to .pck, as Mailman's runners do when
// they start.
func (l *Local) Recover() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range l.files {
		f.bak = false
	}
}

// Held implements fence.Local.
func (l *Local) Held() []fence.Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]fence.Entry, 0, len(l.held))
	for e := range l.held {
		out = append(out, e)
	}
	sortEntries(out)
	return out
}

// Stage implements fence.Local.
func (l *Local) Stage(e fence.Entry, data []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stages[e]++
	if _, ok := l.files[e]; ok {
		return nil
	}
	if _, ok := l.held[e]; !ok {
		l.held[e] = append([]byte(nil), data...)
	}
	return nil
}

// Stages says how often e was staged since the last Wipe: a takeover
// or handoff stages an entry once.
func (l *Local) Stages(e fence.Entry) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stages[e]
}

// Mirror implements fence.Local.
func (l *Local) Mirror(ctx context.Context, e fence.Entry) (string, error) {
	g := l.gate()
	if !g.Writable {
		return "", &store.OpError{Op: "put", Key: e.String(), Kind: store.KindTransient, Code: "fenced", Err: fmt.Errorf("gate closed")}
	}
	l.mu.Lock()
	data, isHeld := l.held[e]
	if f, ok := l.files[e]; ok && !isHeld {
		data = f.data
	}
	old := l.keys[e]
	l.mu.Unlock()
	if old != "" {
		if r, ok := l.layout.ParseMirrorKey(old); ok && r.Epoch >= g.OwnFrom {
			return old, nil
		}
	}
	key := l.layout.MirrorKey(l.node, g.Epoch, e)
	if _, err := store.PutBytes(ctx, l.st, key, data, store.Condition{}); err != nil {
		return "", err
	}
	l.mu.Lock()
	l.keys[e] = key
	l.mu.Unlock()
	if old != "" && old != key {
		if err := l.st.Delete(ctx, old); err != nil {
			return "", err
		}
	}
	return key, nil
}

// Release implements fence.Local.
func (l *Local) Release(ctx context.Context, e fence.Entry) error {
	l.mu.Lock()
	_, visible := l.files[e]
	_, isHeld := l.held[e]
	l.mu.Unlock()
	if visible && !isHeld {
		// Already in its queue directory: it needs a copy at an epoch
		// of this node's, since the caller deletes the old one next.
		_, err := l.Mirror(ctx, e)
		return err
	}
	if !isHeld {
		return fmt.Errorf("release %s: not held", e)
	}
	if _, err := l.Mirror(ctx, e); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.files[e] = &file{data: l.held[e]}
	delete(l.held, e)
	return nil
}

// Drop implements fence.Local.
func (l *Local) Drop(e fence.Entry) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.held, e)
	delete(l.keys, e)
	return nil
}

// Has implements fence.Local.
func (l *Local) Has(e fence.Entry) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, f := l.files[e]
	_, h := l.held[e]
	return f || h
}

// Counts implements fence.Local.
func (l *Local) Counts() fence.Counts {
	l.mu.Lock()
	defer l.mu.Unlock()
	var c fence.Counts
	for e, f := range l.files {
		if f.bak {
			c.Bak++
		} else {
			c.Pck++
		}
		if l.keys[e] == "" {
			c.Unmirrored++
		}
	}
	c.Held = len(l.held)
	return c
}

func sortEntries(es []fence.Entry) {
	sort.Slice(es, func(i, j int) bool {
		if es[i].Queue != es[j].Queue {
			return es[i].Queue < es[j].Queue
		}
		return es[i].Base < es[j].Base
	})
}
