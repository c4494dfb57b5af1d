//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSidecarCluster is issue 4's end-to-end proof with real Mailman 3:
// two nodes, each with its own queue directories and its own mmsidecar
// (the real binary), one MinIO, one shared list database, an SMTP sink.
// The scenarios run in order on one cluster, each checking that it
// leaves the cluster clean (queues empty, store mirroring the disks):
//
//  1. steady state, with 4. bad neighbours dropped into node a's queue
//     root, bad and shunt (and disguised entries into "in") half-way;
//  2. failover: a backlog on a, a's Mailman and sidecar SIGKILLed, b
//     takes over; then a restarts (sidecar first, Mailman after /readyz);
//  3. drain: a backlog on a, `mmsidecar drain` on a, b delivers it.
//
// It prints a table per scenario (and writes it to $MMSIDECAR_E2E_REPORT).
func TestSidecarCluster(t *testing.T) {
	RequireE2E(t)
	testStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 13*time.Minute)
	defer cancel()
	s := startSuite(ctx, t)
	defer func() {
		header := fmt.Sprintf("mmsidecar end-to-end (real Mailman 3, 2 nodes, %d members, lease ttl %v grace %v margin %v): %v",
			len(s.c.Members), leaseTTL, leaseGrace, leaseMargin, time.Since(testStart).Round(time.Second))
		t.Logf("%s\n%s", header, s.report)
		if err := s.report.WriteFile(header); err != nil {
			t.Error(err)
		}
	}()
	run := func(name string, f func(context.Context, *testing.T)) bool {
		completed := false
		t.Run(name, func(t *testing.T) {
			f(ctx, t)
			completed = true
		})
		return completed
	}
	var fo failoverResult
	steps := []struct {
		name string
		f    func(context.Context, *testing.T)
	}{
		{"1+4 steady state with bad neighbours", s.steady},
		{"2 failover", func(ctx context.Context, t *testing.T) { fo = s.failover(ctx, t) }},
		{"2b restart of the killed node", func(ctx context.Context, t *testing.T) { s.restart(ctx, t, fo) }},
		{"3 drain", s.drain},
	}
	for _, st := range steps {
		if !run(st.name, st.f) {
			t.Errorf("stopping after %q: it did not complete", st.name)
			return
		}
	}
	s.checkAudit(t)
	scans, checked := s.audit.Stats()
	t.Logf("G4 audit: %d scans of every queue directory, %d entry files checked", scans, checked)
	for name, sc := range s.sidecars {
		if n := sc.RaceReports(); n > 0 {
			t.Errorf("sidecar %s: %d data races reported in %s", name, n, sc.LogPath())
		}
	}
}

// steady posts 50 messages over both nodes; half-way it drops bad
// neighbours into node a's queue directories (scenario 4).
func (s *suite) steady(ctx context.Context, t *testing.T) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	c, a, b := s.c, s.a, s.b
	start := time.Now()
	ids := injectPosts(ctx, t, c, "steady", 25, a, b)

	target := filepath.Join(c.Root, "outside.txt")
	if err := os.WriteFile(target, []byte("outside the queues\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var strays []string
	for _, dir := range []string{a.Mailman.QueueDir(), a.Mailman.Queue("bad"), a.Mailman.Queue("shunt")} {
		bn, err := DropBadNeighbours(dir, target, c.Account)
		if err != nil {
			t.Fatal(err)
		}
		strays = append(strays, bn.Stray, bn.Symlink, bn.Unreadable)
	}
	link, unreadable, err := DropDisguisedEntries(a.Mailman.Queue("in"), target)
	if err != nil {
		t.Fatal(err)
	}
	var disguisedPsv []string
	for _, name := range []string{link, unreadable} {
		base := strings.TrimSuffix(name, ".pck")
		psv := filepath.Join(a.Mailman.Queue("bad"), base+".psv")
		disguisedPsv = append(disguisedPsv, psv)
		// Mailman's runner dequeues each to .bak before it moves it to
		// bad: for a few milliseconds the planted file is an "in" .bak,
		// and a scan that falls in that window sees it there.
		s.audit.Excuse(filepath.Join(a.Mailman.Queue("in"), name), filepath.Join(a.Mailman.Queue("in"), base+".bak"), psv)
	}
	s.audit.Excuse(strays...)
	neighbourIDs := injectPosts(ctx, t, c, "neighbour", 25, a, b)
	ids = append(ids, neighbourIDs...)

	tally, took := waitDelivered(ctx, t, c, ids, start)
	t.Logf("steady: 50 posts over both nodes delivered after %v: %s", took.Round(time.Millisecond), tally)
	if !tally.Complete() || tally.Expected != 50*len(c.Members) {
		t.Errorf("steady: %s (missing %v)", tally, tally.Missing)
	}
	s.report.Add(RowOf("1 steady state", 50, tally))

	// Mailman and the sidecar left every stray alone, and preserved the
	// disguised entries in bad (Mailman's doing).
	for _, p := range append(strays, disguisedPsv...) {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("planted file gone or moved: %v", err)
		}
	}
	for _, n := range c.Nodes {
		counts, err := n.Mailman.QueueCounts()
		if err != nil {
			t.Fatal(err)
		}
		wantBad := 0
		if n == a {
			wantBad = 1 // the unreadable disguised entry; the symlink counts as Other
		}
		if sh, bad := counts["shunt"], counts["bad"]; sh.Pck+sh.Psv != 0 || bad.Pck != 0 || bad.Psv != wantBad {
			t.Errorf("node %s shunted or preserved posts: %s", n.Name, FormatQueueCounts(counts))
		}
	}
	for _, n := range c.Nodes {
		s.checkHealthy(ctx, t, n)
	}
	// The sidecar counts the strays in the queues it watches (bad, shunt:
	// three names it does not understand each) and the disguised symlink.
	// Files in the queue root are not in any queue: it never looks at them.
	var met map[string]float64
	err = pollUntil(ctx, 200*time.Millisecond, "ignored-files metric", func() (bool, error) {
		var err error
		met, err = s.sidecars["a"].Metrics(ctx)
		return err == nil && met[`mmsidecar_ignored_files_total{reason="bad_name"}`] >= 6 &&
			met[`mmsidecar_ignored_files_total{reason="not_regular"}`] >= 1, err
	})
	if err != nil {
		t.Errorf("node a sidecar does not count the bad neighbours: %v; ignored: %v", err, ignoredOf(met))
	}
	st := s.waitMirrored(ctx, t, []*Node{a, b})
	requireNoLiveCopies(t, st)
	s.checkAudit(t)
	row := RowOf("4 bad neighbours", 25, c.Sink.Tally(neighbourIDs, c.Members))
	row.Note = fmt.Sprintf("posts after the drop; runners alive, no traceback; sidecar healthy, ignored %v", ignoredOf(met))
	s.report.Add(row)
}

func ignoredOf(met map[string]float64) map[string]float64 {
	out := make(map[string]float64)
	for k, v := range met {
		if r, ok := strings.CutPrefix(k, `mmsidecar_ignored_files_total{reason="`); ok {
			out[strings.TrimSuffix(r, `"}`)] = v
		}
	}
	return out
}

// failoverResult is what the failover leaves for the restart check.
type failoverResult struct {
	ids      []string
	inFlight []InFlightEntry
	totals   map[string]int // deliveries per post once b had delivered all
}

// failover builds a backlog on node a, catches a's runners with entries
// in flight, kills a's Mailman and sidecar, and lets b take over.
func (s *suite) failover(ctx context.Context, t *testing.T) failoverResult {
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	c, a, b := s.c, s.a, s.b
	const posts = 100
	if err := a.Mailman.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	ids := injectPosts(ctx, t, c, "failover", posts, a)
	if counts, err := a.Mailman.QueueCounts(); err != nil || counts["in"].Pck != posts {
		t.Fatalf("node a backlog: %s %v, want in=%dp", FormatQueueCounts(counts), err, posts)
	}
	// Let a's runners work in bursts and stop them at an arbitrary moment
	// until one is caught in the middle of an entry (a .bak), keeping most
	// of the backlog undelivered.
	var caught []InFlightEntry
	for attempt := 1; ; attempt++ {
		before := postsFullyDelivered(c, ids)
		if err := a.Mailman.Resume(); err != nil {
			t.Fatal(err)
		}
		bctx, bcancel := context.WithTimeout(ctx, 30*time.Second)
		err := pollUntil(bctx, 5*time.Millisecond, "a burst of deliveries", func() (bool, error) {
			return postsFullyDelivered(c, ids) >= before+3, nil
		})
		bcancel()
		if perr := a.Mailman.Pause(ctx); perr != nil {
			t.Fatal(perr)
		}
		if err != nil {
			t.Fatal(err)
		}
		if caught, err = inFlight(a, ids); err != nil {
			t.Fatal(err)
		}
		if len(caught) > 0 || attempt == 6 || posts-postsFullyDelivered(c, ids) < 60 {
			break
		}
	}
	// The kill comes once a's sidecar has mirrored everything: what b
	// must restore is then exactly what a holds on disk.
	s.waitMirrored(ctx, t, []*Node{a, b})
	backlog, err := a.Mailman.QueueCounts()
	if err != nil {
		t.Fatal(err)
	}
	undelivered := posts - postsFullyDelivered(c, ids)
	killAt := time.Now()
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	inflight, err := inFlight(a, ids)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed node a (Mailman and sidecar) with %d posts undelivered; a's queues: %s; in flight: %v",
		undelivered, FormatQueueCounts(backlog), inflight)

	err = c.Sink.WaitFor(ctx, func() bool { return c.Sink.Tally(ids, c.Members).Lost == 0 })
	full := time.Since(killAt)
	if err != nil {
		bc, _ := b.Mailman.QueueCounts()
		t.Fatalf("failover: not delivered: %s; b's queues: %s: %v", c.Sink.Tally(ids, c.Members), FormatQueueCounts(bc), err)
	}
	first, _ := firstDeliveryAfter(c, ids, killAt)
	waitNodeEmpty(ctx, t, b)
	st := s.waitMirrored(ctx, t, []*Node{b}, "a")
	state, _ := st.State("a")
	tally := c.Sink.Tally(ids, c.Members)
	t.Logf("failover: all delivered %v after the kill (first delivery after %v); a's lease: %s; %s",
		full.Round(time.Millisecond), first.Round(time.Millisecond), state, tally)

	// Duplicates are allowed only for the posts that were in flight.
	allowed := make(map[string]bool)
	for _, e := range inflight {
		for _, id := range e.IDs {
			allowed[id] = true
		}
	}
	dups := duplicatedIDs(c, ids)
	for _, id := range dups {
		if !allowed[id] {
			t.Errorf("post %s delivered more than once but was not in flight at the kill", id)
		}
	}
	if tally.Lost != 0 || tally.Unexpected != 0 || tally.Duplicated > len(allowed)*len(c.Members) {
		t.Errorf("failover: %s; in flight at the kill: %d entries carrying %d posts", tally, len(inflight), len(allowed))
	}
	s.checkHealthy(ctx, t, b)
	met, err := s.sidecars["b"].Metrics(ctx)
	if err != nil {
		t.Error(err)
	}
	row := RowOf("2 failover", posts, tally)
	row.InFlight = len(inflight)
	row.FullAfter = full
	row.Note = fmt.Sprintf("a at kill: %s, %d posts undelivered; first delivery %v after kill; b took over %v entries; dup posts %d",
		FormatQueueCounts(backlog), undelivered, first.Round(10*time.Millisecond),
		met[`mmsidecar_transfers_total{how="takeover"}`], len(dups))
	s.report.Add(row)
	s.checkAudit(t)

	totals := make(map[string]int, len(ids))
	for _, id := range ids {
		for _, m := range c.Members {
			totals[id] += c.Sink.Deliveries(id, m)
		}
	}
	return failoverResult{ids: ids, inFlight: inflight, totals: totals}
}

// restart brings the killed node back in the documented order (sidecar,
// then Mailman once /readyz is 200): the entries b took over must not run
// again on a.
func (s *suite) restart(ctx context.Context, t *testing.T, fo failoverResult) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	c, a, b := s.c, s.a, s.b
	if fo.ids == nil {
		t.Fatal("no failover to restart from")
	}
	left, err := a.Mailman.QueueCounts()
	if err != nil {
		t.Fatal(err)
	}
	oldBak, err := inFlight(a, fo.ids)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := s.sidecars["a"].Start(ctx); err != nil {
		t.Fatal(err)
	}
	sidecarReady := time.Since(t0)
	visible, err := a.Mailman.QueueCounts()
	if err != nil {
		t.Fatal(err)
	}
	if v := SumQueues(visible); v.Pck != 0 {
		t.Errorf("node a's sidecar is ready but %d old .pck are visible to a's runners: %s", v.Pck, FormatQueueCounts(visible))
	}
	t1 := time.Now()
	if err := a.Mailman.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("restart: a's queues after the kill: %s; sidecar ready after %v (queues then: %s); Mailman ready after %v",
		FormatQueueCounts(left), sidecarReady.Round(time.Millisecond), FormatQueueCounts(visible), time.Since(t1).Round(time.Millisecond))
	s.snapshotHealth(t, a)
	waitNodeEmpty(ctx, t, a)
	waitNodeEmpty(ctx, t, b)
	s.waitMirrored(ctx, t, []*Node{a, b})

	var again []string
	extra := 0
	for _, id := range fo.ids {
		n := 0
		for _, m := range c.Members {
			n += c.Sink.Deliveries(id, m)
		}
		if n > fo.totals[id] {
			again = append(again, id)
			extra += n - fo.totals[id]
		}
	}
	if len(again) > 0 {
		t.Errorf("G2/G6: restarting node a delivered %d posts again (%d deliveries) that node b had taken over and delivered: %v; "+
			".bak files a kept from the kill, which Mailman's start-up recovery turns back into .pck: %v",
			len(again), extra, again, oldBak)
	}
	met, err := s.sidecars["a"].Metrics(ctx)
	if err != nil {
		t.Error(err)
	}
	for _, n := range c.Nodes {
		s.checkHealthy(ctx, t, n)
	}
	tally := c.Sink.Tally(fo.ids, c.Members)
	row := RowOf("2b restart of a", len(fo.ids), tally)
	row.Duplicated = extra
	row.InFlight = len(oldBak)
	row.Note = fmt.Sprintf("duplicated = deliveries after a's restart; a's sidecar held %v and dropped %v old entries, among them the %d .bak left by the kill",
		met[`mmsidecar_quarantined_entries_total`], met[`mmsidecar_settled_entries_total{result="dropped"}`], len(oldBak))
	s.report.Add(row)
	s.checkAudit(t)
}
