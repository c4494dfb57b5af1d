package chaos

import (
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// outage is how long scenario 4 keeps MinIO stopped.
const outage = 30 * time.Second

// testStoreOutage: stop MinIO for 30 s. Every node fences and quarantines
// what the store knows; no node takes over another's entries; the
// workers keep processing entries born during the outage; quarantined
// entries are processed soon after MinIO is back.
func testStoreOutage(t *testing.T, m *storetest.MinIO) {
	s := newScenario(t, m, "4-store-outage", clusterOptions{})
	t.Cleanup(func() {
		if m.PID() == 0 {
			m.Start() // the next scenarios need it
		}
	})
	s.injectAll()
	runOutage(t, s, storeOutage{what: "MinIO", length: outage, stop: m.Stop, start: m.Start})
}

// storeOutage is how an outage scenario takes the store away and brings
// it back.
type storeOutage struct {
	// what names what is down, for the report ("MinIO").
	what string
	// length is how long the store stays away.
	length time.Duration
	// stop and start take the store away and bring it back; both
	// return once done.
	stop, start func()
	// lockedKeys says the store may keep single keys unwritable for a
	// while after it is back (a MinIO cluster after a lost quorum): a
	// node whose lease key is one of them cannot re-acquire its lease
	// and may be declared dead (see outageDeaths).
	lockedKeys bool
}

// runOutage plays a store outage against a scenario whose messages are
// injected: every node fences and quarantines what the store knows
// within the outage, entries born during it are processed during it, no
// node takes over another's entries or declares a peer dead, and every
// quarantined entry is processed after the store is back.
func runOutage(t *testing.T, s *scenario, o storeOutage) {
	s.snapshot()
	s.faultAt = time.Now()
	o.stop()
	stopped := time.Since(s.faultAt)
	outage := o.length

	// Every node fences itself and finishes its quarantine.
	err := waitFor(outage, 50*time.Millisecond, func() (bool, string) {
		var states []string
		all := true
		for _, n := range s.c.nodes {
			st, err := n.nodeState()
			done := len(fenceEnds([]*node{n}, s.faultAt)) > 0
			states = append(states, fmt.Sprintf("%s=%s%s quarantine done %v", n.id, st, errOrEmpty(err), done))
			all = all && st == fence.StateFenced && done
		}
		return all, strings.Join(states, ", ")
	})
	if err != nil {
		t.Fatalf("nodes did not fence during the outage: %v", err)
	}
	fencedAt := time.Since(s.faultAt)
	quarantined := make(map[hopID]bool)
	for _, n := range s.c.nodes {
		files, err := n.files()
		if err != nil {
			t.Fatal(err)
		}
		ids, err := idsOf(files, func(f localFile) bool { return f.Held })
		if err != nil {
			t.Fatal(err)
		}
		for k := range ids {
			quarantined[k] = true
		}
	}
	want := s.minQuarantine
	if want == 0 {
		want = min(100, s.entries/20)
	}
	if len(quarantined) < want {
		t.Errorf("only %d entries quarantined (want %d): the outage did not meet a backlog", len(quarantined), want)
	}

	// Entries born during the outage are unknown to every peer: the
	// workers process them while the store is away.
	bornTag := s.tag() + "x"
	born := s.c.inject(s.ctx, bornTag, 150, 50, s.c.nodes)
	born()
	outageIDs := make(map[string]bool)
	for _, id := range s.c.injectedIDs() {
		if strings.HasPrefix(id, bornTag+".") {
			outageIDs[id] = true
		}
	}
	err = waitFor(time.Until(s.faultAt.Add(outage)), 100*time.Millisecond, func() (bool, string) {
		k := 0
		for _, e := range s.c.ledger() {
			if e.Queue == lastHop && outageIDs[e.ID] {
				k++
			}
		}
		return k == len(outageIDs), fmt.Sprintf("%d of %d outage-born messages at %s", k, len(outageIDs), lastHop)
	})
	if err != nil {
		t.Errorf("workers did not process entries born during the outage: %v", err)
	}
	sleepUntil(s.faultAt.Add(outage))
	o.start()
	backAt := time.Now()

	err = waitFor(deadline, 50*time.Millisecond, func() (bool, string) {
		var states []string
		all := true
		for _, n := range s.c.nodes {
			st, err := n.nodeState()
			states = append(states, n.id+"="+st+fmt.Sprint(errOrEmpty(err)))
			all = all && st == fence.StateLive
		}
		return all, strings.Join(states, " ")
	})
	if err != nil {
		t.Errorf("nodes did not come back after the outage: %v", err)
	}
	live := time.Since(backAt)
	report.addf(t, "%s: %s stopped in %s; all nodes fenced %s after the stop; %d entries quarantined; %d entries born during the outage processed during it; %s down %v; all nodes live again %s after %s started",
		s.name, o.what, ms(stopped), ms(fencedAt), len(quarantined), len(outageIDs), o.what, outage, ms(live), o.what)
	// Reported even when waitDone gives up: how soon did the quarantined
	// entries run, and how much did the nodes fence again meanwhile?
	defer func() {
		var first, last time.Time
		seen := make(map[hopID]bool)
		for _, e := range s.c.ledger() {
			k := e.Queue + "/" + e.ID
			if !quarantined[k] || e.At.Before(s.faultAt) {
				continue
			}
			// Processed after the fence that held it: a node that got its
			// writes back a moment before the mark below may start early.
			seen[k] = true
			if e.At.Before(backAt) {
				continue
			}
			if first.IsZero() || e.At.Before(first) {
				first = e.At
			}
			if e.At.After(last) {
				last = e.At
			}
		}
		var epochs []string
		for _, n := range s.c.nodes {
			if m, err := n.metrics(); err == nil {
				epochs = append(epochs, fmt.Sprintf("%s %v", n.id, m.sum("mmsidecar_node_epoch")))
			}
		}
		refenced := len(fenceEnds(s.c.nodes, backAt))
		if first.IsZero() {
			report.addf(t, "%s: no quarantined entry was processed after %s came back", s.name, o.what)
		} else {
			report.addf(t, "%s: after %s start: first quarantined entry processed in %s, last in %s (%d of %d processed); fences after %s was back: %d; epochs now %s",
				s.name, o.what, ms(first.Sub(backAt)), ms(last.Sub(backAt)), len(seen), len(quarantined), o.what, refenced, strings.Join(epochs, ", "))
		}
		if len(seen) != len(quarantined) {
			t.Errorf("%d of %d quarantined entries processed after the fence; not processed since the fault (fault at %s): %s",
				len(seen), len(quarantined), s.faultAt.Format("15:04:05.000"), unseenHistory(quarantined, seen, s.c.ledger()))
		}
	}()
	s.waitDone(s.c.nodes)
	note := fmt.Sprintf("%d quarantined", len(quarantined))
	victims, odd, declared := outageDeaths(s.c.nodes, s.faultAt, backAt)
	if !o.lockedKeys {
		for _, v := range victims {
			odd = append(odd, fmt.Sprintf("%s came back taken over at %s", v.node, v.back.Format("15:04:05.000")))
		}
		victims = nil
	}
	for _, d := range odd {
		t.Errorf("a node taken over during or after a store outage: %s", d)
	}
	claimed, oddClaims := s.allowTakeoverReruns(victims, s.faultAt)
	for _, c := range oddClaims {
		t.Errorf("an entry taken over during or after a store outage from a node that was not declared dead for a locked lease: %s", c)
	}
	for _, v := range victims {
		report.addf(t, "%s: the store kept refusing %s's lease writes after %s was back (%d re-acquires refused, the last: %s); it came back %s after the return to find itself taken over (declared dead by %q): its entries were taken over, and those it had finished but whose copies the store would not let it delete may run once more (G6)",
			s.name, v.node, o.what, v.refused, v.lastErr, ms(v.back.Sub(backAt)), v.by)
		note += fmt.Sprintf("; %s declared dead (locked lease)", v.node)
	}
	var transfers, marks float64
	for _, n := range s.c.nodes {
		now := n.mustMetrics()
		transfers += s.delta(n, now, "mmsidecar_transfers_total")
		marks += s.delta(n, now, "mmsidecar_peers_declared_dead_total")
	}
	if int(marks) != declared {
		t.Errorf("the nodes' metrics count %v peers declared dead during or after a store outage, their logs %d", marks, declared)
	}
	if int(transfers) > claimed {
		t.Errorf("%v entries taken over during or after a store outage, %d of them claimed from nodes declared dead for a locked lease", transfers, claimed)
	}
	s.judge(true, note)
}

// unseenHistory lists up to five of the quarantined hops that were not
// processed after the fault, each with every ledger line of its message.
func unseenHistory(quarantined, seen map[hopID]bool, led []ledgerEntry) string {
	var out []string
	for k := range quarantined {
		if seen[k] {
			continue
		}
		if len(out) == 5 {
			out = append(out, "...")
			break
		}
		id := k[strings.Index(k, "/")+1:]
		var lines []string
		for _, e := range led {
			if e.ID == id {
				lines = append(lines, fmt.Sprintf("%s on %s at %s", e.Queue, e.Node, e.At.Format("15:04:05.000")))
			}
		}
		out = append(out, fmt.Sprintf("%s (ledger: %s)", k, strings.Join(lines, "; ")))
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

func errOrEmpty(err error) string {
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return ""
}

// testDrain: `mmsidecar drain` one node under load. It must exit 0 with
// the node's queues and hold area empty, and nothing may run twice.
func testDrain(t *testing.T, m *storetest.MinIO) {
	s := newScenario(t, m, "5-drain", clusterOptions{})
	victim := s.c.node("c")
	s.injectAll()
	backlog := victim.backlog("in")
	s.snapshot()
	s.faultAt = time.Now()
	ctx, cancel := context.WithTimeout(s.ctx, 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sidecarBin, "drain")
	cmd.Env = victim.env()
	out, err := cmd.CombinedOutput()
	took := time.Since(s.faultAt)
	if err != nil {
		t.Fatalf("mmsidecar drain on %s after %s: %v\n%s", victim.id, ms(took), err, out)
	}
	if fc := victim.counts(); fc.Pck+fc.Bak+fc.Held != 0 {
		t.Errorf("drain exited 0 but %s holds %s", victim.id, fc)
	}
	s.waitDone(s.c.nodes)
	now := victim.mustMetrics()
	var taken float64
	for _, n := range s.c.others(victim) {
		taken += s.delta(n, n.mustMetrics(), "mmsidecar_transfers_total", "how", "handoff")
	}
	report.addf(t, "5-drain: drain of %s with %d queued in 'in' exited 0 after %s; handed off %v, peers restored %v by handoff; output: %s",
		victim.id, backlog, ms(took), s.delta(victim, now, "mmsidecar_handoffs_total"), taken, strings.TrimSpace(lastLine(string(out))))
	s.judge(true, "drained in "+took.Round(100*time.Millisecond).String())
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// testStopPastTTL: beyond the timing model. SIGSTOP one node's sidecar
// (whole=false) or the whole node (sidecar and worker) for longer than
// TTL + grace, then SIGCONT. Duplicates are measured, not forbidden.
func testStopPastTTL(t *testing.T, m *storetest.MinIO, whole bool) {
	name := "6a-stop-sidecar-past-ttl"
	if whole {
		name = "6b-stop-node-past-ttl"
	}
	s := newScenario(t, m, name, clusterOptions{})
	victim := s.c.node("b")
	survivors := s.c.others(victim)
	s.injectAll()
	s.snapshot()
	pause := leaseTTL + leaseGrace + 3*time.Second
	procs := []*proc{victim.sidecar}
	if whole {
		procs = append(procs, victim.worker)
	}
	s.faultAt = time.Now()
	for _, p := range procs {
		if err := p.signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	sleepUntil(s.faultAt.Add(pause))
	contAt := time.Now()
	for _, p := range procs {
		if err := p.signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}
	s.waitDone(s.c.nodes)
	var moved float64
	for _, n := range survivors {
		moved += s.delta(n, n.mustMetrics(), "mmsidecar_transfers_total")
	}
	fencing := append(logTimes([]*node{victim}, "lease not renewed within TTL - margin: fencing", s.faultAt),
		logTimes([]*node{victim}, "lease taken: fencing", s.faultAt)...)
	sort.Slice(fencing, func(i, j int) bool { return fencing[i].Before(fencing[j]) })
	fenced := fenceEnds([]*node{victim}, s.faultAt)
	first, _, ok := logMargin(survivors, s.faultAt)
	margin := "no claims"
	if ok && len(fenced) > 0 && len(fencing) > 0 {
		margin = fmt.Sprintf("victim began to fence %s after SIGCONT and had quarantined %s after SIGCONT; first survivor claim at stop+%s: fence-to-takeover margin %s (negative: the takeover came first)",
			ms(fencing[0].Sub(contAt)), ms(fenced[0].Sub(contAt)), ms(first.Sub(s.faultAt)), ms(first.Sub(fencing[0])))
	} else if ok {
		margin = fmt.Sprintf("victim never logged a fence; first survivor claim at stop+%s", ms(first.Sub(s.faultAt)))
	}
	v := s.judge(false, fmt.Sprintf("SIGSTOP %v, %v transfers", pause, moved))
	report.addf(t, "%s: stopped %v (TTL + grace = %v); %v entries taken over; processed twice: %d hop runs (%d by two nodes); %s",
		name, pause, leaseTTL+leaseGrace, moved, v.Dups, v.ByTwoNodes, margin)
}
