package chaos

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// verdict is what the ledger says about one scenario.
type verdict struct {
	Scenario string
	// Injected counts injected messages; HopRuns ledger lines.
	Injected, HopRuns int
	// Complete counts injected messages that reached the last hop.
	Complete int
	// Lost lists injected messages that never reached the last hop.
	Lost []string
	// Dups counts hops of a message run more than once (extra runs);
	// ByTwoNodes those run on two or more nodes.
	Dups, ByTwoNodes int
	// InFlight counts entries in flight (.bak) on a SIGKILLed node.
	InFlight int
	// AllowedDups counts the Dups the in-flight rule allows: a hop in
	// flight at the kill, or a later hop of the same message, re-run once.
	AllowedDups int
	// Unmirrored counts the AllowedDups of entries that had finished on
	// the killed node less than unmirroredWindow before the kill while
	// their store copy was still there (the delete was on its way): their
	// completion was in flight, so they are re-run once, as Mailman's own
	// .bak recovery re-runs an entry whose unlink did not happen.
	Unmirrored int
	// Stale describes re-runs of such entries that finished longer than
	// unmirroredWindow before the kill (the mirror fell behind its lag
	// bound), or that ran more than twice, and the later hops of the same
	// message re-run as a consequence. They are violations.
	Stale []string
	// Violations describes every other duplicate the rule does not allow.
	Violations []string
	// Breaches lists G2 breaches: a node dequeued an entry after another
	// node had restored it, so both runners saw it as .pck at once.
	Breaches []string
	// Unknown lists ledger lines of messages nobody injected.
	Unknown []string
	// FaultToDone is the time from the fault to the last ledger line.
	FaultToDone time.Duration
}

// unmirroredWindow is how long before a kill an entry may have finished
// and still have its copy in the store: the mirror's lag bound (issue 2).
const unmirroredWindow = 5 * time.Second

// hopIndex is the position of a queue in hops.
func hopIndex(queue string) int {
	for i, h := range hops {
		if h.Queue == queue {
			return i
		}
	}
	return -1
}

// analyze judges a ledger. inFlight holds "<queue>/<id>" of entries in
// flight on a SIGKILLed node: that hop and the later hops of the same
// message may run twice, no more.
//
// staleAtKill holds "<queue>/<base>" of copies that were in the killed
// node's namespace although the entry was no longer on its disk: finished
// there, not yet deleted from the store. A re-run they explain is allowed
// once when the entry finished within window (unmirroredWindow when
// zero) before faultAt; otherwise it is a violation, counted in Stale.
func analyze(name string, injected []string, ledger []ledgerEntry, inFlight map[hopID]bool, staleAtKill map[string]bool, faultAt time.Time, window time.Duration) verdict {
	if window <= 0 {
		window = unmirroredWindow
	}
	v := verdict{Scenario: name, Injected: len(injected), HopRuns: len(ledger), InFlight: len(inFlight)}
	known := make(map[string]bool, len(injected))
	for _, id := range injected {
		known[id] = true
	}
	// Per message, the hops whose entry was in flight at the kill, and
	// the hops whose entry had finished but still had a copy (with the
	// time of that original run). Each such entry may run once more, and
	// so may every later hop of the message: the allowance of a hop is the
	// number of those entries at that hop or before it.
	inFlightHops := make(map[string][]int)
	for k := range inFlight {
		q, id, _ := strings.Cut(k, "/")
		inFlightHops[id] = append(inFlightHops[id], hopIndex(q))
	}
	type staleHop struct {
		hop int
		at  time.Time
	}
	staleHops := make(map[string]map[string]staleHop) // id -> base -> hop
	for _, e := range ledger {
		if !staleAtKill[e.Queue+"/"+e.Base] {
			continue
		}
		if staleHops[e.ID] == nil {
			staleHops[e.ID] = make(map[string]staleHop)
		}
		if sh, ok := staleHops[e.ID][e.Base]; !ok || e.At.Before(sh.at) {
			staleHops[e.ID][e.Base] = staleHop{hopIndex(e.Queue), e.At}
		}
	}
	// finished within the window before the kill
	recent := func(at time.Time) bool {
		return !faultAt.IsZero() && !at.After(faultAt) && faultAt.Sub(at) <= window
	}
	allowance := func(id string, hop int) (inflight, fresh, old int) {
		for _, h := range inFlightHops[id] {
			if h <= hop {
				inflight++
			}
		}
		for _, sh := range staleHops[id] {
			switch {
			case sh.hop > hop:
			case recent(sh.at):
				fresh++
			default:
				old++
			}
		}
		return
	}
	runs := make(map[hopID][]ledgerEntry)
	var last time.Time
	for _, e := range ledger {
		if !known[e.ID] {
			v.Unknown = append(v.Unknown, e.Queue+"/"+e.ID+" on "+e.Node)
			continue
		}
		runs[e.Queue+"/"+e.ID] = append(runs[e.Queue+"/"+e.ID], e)
		if e.At.After(last) {
			last = e.At
		}
	}
	if !faultAt.IsZero() && last.After(faultAt) {
		v.FaultToDone = last.Sub(faultAt)
	}
	for _, id := range injected {
		if len(runs[lastHop+"/"+id]) > 0 {
			v.Complete++
		} else {
			v.Lost = append(v.Lost, id)
		}
	}
	keys := make([]string, 0, len(runs))
	for k := range runs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		rs := runs[k]
		if len(rs) < 2 {
			continue
		}
		v.Dups += len(rs) - 1
		nodes := map[string]bool{}
		var desc []string
		for _, r := range rs {
			nodes[r.Node] = true
			desc = append(desc, fmt.Sprintf("%s@%s(%s)", r.Node, r.At.Format("15:04:05.000"), r.Base[:min(len(r.Base), 24)]))
		}
		if len(nodes) > 1 {
			v.ByTwoNodes++
		}
		q, id, _ := strings.Cut(k, "/")
		extra := len(rs) - 1
		inflight, fresh, old := allowance(id, hopIndex(q))
		d := fmt.Sprintf("%s run %d times: %s", k, len(rs), strings.Join(desc, ", "))
		switch {
		case extra <= inflight+fresh:
			v.AllowedDups += extra
			v.Unmirrored += max(extra-inflight, 0)
		case extra <= inflight+fresh+old:
			v.Stale = append(v.Stale, d)
		default:
			v.Violations = append(v.Violations, d)
		}
	}
	sort.Strings(v.Lost)
	return v
}

// row formats the verdict as a table row.
func (v verdict) row(note string) []string {
	done := "-"
	if v.FaultToDone > 0 {
		done = v.FaultToDone.Round(100 * time.Millisecond).String()
	}
	return []string{v.Scenario, itoa(v.Injected), itoa(v.Complete), itoa(v.HopRuns), itoa(len(v.Lost)),
		itoa(v.Dups), itoa(v.ByTwoNodes), itoa(v.InFlight), itoa(v.AllowedDups), itoa(v.Unmirrored), itoa(len(v.Violations) + len(v.Stale)), itoa(len(v.Stale)), itoa(len(v.Breaches)), done, note}
}

// tableHeader names the columns of row.
var tableHeader = []string{"scenario", "injected", "complete", "hop runs", "lost", "dup runs", "by 2 nodes",
	"in flight at kill", "allowed dups", "of which finish unmirrored", "bad dups", "of which stale copy", "G2 breaches", "fault->done", "note"}

// formatTable aligns rows under a header.
func formatTable(header []string, rows [][]string) string {
	width := make([]int, len(header))
	for _, r := range append([][]string{header}, rows...) {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	var b strings.Builder
	for _, r := range append([][]string{header}, rows...) {
		for i, c := range r {
			if i > 0 {
				b.WriteString("  ")
			}
			fmt.Fprintf(&b, "%-*s", width[i], c)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// firstN returns up to n items joined for messages.
func firstN(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, "; ")
	}
	return strings.Join(items[:n], "; ") + fmt.Sprintf("; ... (%d more)", len(items)-n)
}

// restoreEvent is a node putting an entry into its queue directory for
// its runners: a takeover, a handoff or a settle restored it. how is the
// kind the "restored" record names ("takeover", "handoff", "preserved";
// empty for a settle) and from the node it came from.
type restoreEvent struct {
	node, how, from string
	at              time.Time
}

// handoffEvent is a draining node giving an entry to a peer. It held the
// entry, out of its runners' sight, before it wrote the claim that names
// the peer.
type handoffEvent struct {
	node string
	at   time.Time
}

// restoresOf reads the restore and handoff events of the nodes' logs,
// keyed "<queue>/<base>".
func restoresOf(nodes []*node) (map[string][]restoreEvent, map[string][]handoffEvent) {
	restores := make(map[string][]restoreEvent)
	handoffs := make(map[string][]handoffEvent)
	for _, n := range nodes {
		for _, r := range readLog(n.sidecarLog) {
			if r.Msg != "restored" && r.Msg != "settle: entry restored" && r.Msg != "handed off" {
				continue
			}
			k, ok := entryKey(r.Entry)
			if !ok {
				continue
			}
			if r.Msg == "handed off" {
				handoffs[k] = append(handoffs[k], handoffEvent{node: n.id, at: r.Time})
				continue
			}
			restores[k] = append(restores[k], restoreEvent{node: n.id, how: r.How, from: r.From, at: r.Time})
		}
	}
	return restores, handoffs
}

// entryKey turns a log record's entry ("<queue>/<base>.pck", or .psv)
// into "<queue>/<base>", the key of ledgers and store listings.
func entryKey(entry string) (string, bool) {
	q, file, ok := strings.Cut(entry, "/")
	if !ok {
		return "", false
	}
	return q + "/" + strings.TrimSuffix(strings.TrimSuffix(file, ".pck"), ".psv"), true
}

// endedBefore reports whether restore r's node was killed after r and
// before e's node restored the entry (itself before e's dequeue).
func endedBefore(r restoreEvent, e ledgerEntry, restores []restoreEvent, kills []time.Time) bool {
	for _, k := range kills {
		if !k.After(r.at) || k.After(e.At) {
			continue
		}
		for _, mine := range restores {
			if mine.node == e.Node && !mine.at.Before(k) && !mine.at.After(e.At) {
				return true
			}
		}
	}
	return false
}

// killsOf maps each node to the times it was killed whole.
func killsOf(nodes []*node) map[string][]time.Time {
	out := make(map[string][]time.Time)
	for _, n := range nodes {
		out[n.id] = n.killedAt
	}
	return out
}

// g2Breaches finds every dequeue of an entry by a node after another
// node had restored the same entry: from the restore to the dequeue, two
// nodes' runners saw it as .pck (G2). A restore does not count when its
// node was then killed whole (runners and sidecar) and the dequeuing node
// restored the entry only after that kill: their runners never saw it
// at the same time, and the killed node's restart holds everything back
// until the store has said whose it is. Nor does it count when its node
// then handed the entry off and the dequeuing node restored it from that
// handoff (see handedOffSince).
func g2Breaches(ledger []ledgerEntry, restores map[string][]restoreEvent, handoffs map[string][]handoffEvent, kills map[string][]time.Time) []string {
	var out []string
	for _, e := range ledger {
		key := e.Queue + "/" + e.Base
		for _, r := range restores[key] {
			if r.node != e.Node && !e.At.Before(r.at) && !endedBefore(r, e, restores[key], kills[r.node]) &&
				!handedOffSince(r, e, restores[key], handoffs[key]) {
				out = append(out, fmt.Sprintf("%s/%s (%s) dequeued on %s at %s, %s after %s restored it",
					e.Queue, e.ID, e.Base[:min(len(e.Base), 24)], e.Node, e.At.Format("15:04:05.000"), ms(e.At.Sub(r.at)), r.node))
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// handedOffSince reports whether restore r's node handed the entry off
// after r, and e's node restored it from a handoff of that node after r
// and before its dequeue. Only a draining node writes a handoff claim,
// and only for an entry it holds, out of its runners' sight; nothing
// releases an entry while a node drains. So r's node had held the entry
// again before it wrote the claim that e's node restored it under: their
// runners never saw it at the same time. A draining node can restore
// nothing itself, so a handoff after r is one of an entry it held since.
func handedOffSince(r restoreEvent, e ledgerEntry, restores []restoreEvent, handoffs []handoffEvent) bool {
	gave := false
	for _, h := range handoffs {
		if h.node == r.node && h.at.After(r.at) {
			gave = true
			break
		}
	}
	if !gave {
		return false
	}
	for _, got := range restores {
		if got.node == e.Node && got.how == "handoff" && got.from == r.node && got.at.After(r.at) && !got.at.After(e.At) {
			return true
		}
	}
	return false
}
