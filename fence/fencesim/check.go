package fencesim

import (
	"fmt"
	"strings"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// watchFailover times G5 for a whole-node crash: the dead node's mirrored
// entries must be back in processing on survivors within TTL + grace + a
// restore bound, when nothing else disturbs the cluster meanwhile.
func (w *world) watchFailover(sn *simNode, f fault) {
	sc := w.sc
	var victims []*entryState
	prefix := w.layout.NodePrefix(sn.id)
	seen := map[fence.Entry]bool{}
	for _, k := range w.st.prefixRange(prefix) {
		r, ok := w.layout.ParseMirrorKey(k)
		if !ok || seen[r.Entry] {
			continue
		}
		seen[r.Entry] = true
		if es := w.or.entries[r.Entry]; es != nil && es.term == termNone {
			victims = append(victims, es)
		}
	}
	quietBefore := w.now - w.lastDisturbBefore(f)
	detect := time.Duration(float64(sc.ttl+sc.grace)/0.98) + 2*sc.ttl/3 + sc.watchdog
	restore := sc.ttl + time.Duration(len(victims))*8*(sc.latMax+time.Millisecond)
	bound := detect + restore
	crashAt := w.now
	var backAt time.Duration
	var probe func()
	probe = func() {
		if backAt != 0 || w.fail != nil {
			return
		}
		for _, es := range victims {
			if !w.or.inProcessing(es, sn.idx) {
				if w.now < crashAt+bound {
					w.at(w.now+sc.watchdog, probe)
				}
				return
			}
		}
		backAt = w.now
	}
	w.at(w.now, probe)
	w.pendingG5++
	w.at(w.now+bound, func() {
		w.pendingG5--
		if w.fail != nil || quietBefore < 2*sc.ttl || w.lastDisturb > crashAt || sn.inc != nil || sn.mailmanUp {
			return
		}
		live := 0
		for _, o := range w.nodes {
			if o != sn && o.inc != nil && o.inc.started && o.mailmanUp && !o.draining {
				live++
			}
		}
		if live == 0 {
			return
		}
		w.stats.G5Checked++
		for _, es := range victims {
			if !w.or.inProcessing(es, sn.idx) {
				w.violate("G5", []fence.Entry{es.e}, "%s of crashed %s not back in processing %v after the crash (bound: detect %v + restore %v for %d entries)",
					w.or.name(es.e), sn.id, bound, detect, restore, len(victims))
				return
			}
		}
		if backAt != 0 {
			w.stats.G5Worst = max(w.stats.G5Worst, float64(backAt-crashAt)/float64(bound))
		}
	})
}

// finalCheck runs when the quiet period is over: every entry must be
// finished, preserved, or in processing on a running node.
func (w *world) finalCheck() {
	stuck := w.or.stuck()
	if len(stuck) == 0 {
		return
	}
	var names []string
	var es []fence.Entry
	for i, s := range stuck {
		if i < 8 {
			names = append(names, w.or.name(s.e)+w.where(s))
			es = append(es, s.e)
		}
	}
	w.violate("G5", es, "%d entries not in processing after %v of quiet: %s", len(stuck), w.sc.end-w.sc.quietAt, strings.Join(names, ", "))
}

// allInFlight says whether every entry of es was in flight on a node when
// a fault beyond the model began there.
func (w *world) allInFlight(es []fence.Entry) bool {
	for _, e := range es {
		if !w.inFlight[e] {
			return false
		}
	}
	return len(es) > 0
}

// where describes where an entry is, for reports.
func (w *world) where(es *entryState) string {
	var at []string
	for _, sn := range w.nodes {
		if f := sn.disk.files[es.e]; f != nil {
			s := ".pck"
			if f.bak {
				s = ".bak"
			} else if w.gated {
				_, why := sn.admits(es.e)
				s += "(" + why + ")"
			}
			at = append(at, sn.id+":"+s)
		}
		if _, ok := sn.disk.held[es.e]; ok {
			at = append(at, sn.id+":held")
		}
	}
	if es.inStore > 0 {
		at = append(at, fmt.Sprintf("store×%d", es.inStore))
	}
	return "[" + strings.Join(at, " ") + "]"
}

// violate records a broken guarantee. G2 beyond the timing model is
// counted, not failed; with the runner gate, only for entries that were in
// flight where the fault beyond the model began.
func (w *world) violate(g string, es []fence.Entry, format string, args ...any) {
	if w.fail != nil {
		return
	}
	if g == "G2" && w.now >= w.beyondAt && (!w.gated || w.allInFlight(es)) {
		counted := true
		for _, e := range es {
			counted = counted && w.beyondG2[e]
			w.beyondG2[e] = true
		}
		if !counted {
			w.tracef(-1, evNote, "beyond the model: %s", fmt.Sprintf(format, args...))
		}
		return
	}
	msg := fmt.Sprintf(format, args...)
	if g == "G2" && w.now >= w.beyondAt {
		msg += " (beyond the timing model, but the runner gate must hold it)"
	}
	w.tracef(-1, evNote, "VIOLATION %s: %s", g, msg)
	w.fail = &Violation{Seed: w.seed, Guarantee: g, At: w.now, Msg: msg}
	w.fail.Report = w.report(es)
}

func (w *world) report(es []fence.Entry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "fencesim: seed %d: %s violated at %.3fs: %s\n", w.seed, w.fail.Guarantee, w.now.Seconds(), w.fail.Msg)
	fmt.Fprintf(&b, "scenario:\n%s", w.sc)
	for _, e := range es {
		s := w.or.entries[e]
		if s == nil {
			continue
		}
		var runs []string
		for _, n := range s.runs {
			runs = append(runs, w.nodeName(n))
		}
		fmt.Fprintf(&b, "history of %s (born %.3fs on %s, runs %v, transfers %d, now %s):\n", w.or.name(e), s.born.Seconds(), w.nodeName(s.bornOn), runs, s.transfers, w.where(s))
		var hist []string
		for _, ev := range w.tr.last(len(w.tr.ring)) {
			if w.mentions(ev, e) {
				hist = append(hist, "  "+w.format(ev))
			}
		}
		if len(hist) > 60 {
			hist = hist[len(hist)-60:]
		}
		b.WriteString(strings.Join(hist, "\n") + "\n")
	}
	fmt.Fprintf(&b, "last %d events:\n", w.opt.Trace)
	for _, ev := range w.tr.last(w.opt.Trace) {
		b.WriteString("  " + w.format(ev) + "\n")
	}
	gate := "off"
	if w.gated {
		gate = "on"
	}
	fmt.Fprintf(&b, "replay: go test ./fence/fencesim -run 'Sim$' -seed=%d -gate=%s -v\n", w.seed, gate)
	return b.String()
}

// checkExposure is G1 as the spec states it: an entry that has existed on
// a node for longer than the mirror lag bound, while that node could
// mirror (sidecar live and not paused, gate open, store reachable) for the
// whole bound, has a copy in the store until it is finished.
func (w *world) checkExposure() {
	bound := w.sc.lagBound
	for _, es := range w.or.all {
		if es.term != termNone || es.inStore > 0 || es.onDisk == 0 || w.now-es.born <= bound {
			continue
		}
		for i, sn := range w.nodes {
			if es.onDisk&(1<<i) == 0 || !sn.mirrorable || w.now-sn.mirrorableSince <= bound {
				continue
			}
			if _, held := sn.disk.held[es.e]; held {
				continue // held entries are the coordinator's to settle
			}
			if w.now-sn.disk.since[es.e] <= bound {
				continue
			}
			w.violate("G1", []fence.Entry{es.e}, "%s has been on %s for more than the lag bound %v, which could mirror all that time, and has no copy in the store",
				w.or.name(es.e), sn.id, bound)
			return
		}
	}
}
