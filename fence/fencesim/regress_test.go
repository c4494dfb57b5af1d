package fencesim

import "testing"

// regressions are seeds on which the simulator found a bug in the fence
// protocol. Each must run clean. The fixed ones fail on the code before
// their fix; the open ones fail until their fix lands (see the
// simulator's report in issue 5).
var regressions = []struct {
	name string
	seed uint64
	opt  Options
	open bool
}{
	// A renewal that commits but loses its answer was never recognised:
	// the node fenced and then refused its own lease as ErrDuplicateNode
	// until a peer declared it dead; with every node there, nobody could
	// (fixed in lease.go: re-send the unresolved attempt).
	{name: "lease-lost-answer-livelock", seed: 744},
	// Start's lease write after the node was declared dead committed but
	// lost its answer; the retry forgot that the node had been taken
	// over, so Start left .pck files visible that peers had restored
	// (fixed in lease.go: markedDead is set before the write).
	{name: "lease-lost-answer-restart-g2", seed: 54},
	// StartDrain's renewal raced the loop's: the loser failed with a 503
	// after the winner committed, was marked unresolved and re-sent on the
	// winner's ETag, writing an older lease body (same seq, state back to
	// live) (fixed in lease.go: unresolved only if no write succeeded
	// since the attempt's base version).
	{name: "lease-concurrent-renewals", seed: 67123},
	// A takeover whose release failed left the entry staged; ClaimsPass
	// took Has() for restored, deleted the source copy and never
	// released it (fixed in claims.go).
	{name: "staged-entry-never-released", seed: 283},
	{name: "staged-entry-never-released-2", seed: 446},

	// A node declared dead restarts on its old disk; Mailman's runner
	// recovery turned a .bak that a peer had already restored back into a
	// .pck (G2); or the mirror uploaded the stale .bak into the node's new
	// epoch and, when the node died again, the finished entry was claimed
	// afresh (G3 token reset, re-run). Fixed by Quarantine(all) holding
	// .bak and .psv at start-up, before Mailman runs.
	{name: "stale-bak-recovered", seed: 71},
	{name: "stale-bak-recovered-2", seed: 145},
	{name: "stale-bak-mirrored", seed: 68},
	// A claim was collected while a node that held the entry was
	// declared dead and had not come back; it restored the finished
	// entry with a fresh claim (G3). Fixed in claims.go: a claim lists
	// every past holder and goes only when each has settled under a
	// newer epoch (or drained).
	{name: "claim-collected-before-holder-returns", seed: 25898},
	// The owner collected the claim of a finished entry while its own
	// copy was still in the store; it died, and a peer restored the
	// finished entry from that copy (G3). Fixed: the owner's copies must
	// be gone first.
	{name: "claim-collected-before-own-copy-deleted", seed: 78},
	// A takeover's claim lost to a claim that was collected before the
	// loser read it; the loser retried with a fresh claim (G3). Fixed in
	// takeover.go (a vanished claim means a finished entry) and
	// claims.go (a claim goes 2 TTL after its entry was seen finished;
	// takeovers do not trust listings older than a TTL).
	{name: "claim-collected-under-a-racing-takeover", seed: 7440},
	{name: "claim-collected-under-a-racing-takeover-2", seed: 924},
	// A node settled an entry under a new epoch and died again before its
	// old copy was deleted; a survivor restored the entry from the old
	// copy, and its takeover of the new copy found its own claim pointing
	// elsewhere and left that copy for good; the claim was collected and
	// the copy claimed afresh (G3). Fixed in takeover.go (secondCopy).
	{name: "second-copy-of-a-restored-entry", seed: 25157},
	{name: "second-copy-of-a-restored-entry-2", seed: 20077},
	// A takeover claim committed but its answer was lost; the entry
	// waited for the next round, which a failed scan delayed past the
	// failover bound (G5). Fixed in takeover.go: the claim is retried at
	// once, and the retry recognises its own committed claim.
	{name: "claim-answer-lost-delays-restore", seed: 99869},
	// An entry in flight (.bak) when its node was fenced and declared
	// dead is won back by that node's takeover of its own old epoch.
	// Stage is a no-op (the file is there) and Release returned at once
	// for an entry already queued, so complete() deleted the only copy
	// (G1). Fixed in the Local contract: Release of an entry already
	// visible makes sure it has a copy at the node's current epoch.
	{name: "queued-entry-taken-over-loses-its-copy", seed: 6667},

	// With the runner gate. A fenced node's first lease write under a new
	// epoch, after peers had declared it dead, committed but lost its
	// answer; the retry read that lease back as its own and did not report
	// the death, so the node opened its gate without holding or settling
	// the entries peers had taken over: in/#48 was admitted on node1 and
	// on node2 (G2). Fixed in lease.go: acquire reports a death when the
	// new lease's DeadEpoch is above the one the node last held.
	{name: "gate-lease-lost-answer-forgets-death", seed: 1271, opt: Options{RunnerGate: true}},
	// With the runner gate. node1, declared dead while down, denied
	// out/#71 to its runners (node3 had taken it over; node1 still had it
	// as a .bak, which Mailman's recovery made a .pck again). node3 died
	// in turn and node1 took #71 back, in place; the deny list still said
	// a peer owned it, so node1 held and dropped its only queued copy,
	// and the entry never ran again (G5). Fixed in gate.go: a denied
	// entry whose claim is this node's again leaves the list and stays.
	{name: "gate-denied-entry-taken-back", seed: 8637, opt: Options{RunnerGate: true}},
	// With the runner gate. node2, back after it was declared dead, was
	// settling (admit new, since its death's cutoff) when an outage fenced
	// it; the closed record's cutoffs dropped since. Back under a new epoch
	// (not declared dead again), it published the settling rule with a
	// zero since, which admits every entry: in/#172, in flight at its
	// death and restored by node0, was admitted on both (G2). Fixed in
	// gate.go: Cutoffs.Next keeps since until the gate opens.
	{name: "gate-fence-while-settling-forgets-since", seed: 19495, opt: Options{RunnerGate: true}},
	// node1 restored in/#131 from node0 and mirrored it under its epoch 2,
	// but the release failed (its gate record could not be written); then
	// its disk was wiped. Back under epoch 3, its claims pass re-claimed
	// the entry from node0's copy, ran it, and collected the claim; its
	// own copy under epoch 2 was left (node0, taking over that epoch, had
	// met node1's live claim and left it), and node0 claimed it afresh
	// (G3: token 1 after 2, a re-run). Fixed in claims.go: the owner's old
	// epoch goes into the claim's past holders when it re-claims under a
	// new one, and the owner deletes its copies there before the claim.
	{name: "own-old-epoch-copy-outlives-claim", seed: 1492, opt: Options{RunnerGate: true}},
	// With the runner gate. node2, back after it was declared dead,
	// reclaimed in/#43, which a runner still had as a .bak, under its new
	// epoch; its only copy stayed under the dead epoch, and the claims
	// pass, seeing the entry here and the claim its own, deleted that copy
	// as a restored entry's source (G1: in flight with no copy). Fixed in
	// settle.go: settleInFlight releases a reclaimed entry, which makes
	// sure of a copy under the current epoch.
	{name: "gate-reclaimed-in-flight-entry-loses-its-copy", seed: 274, opt: Options{RunnerGate: true}},
	// With the runner gate. node2 had denied pipeline/#111 (a .bak in
	// flight at its death that node0 took over, and node1 from node0);
	// then node2 crashed whole and came back before anyone declared it
	// dead. The new process started with an empty deny list and nothing
	// to settle, and Mailman's recovery made the .bak a .pck that its open
	// gate admitted, as node1's did (G2). Fixed in gate.go: a publisher
	// that can say what the record it started from denied (GateDenials)
	// seeds the deny list; runner.GateFile does not implement it yet.
	{name: "gate-deny-list-lost-at-restart", seed: 6331, opt: Options{RunnerGate: true}},
	// A drain handed an entry to a peer that had just died (not yet
	// declared dead), then the operator cancelled the drain: nobody
	// handed the copy again, and no takeover of the dead peer looks in
	// the drainer's namespace (G5) (fixed in drain.go: after a cancel,
	// DrainStep follows the handed-off copies until each is picked up).
	{name: "cancelled-drain-orphans-a-handoff", seed: 831, opt: Options{CancelDrain: true}},
}

// TestSimRegressions replays the seeds of the bugs the simulator found.
func TestSimRegressions(t *testing.T) {
	for _, rg := range regressions {
		t.Run(rg.name, func(t *testing.T) {
			r := Run(rg.seed, rg.opt)
			if r.Violation == nil {
				return
			}
			if rg.open {
				t.Errorf("open finding still reproduces (fix pending in fence):\n%s", r.Violation.Report)
				return
			}
			t.Errorf("fixed bug is back:\n%s", r.Violation.Report)
		})
	}
}
