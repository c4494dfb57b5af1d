package chaos

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// TestChaos runs every scenario against one MinIO of its own (scenario 4
// stops it), each on a fresh cluster and bucket.
func TestChaos(t *testing.T) {
	requireChaos(t)
	m := storetest.StartMinIO(t)
	began := time.Now()
	tests := []struct {
		name string
		run  func(t *testing.T, m *storetest.MinIO)
	}{
		{"1-kill-node", testKillNode},
		{"2-stop-sidecar-briefly", testStopSidecarBriefly},
		{"3-kill-sidecar-restart", testKillSidecarRestart},
		{"3b-terminate-sidecar-restart", testTerminateSidecarRestart},
		{"4-store-outage", testStoreOutage},
		{"5-drain", testDrain},
		{"6a-stop-sidecar-past-ttl", func(t *testing.T, m *storetest.MinIO) { testStopPastTTL(t, m, false) }},
		{"6b-stop-node-past-ttl", func(t *testing.T, m *storetest.MinIO) { testStopPastTTL(t, m, true) }},
		{"7-partition-node", testPartition},
		{"takeover-drain", testDrainDuringTakeover},
		{"takeover-1000", func(t *testing.T, m *storetest.MinIO) { testTakeoverTime(t, m, 1000) }},
		{"takeover-10000", func(t *testing.T, m *storetest.MinIO) {
			if os.Getenv(envLong) != "1" {
				t.Skipf("10,000-entry takeover: set %s=1 to run it", envLong)
			}
			testTakeoverTime(t, m, 10000)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			started := time.Now()
			tc.run(t, m)
			report.addf(nil, "%s: scenario took %s", tc.name, time.Since(started).Round(100*time.Millisecond))
		})
	}
	report.addf(t, "chaos package: TestChaos took %s", time.Since(began).Round(time.Second))
}

// testKillNode: SIGKILL a whole node (sidecar and worker) with hundreds of
// entries queued. The survivors take over its entries; later the node
// comes back on the same disk (an operator reboots it) and settles.
func testKillNode(t *testing.T, m *storetest.MinIO) {
	playKillNode(newScenario(t, m, "1-kill-node", clusterOptions{}), 100)
}

// playKillNode is the node kill on any store: it injects the scenario's
// messages, SIGKILLs node c once its in queue holds at least minBacklog
// entries, waits for the takeover, restarts the node on its disk and
// judges the ledgers strictly. The store stays up throughout: a
// declaration must have been answered as written.
func playKillNode(s *scenario, minBacklog int) {
	t := s.t
	victim := s.c.node("c")
	survivors := s.c.others(victim)
	s.injectAll()
	if b := victim.backlog("in"); b < minBacklog {
		t.Fatalf("victim's backlog is only %d entries (want %d): the workers are too fast for this machine", b, minBacklog)
	}
	s.snapshot()
	s.faultAt = time.Now()
	s.killNode(victim)
	queued, unmirrored := s.recordKill(victim)
	copies, err := s.c.copies(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	atKill := copies[victim.id]
	report.addf(t, "%s: at the kill %s had %d queued and %d in flight on disk, %d of its files not yet mirrored; its namespace held %d copies, %d of them of entries already finished (delete pending)",
		s.name, victim.id, queued, len(s.inFlight), unmirrored, atKill, len(s.staleAtKill))

	// Takeover: the victim's namespace empties into the survivors.
	// The store is up throughout: a declaration must have been answered
	// as written.
	if tt := s.awaitTakeover(victim, survivors); tt.ok && !tt.refused {
		report.addf(t, "%s: takeover of %d copies: kill->declared dead %s, kill->first claimed %s (fence-to-takeover: a killed node would have fenced itself by kill + TTL - margin = %s), kill->last restored %s, kill->namespace empty %s",
			s.name, atKill, ms(tt.dead), ms(tt.first), ms(leaseTTL-leaseMargin), ms(tt.last), ms(tt.empty))
	} else {
		t.Errorf("no survivor logged \"declared peer dead\" and \"claimed\" after the kill")
	}
	var moved float64
	for _, n := range survivors {
		moved += s.delta(n, n.mustMetrics(), "mmsidecar_transfers_total")
	}
	// Copies of entries the victim had finished may still go after the
	// listing: a delete batch it sent before the kill can reach the
	// store after it. Every other copy must have been restored.
	if live := atKill - len(s.staleAtKill); int(moved) < live {
		t.Errorf("survivors report %v transfers for %d copies of the dead node (%d of entries it had not finished)", moved, atKill, live)
	}

	// The node comes back on the same disk: sidecar first, then its
	// runners, which recover their .bak files as Mailman does.
	restartAt := time.Now()
	victim.startSidecar()
	victim.waitReady()
	ready := time.Since(restartAt)
	victim.startWorker(true)
	s.waitDone(s.c.nodes)
	again := len(logTimes(survivors, "declared peer dead", restartAt))
	report.addf(t, "%s: the restarted sidecar was ready %s after its start; peers declared it dead again %d times after the restart", s.name, ms(ready), again)
	s.judge(true, "node restarted after takeover")
}

// testStopSidecarBriefly: SIGSTOP one sidecar for less than TTL - margin:
// nothing may move.
func testStopSidecarBriefly(t *testing.T, m *storetest.MinIO) {
	s := newScenario(t, m, "2-stop-sidecar-briefly", clusterOptions{})
	victim := s.c.node("b")
	defer func() { report.addf(t, "2-stop-sidecar-briefly: %s", renewStats(s.c.nodes)) }()
	pre := allMetrics(t, s.c.nodes)
	s.injectAll()
	s.snapshot()

	pause := (leaseTTL - leaseMargin) / 2
	s.faultAt = time.Now()
	if err := victim.sidecar.signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	sleepUntil(s.faultAt.Add(pause))
	if err := victim.sidecar.signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	s.waitDone(s.c.nodes)
	// A takeover would have shown by TTL + grace plus two scans.
	sleepUntil(s.faultAt.Add(leaseTTL + leaseGrace + 2*leaseTTL/3 + time.Second))
	var fences float64
	for _, n := range s.c.nodes {
		now := n.mustMetrics()
		if d := s.delta(n, now, "mmsidecar_transfers_total"); d != 0 {
			t.Errorf("node %s made %v transfers after a %v pause of %s's sidecar", n.id, d, pause, victim.id)
		}
		if d := s.delta(n, now, "mmsidecar_peers_declared_dead_total"); d != 0 {
			t.Errorf("node %s declared %v peers dead after a %v pause", n.id, d, pause)
		}
		fences += s.delta(n, now, "mmsidecar_fences_total")
	}
	report.addf(t, "2-stop-sidecar-briefly: sidecar of %s stopped %v (TTL - margin = %v); fences afterwards: %v", victim.id, pause, leaseTTL-leaseMargin, fences)
	v := s.judge(true, "SIGSTOP "+pause.String())
	steadyCost(t, s.c.nodes, pre, allMetrics(t, s.c.nodes), v)
}

// testKillSidecarRestart: SIGKILL the sidecar alone, restart it on the
// same disk at once; the worker keeps running throughout.
func testKillSidecarRestart(t *testing.T, m *storetest.MinIO) {
	s := newScenario(t, m, "3-kill-sidecar-restart", clusterOptions{})
	victim := s.c.node("a")
	s.injectAll()
	s.snapshot()
	s.faultAt = time.Now()
	if err := victim.sidecar.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	victim.sidecar.kill()
	victim.startSidecar()
	victim.waitReady()
	back := time.Since(s.faultAt)
	s.waitDone(s.c.nodes)
	var moved, dead float64
	for _, n := range s.c.nodes {
		now := n.mustMetrics()
		moved += s.delta(n, now, "mmsidecar_transfers_total")
		dead += s.delta(n, now, "mmsidecar_peers_declared_dead_total")
	}
	report.addf(t, "3-kill-sidecar-restart: kill -> restarted sidecar ready %s (peers declare dead after TTL + grace = %v); transfers %v, dead marks %v",
		ms(back), leaseTTL+leaseGrace, moved, dead)
	s.judge(true, "ready again after "+back.Round(100*time.Millisecond).String())
}

// testTerminateSidecarRestart: stop the sidecar the normal way (SIGTERM,
// as for an upgrade) under load, and start it again on the same disk; the
// worker keeps running. The shutdown fence holds every entry the store
// knows; the restarted sidecar settles them. Nothing may move or run twice.
func testTerminateSidecarRestart(t *testing.T, m *storetest.MinIO) {
	s := newScenario(t, m, "3b-terminate-sidecar-restart", clusterOptions{})
	victim := s.c.node("a")
	s.injectAll()
	s.snapshot()
	s.faultAt = time.Now()
	if !victim.sidecar.terminate(30 * time.Second) {
		t.Errorf("sidecar %s did not exit within 30s of SIGTERM", victim.id)
	}
	down := time.Since(s.faultAt)
	held := victim.counts().Held
	victim.startSidecar()
	victim.waitReady()
	back := time.Since(s.faultAt)
	s.waitDone(s.c.nodes)
	var moved, dead float64
	for _, n := range s.c.nodes {
		now := n.mustMetrics()
		moved += s.delta(n, now, "mmsidecar_transfers_total")
		dead += s.delta(n, now, "mmsidecar_peers_declared_dead_total")
	}
	if moved != 0 || dead != 0 {
		t.Errorf("a graceful restart of %s's sidecar led to %v transfers and %v dead marks", victim.id, moved, dead)
	}
	report.addf(t, "3b-terminate-sidecar-restart: SIGTERM -> exited %s with %d entries held; restarted sidecar ready %s after the SIGTERM; transfers %v, dead marks %v",
		ms(down), held, ms(back), moved, dead)
	s.judge(true, fmt.Sprintf("%d held at shutdown", held))
}

// renewStats summarises lease renewals from the nodes' metrics: results,
// mean latency, and how many took 0.5 s or more (a renewal that times out
// after TTL/3 leaves no second try before TTL - margin).
func renewStats(nodes []*node) string {
	var parts []string
	for _, n := range nodes {
		m, err := n.metrics()
		if err != nil {
			continue
		}
		count := m.sum("mmsidecar_lease_renew_seconds_count")
		mean := 0.0
		if count > 0 {
			mean = m.sum("mmsidecar_lease_renew_seconds_sum") / count
		}
		slow := count - m.sum("mmsidecar_lease_renew_seconds_bucket", "le", "0.256")
		res := m.byLabel("mmsidecar_lease_renewals_total", "result")
		parts = append(parts, fmt.Sprintf("%s: renewals ok %v error %v lost %v, mean %.0fms, %v over 256ms",
			n.id, res["ok"], res["error"], res["lost"], mean*1000, slow))
	}
	return "lease renewals: " + strings.Join(parts, "; ")
}

// allMetrics fetches every node's metrics.
func allMetrics(t *testing.T, nodes []*node) map[string]metricSet {
	out := make(map[string]metricSet)
	for _, n := range nodes {
		out[n.id] = n.mustMetrics()
	}
	return out
}

// steadyCost reports store requests per entry hop over a whole run:
// every entry hop is one queue file that is created, processed and
// finished (injected entries and successors alike).
func steadyCost(t *testing.T, nodes []*node, from, to map[string]metricSet, v verdict) {
	entries := v.Injected + v.HopRuns*(len(hops)-1)/len(hops)
	if entries <= 0 {
		t.Errorf("no entries processed")
		return
	}
	ops := make(map[string]float64)
	total, deleted := 0.0, 0.0
	for _, n := range nodes {
		a := from[n.id].byLabel("mmsidecar_store_requests_total", "op")
		for op, v := range to[n.id].byLabel("mmsidecar_store_requests_total", "op") {
			ops[op] += v - a[op]
			total += v - a[op]
		}
		deleted += to[n.id].sum("mmsidecar_deletes_total") - from[n.id].sum("mmsidecar_deletes_total")
	}
	names := make([]string, 0, len(ops))
	for op := range ops {
		names = append(names, op)
	}
	sort.Strings(names)
	var parts []string
	for _, op := range names {
		if ops[op] > 0 {
			parts = append(parts, fmt.Sprintf("%s %.3f", op, ops[op]/float64(entries)))
		}
	}
	report.addf(t, "store requests per entry hop (scenario 2, whole run incl. lease renewals and scans, %d entry hops): %.2f (%s); keys deleted per entry hop %.2f, %.1f keys per delete_many",
		entries, total/float64(entries), strings.Join(parts, ", "), deleted/float64(entries), deleted/max(ops["delete_many"], 1))
}

// takeoverTimes are the moments of a takeover, from the fault on.
type takeoverTimes struct {
	dead, first, last, empty time.Duration
	// ok: a survivor logged both the death (or a refused declaration,
	// see refused) and a claim.
	ok bool
	// refused: no declaration was answered as written, but one was
	// answered as refused after the fault. Only a scenario with a MinIO
	// server down accepts that: such a cluster can time out a
	// conditional write and commit it later (README.md, "MinIO"), and the
	// peers then take over on the dead lease they read.
	refused bool
}

// awaitTakeover waits until victim's namespace is empty and reads from the
// survivors' logs when they declared it dead, first claimed and last
// restored one of its entries.
func (s *scenario) awaitTakeover(victim *node, survivors []*node) takeoverTimes {
	s.t.Helper()
	err := waitFor(deadline, 100*time.Millisecond, func() (bool, string) {
		cp, err := s.c.copies(s.ctx)
		return err == nil && cp[victim.id] == 0, fmt.Sprint("copies ", cp, " err ", err)
	})
	if err != nil {
		s.t.Fatalf("takeover of %s: %v", victim.id, err)
	}
	tt := takeoverTimes{empty: time.Since(s.faultAt)}
	dead := logTimes(survivors, "declared peer dead", s.faultAt)
	if len(dead) == 0 {
		dead = logTimes(survivors, "declare peer dead: write refused; its silence starts again", s.faultAt)
		tt.refused = len(dead) > 0
	}
	first, last, ok := logMargin(survivors, s.faultAt)
	if ok && len(dead) > 0 {
		tt.dead, tt.first, tt.last, tt.ok = dead[0].Sub(s.faultAt), first.Sub(s.faultAt), last.Sub(s.faultAt), true
	}
	return tt
}
