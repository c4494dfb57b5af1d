package fencesim

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// simStore is the one shared bucket: S3 semantics (conditional create,
// compare-and-swap on the MD5 ETag, unconditional delete, strongly
// consistent ordered list) and the instrumentation behind G1 and G3.
type simStore struct {
	w    *world
	objs map[string]*object
	keys []string // sorted
	// lastCond is when a conditional write on the key last took effect,
	// for 409 ConditionalRequestConflict on racing writers.
	lastCond map[string]time.Duration
	// claimTok is the highest token ever written per claim key; it
	// outlives the claim object, so a reset after a delete is caught.
	claimTok   map[string]uint64
	claimOwner map[string]string
	leaseVer   map[string][2]uint64
}

type object struct {
	data []byte
	etag string
}

func newSimStore(w *world) *simStore {
	return &simStore{w: w, objs: make(map[string]*object), lastCond: make(map[string]time.Duration),
		claimTok: make(map[string]uint64), claimOwner: make(map[string]string), leaseVer: make(map[string][2]uint64)}
}

func (s *simStore) info(key string, o *object) store.Info {
	return store.Info{Key: key, ETag: o.etag, Size: int64(len(o.data))}
}

// set stores data under key and feeds the oracle.
func (s *simStore) set(key string, data []byte) {
	if _, ok := s.objs[key]; !ok {
		i := sort.SearchStrings(s.keys, key)
		s.keys = append(s.keys, "")
		copy(s.keys[i+1:], s.keys[i:])
		s.keys[i] = key
		if r, ok := s.w.layout.ParseMirrorKey(key); ok {
			s.w.or.storeCopy(r.Entry, +1)
		}
	}
	s.objs[key] = &object{data: data, etag: store.ETagOf(data)}
}

func (s *simStore) del(key string) {
	if _, ok := s.objs[key]; !ok {
		return
	}
	delete(s.objs, key)
	i := sort.SearchStrings(s.keys, key)
	s.keys = append(s.keys[:i], s.keys[i+1:]...)
	if r, ok := s.w.layout.ParseMirrorKey(key); ok {
		s.w.or.storeCopy(r.Entry, -1)
	}
}

// get is the oracle's fault-free read.
func (s *simStore) get(key string) ([]byte, bool) {
	o, ok := s.objs[key]
	if !ok {
		return nil, false
	}
	return o.data, true
}

// prefixRange returns the sorted keys under prefix.
func (s *simStore) prefixRange(prefix string) []string {
	i := sort.SearchStrings(s.keys, prefix)
	j := i
	for j < len(s.keys) && strings.HasPrefix(s.keys[j], prefix) {
		j++
	}
	return s.keys[i:j]
}

// checkWrite runs the G3 checks on a write that is about to commit.
func (s *simStore) checkWrite(node, key string, data []byte, cond store.Condition) {
	w := s.w
	if e, ok := w.layout.ParseClaimKey(key); ok {
		c, err := parseClaim(data)
		if err != nil {
			w.violate("G3", nil, "%s wrote an undecodable claim %s: %v", node, w.or.name(e), err)
			return
		}
		if cond.IsZero() {
			w.violate("G3", []fence.Entry{e}, "%s wrote claim of %s unconditionally (owner %s token %d)", node, w.or.name(e), c.owner, c.token)
		}
		if last := s.claimTok[key]; c.token <= last {
			w.violate("G3", []fence.Entry{e}, "%s wrote claim of %s with token %d, not above %d (owner %s)", node, w.or.name(e), c.token, last, c.owner)
		}
		s.claimTok[key] = c.token
		prev, seen := s.claimOwner[key]
		if !seen {
			prev = c.from
		}
		if c.owner != prev && !c.handoff {
			w.or.transfer(e)
		}
		s.claimOwner[key] = c.owner
		return
	}
	if n, ok := w.layout.ParseLeaseKey(key); ok {
		epoch, seq, err := parseLease(data)
		if err != nil {
			w.violate("G3", nil, "%s wrote an undecodable lease of %s: %v", node, n, err)
			return
		}
		if cond.IsZero() {
			w.violate("G3", nil, "%s wrote the lease of %s unconditionally", node, n)
		}
		last, seen := s.leaseVer[key]
		if seen && (epoch < last[0] || epoch == last[0] && seq <= last[1]) {
			w.violate("G3", nil, "%s wrote lease of %s at epoch %d seq %d, not above epoch %d seq %d", node, n, epoch, seq, last[0], last[1])
		}
		s.leaseVer[key] = [2]uint64{epoch, seq}
	}
}

// storeView is one incarnation's connection to the store: it injects the
// seed's faults and latency, and yields the baton while a request is on
// the wire. noYield views (used under the fence's release lock) run each
// request in one step.
type storeView struct {
	s       *simStore
	inc     *incarnation
	noYield bool
}

var _ store.Store = (*storeView)(nil)

func opErr(op, key string, kind store.Kind, code string) error {
	return &store.OpError{Op: op, Key: key, Kind: kind, Code: code, Err: errors.New(code)}
}

// call runs one request: fault checks when it is sent, request latency,
// the effect (apply, which reports whether it changed the store), a lost
// answer, and response latency.
func (v *storeView) call(ctx context.Context, op, key string, write bool, apply func() (bool, error)) error {
	inc := v.inc
	w := inc.w
	sc := w.sc
	node := inc.node
	if inc.enter(ctx) {
		return opErr(op, key, store.KindTransient, "canceled")
	}
	yield := !v.noYield && w.cur != nil
	lat := func() time.Duration {
		if !yield {
			return 0
		}
		return w.latency()
	}
	if w.unreachable(node.idx) {
		w.sleep(lat())
		w.traceOp(node.idx, op, key, "unreachable")
		return opErr(op, key, store.KindTransient, "unreachable")
	}
	w.sleep(lat())
	if inc.cancelled(ctx) {
		// The request was on the wire when the caller gave up: it may
		// have reached the store.
		if write && w.rng.Float64() < 0.5 {
			committed, _ := apply()
			if committed {
				w.traceOp(node.idx, op, key, "committed after the caller gave up")
			}
		}
		return opErr(op, key, store.KindTransient, "canceled")
	}
	if w.unreachable(node.idx) {
		w.traceOp(node.idx, op, key, "unreachable")
		return opErr(op, key, store.KindTransient, "unreachable")
	}
	calm := w.now >= sc.quietAt+sc.ttl // liveness is owed once the store is healthy
	if !calm && w.rng.Float64() < sc.transientP {
		w.traceOp(node.idx, op, key, "503 SlowDown")
		return opErr(op, key, store.KindTransient, "SlowDown")
	}
	committed, err := apply()
	if committed && write && !calm && w.rng.Float64() < sc.lostP {
		w.stats.LostAnswers++
		w.traceOp(node.idx, op, key, "committed, answer lost")
		w.sleep(lat())
		return opErr(op, key, store.KindTransient, "timeout")
	}
	w.sleep(lat())
	return err
}

// Get implements store.Store.
func (v *storeView) Get(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	var data []byte
	var info store.Info
	err := v.call(ctx, "get", key, false, func() (bool, error) {
		o, ok := v.s.objs[key]
		if !ok {
			return false, opErr("get", key, store.KindNotFound, "NoSuchKey")
		}
		data, info = o.data, v.s.info(key, o)
		return false, nil
	})
	if err != nil {
		return nil, store.Info{}, err
	}
	return io.NopCloser(bytes.NewReader(data)), info, nil
}

// Stat implements store.Store.
func (v *storeView) Stat(ctx context.Context, key string) (store.Info, error) {
	var info store.Info
	err := v.call(ctx, "stat", key, false, func() (bool, error) {
		o, ok := v.s.objs[key]
		if !ok {
			return false, opErr("stat", key, store.KindNotFound, "NoSuchKey")
		}
		info = v.s.info(key, o)
		return false, nil
	})
	return info, err
}

// Put implements store.Store.
func (v *storeView) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	data, err := io.ReadAll(body)
	if err != nil || int64(len(data)) != size {
		return store.Info{}, opErr("put", key, store.KindPermanent, "size_mismatch")
	}
	s, w := v.s, v.inc.w
	node := v.inc.node
	var info store.Info
	sent := w.now
	err = v.call(ctx, "put", key, true, func() (bool, error) {
		old, exists := s.objs[key]
		if !cond.IsZero() {
			// AWS answers 409 to a conditional write that raced another
			// one on the same key: one took effect while this one was in
			// flight.
			last, raced := s.lastCond[key]
			if raced && last > sent && w.rng.Float64() < w.sc.conflictP {
				w.traceOp(node.idx, "put", key, "409 conflict")
				return false, opErr("put", key, store.KindPrecondition, "ConditionalRequestConflict")
			}
		}
		switch {
		case cond.IfAbsent && exists:
			w.traceWrite(node.idx, key, data, cond, "412")
			return false, opErr("put", key, store.KindPrecondition, "PreconditionFailed")
		case cond.IfMatch != "" && !exists:
			w.traceWrite(node.idx, key, data, cond, "404")
			return false, opErr("put", key, store.KindPrecondition, "NoSuchKey")
		case cond.IfMatch != "" && old.etag != cond.IfMatch:
			w.traceWrite(node.idx, key, data, cond, "412")
			return false, opErr("put", key, store.KindPrecondition, "PreconditionFailed")
		}
		if !cond.IsZero() {
			s.lastCond[key] = w.now
		}
		w.traceWrite(node.idx, key, data, cond, "ok")
		s.checkWrite(node.id, key, data, cond)
		s.set(key, data)
		info = s.info(key, s.objs[key])
		return true, nil
	})
	return info, err
}

// List implements store.Store: a snapshot when the request takes effect.
func (v *storeView) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	var infos []store.Info
	err := v.call(ctx, "list", prefix, false, func() (bool, error) {
		for _, k := range v.s.prefixRange(prefix) {
			infos = append(infos, v.s.info(k, v.s.objs[k]))
		}
		return false, nil
	})
	if err != nil {
		return err
	}
	for _, in := range infos {
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements store.Store.
func (v *storeView) Delete(ctx context.Context, key string) error {
	return v.call(ctx, "delete", key, true, func() (bool, error) {
		_, ok := v.s.objs[key]
		v.s.del(key)
		if ok {
			v.inc.w.traceOp(v.inc.node.idx, "delete", key, "ok")
		}
		return ok, nil
	})
}

// DeleteMany implements store.Store.
func (v *storeView) DeleteMany(ctx context.Context, keys []string) error {
	return v.call(ctx, "delete", strings.Join(keys, ","), true, func() (bool, error) {
		any := false
		for _, k := range keys {
			if _, ok := v.s.objs[k]; ok {
				any = true
				v.s.del(k)
				v.inc.w.traceOp(v.inc.node.idx, "delete", k, "ok")
			}
		}
		return any, nil
	})
}
