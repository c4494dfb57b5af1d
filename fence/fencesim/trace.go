package fencesim

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// Trace events are recorded cheaply (no formatting) into a ring and
// formatted only when a violation is printed. Every event also feeds a
// running hash, so a replay can be checked for exact equality.

type evKind uint8

const (
	evStore evKind = iota + 1
	evWrite
	evDisk
	evRunner
	evFault
	evLog
	evNote
)

type tev struct {
	at    time.Duration
	node  int
	kind  evKind
	op    string
	key   string
	res   string
	data  []byte
	cond  uint8 // 0 unconditional, 1 if-absent, 2 if-match
	entry fence.Entry
	rec   *slog.Record
}

type tracer struct {
	ring []tev
	n    int // events recorded
	hash uint64
}

// Rings are big; they are kept on a free list that the garbage collector
// does not empty (a sync.Pool would, and reallocating them is costly
// under the race detector).
var rings struct {
	mu   sync.Mutex
	free [][]tev
}

const ringSize = 1 << 14

func newTracer() *tracer {
	rings.mu.Lock()
	defer rings.mu.Unlock()
	var r []tev
	if n := len(rings.free); n > 0 {
		r, rings.free = rings.free[n-1], rings.free[:n-1]
	} else {
		r = make([]tev, ringSize)
	}
	return &tracer{ring: r}
}

// release returns the ring for reuse.
func (t *tracer) release() {
	rings.mu.Lock()
	rings.free = append(rings.free, t.ring)
	rings.mu.Unlock()
	t.ring = nil
}

func (t *tracer) add(ev tev) {
	t.ring[t.n%len(t.ring)] = ev
	t.n++
	var h maphash.Hash
	h.SetSeed(digestSeed)
	var num [17]byte
	binary.LittleEndian.PutUint64(num[:8], uint64(ev.at))
	binary.LittleEndian.PutUint64(num[8:16], uint64(t.hash))
	num[16] = byte(ev.node)<<4 | byte(ev.kind)
	h.Write(num[:])
	h.WriteString(ev.op)
	h.WriteString(ev.key)
	h.WriteString(ev.res)
	h.WriteString(ev.entry.Base)
	if ev.rec != nil {
		h.WriteString(ev.rec.Message)
	}
	t.hash = h.Sum64()
}

// digestSeed makes digests comparable within one process (replays in
// the same test), which is what they are for.
var digestSeed = maphash.MakeSeed()

// last returns up to n most recent events, oldest first.
func (t *tracer) last(n int) []tev {
	if n > t.n {
		n = t.n
	}
	if n > len(t.ring) {
		n = len(t.ring)
	}
	out := make([]tev, 0, n)
	for i := t.n - n; i < t.n; i++ {
		out = append(out, t.ring[i%len(t.ring)])
	}
	return out
}

func (w *world) traceOp(node int, op, key, res string) {
	w.tr.add(tev{at: w.now, node: node, kind: evStore, op: op, key: key, res: res})
}

func (w *world) traceWrite(node int, key string, data []byte, cond store.Condition, res string) {
	c := uint8(0)
	switch {
	case cond.IfAbsent:
		c = 1
	case cond.IfMatch != "":
		c = 2
	}
	w.tr.add(tev{at: w.now, node: node, kind: evWrite, op: "put", key: key, data: data, cond: c, res: res})
}

// attrs returns a log event's attributes, without the node.
func (ev tev) attrs() []slog.Attr {
	var out []slog.Attr
	if ev.rec == nil {
		return nil
	}
	ev.rec.Attrs(func(a slog.Attr) bool {
		if a.Key != "node" {
			out = append(out, a)
		}
		return true
	})
	return out
}

func (w *world) traceEntry(node int, kind evKind, op string, e fence.Entry) {
	w.tr.add(tev{at: w.now, node: node, kind: kind, op: op, entry: e})
}

func (w *world) tracef(node int, kind evKind, format string, args ...any) {
	w.tr.add(tev{at: w.now, node: node, kind: kind, op: fmt.Sprintf(format, args...)})
}

// mentions reports whether ev concerns entry e.
func (w *world) mentions(ev tev, e fence.Entry) bool {
	if ev.entry.Base == e.Base {
		return true
	}
	if ev.key != "" && strings.Contains(ev.key, e.Base) {
		return true
	}
	for _, a := range ev.attrs() {
		if strings.Contains(a.Value.String(), e.Base) {
			return true
		}
	}
	return false
}

func (w *world) format(ev tev) string {
	who := "world"
	if ev.node >= 0 && ev.node < len(w.nodes) {
		who = w.nodes[ev.node].id
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%9.3fs %-5s ", ev.at.Seconds(), who)
	switch ev.kind {
	case evStore:
		fmt.Fprintf(&b, "store %s %s → %s", ev.op, w.shortKey(ev.key), ev.res)
	case evWrite:
		cond := []string{"unconditional", "if-absent", "if-match"}[ev.cond]
		fmt.Fprintf(&b, "store put %s %s → %s  %s", w.shortKey(ev.key), cond, ev.res, w.describe(ev.key, ev.data))
	case evDisk:
		fmt.Fprintf(&b, "disk %s %s", ev.op, w.or.name(ev.entry))
	case evRunner:
		fmt.Fprintf(&b, "mailman %s %s", ev.op, w.or.name(ev.entry))
	case evLog:
		fmt.Fprintf(&b, "log %q", ev.rec.Message)
		for _, a := range ev.attrs() {
			fmt.Fprintf(&b, " %s=%s", a.Key, w.shortValue(a.Value.String()))
		}
	default:
		b.WriteString(ev.op)
	}
	return b.String()
}

// describe decodes a lease or claim body for the trace.
func (w *world) describe(key string, data []byte) string {
	if _, ok := w.layout.ParseClaimKey(key); ok {
		c, err := fence.DecodeClaim(data)
		if err != nil {
			return "undecodable claim"
		}
		h := ""
		if c.Handoff {
			h = " handoff"
		}
		return fmt.Sprintf("claim owner=%s@%d token=%d transfers=%d from=%s@%d%s", c.Owner, c.Epoch, c.Token, c.Transfers, c.From, c.FromEpoch, h)
	}
	if _, ok := w.layout.ParseLeaseKey(key); ok {
		l, err := fence.DecodeLease(data)
		if err != nil {
			return "undecodable lease"
		}
		s := fmt.Sprintf("lease epoch=%d seq=%d state=%s dead_epoch=%d", l.Epoch, l.Seq, l.State, l.DeadEpoch)
		if l.DeadBy != "" {
			s += " dead_by=" + l.DeadBy
		}
		return s
	}
	return ""
}

// shortKey abbreviates a store key: entry bases become #ids.
func (w *world) shortKey(key string) string {
	if e, ok := w.layout.ParseClaimKey(key); ok {
		return "claims/" + w.or.name(e)
	}
	if r, ok := w.layout.ParseMirrorKey(key); ok {
		return fmt.Sprintf("q/%s/%d/%s", r.Node, r.Epoch, w.or.name(r.Entry))
	}
	return strings.TrimPrefix(key, w.layout.Prefix())
}

func (w *world) shortValue(s string) string {
	for base, id := range w.or.ids {
		if strings.Contains(s, base) {
			s = strings.ReplaceAll(s, base, fmt.Sprintf("#%d", id))
		}
	}
	return s
}

// logHandler records the fence code's Info and higher log lines into the
// trace.
type logHandler struct {
	w     *world
	node  int
	attrs []slog.Attr
}

func (h *logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	rec := r.Clone()
	h.w.tr.add(tev{at: h.w.now, node: h.node, kind: evLog, rec: &rec})
	return nil
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &logHandler{w: h.w, node: h.node, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *logHandler) WithGroup(string) slog.Handler { return h }
