package chaos

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// testDrainDuringTakeover: node c dies with a backlog while b, which
// holds entries of its own, is draining. The takeover is slowed (one
// entry at a time) so that it outlasts 4 TTL: the keeper's claims passes
// then run light, reading none of the handoff claims b writes, and leave
// them to the first pass after the takeover. Every entry of c and of b
// must end on a, exactly once, b's drain must finish, and no copy may be
// left in b's or c's namespace.
func testDrainDuringTakeover(t *testing.T, m *storetest.MinIO) {
	const dead, held = 3000, 150
	c := newCluster(t, m, clusterOptions{NoWorkers: true, Env: []string{"MMSIDECAR_TAKEOVER_CONCURRENCY=1"}})
	c.start()
	keeper, drainer, victim := c.node("a"), c.node("b"), c.node("c")
	ctx := t.Context()
	c.inject(ctx, "t", dead, 0, []*node{victim})()
	c.inject(ctx, "u", held, 0, []*node{drainer})()
	if t.Failed() {
		t.FailNow()
	}
	wait := deadline + time.Duration(dead+held)*40*time.Millisecond
	err := waitFor(wait, 200*time.Millisecond, func() (bool, string) {
		cp, err := c.copies(ctx)
		return err == nil && cp[victim.id] == dead && cp[drainer.id] == held, fmt.Sprint("copies ", cp, " err ", err)
	})
	if err != nil {
		t.Fatalf("backlogs not mirrored: %v", err)
	}
	before := keeper.mustMetrics()

	faultAt := time.Now()
	if err := victim.sidecar.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	victim.sidecar.kill()
	// The drain starts once the takeover has: b has claimed from c.
	err = waitFor(wait, 50*time.Millisecond, func() (bool, string) {
		return len(logTimes([]*node{drainer}, "claimed", faultAt)) > 0, "no claim by " + drainer.id
	})
	if err != nil {
		t.Fatalf("takeover did not start: %v", err)
	}
	drainAt := time.Now()
	dctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(dctx, sidecarBin, "drain")
	cmd.Env = drainer.env()
	out, err := cmd.CombinedOutput()
	drained := time.Since(drainAt)
	if err != nil {
		t.Fatalf("mmsidecar drain on %s after %s: %v\n%s", drainer.id, ms(drained), err, out)
	}
	if fc := drainer.counts(); fc.Pck+fc.Bak+fc.Held != 0 {
		t.Errorf("drain exited 0 but %s holds %s", drainer.id, fc)
	}
	err = waitFor(wait, 200*time.Millisecond, func() (bool, string) {
		cp, err := c.copies(ctx)
		k := keeper.backlog("in")
		return err == nil && cp[victim.id] == 0 && cp[drainer.id] == 0 && k == dead+held,
			fmt.Sprintf("copies %v (err %v); %s holds %d of %d", cp, err, keeper.id, k, dead+held)
	})
	if err != nil {
		t.Fatalf("after the drain: %v", err)
	}

	files, err := keeper.files()
	if err != nil {
		t.Fatal(err)
	}
	ids, err := idsOf(files, func(f localFile) bool { return !f.Held && f.Ext == fence.ExtPck })
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != dead+held {
		t.Errorf("%s holds %d distinct entries, want %d", keeper.id, len(ids), dead+held)
	}
	for _, id := range c.injectedIDs() {
		if !ids["in/"+id] {
			t.Errorf("entry %s is not on %s", id, keeper.id)
			break
		}
	}

	after := keeper.mustMetrics()
	delta := func(name string, match ...string) float64 {
		return after.sum(name, match...) - before.sum(name, match...)
	}
	light, full := delta("mmsidecar_claims_passes_total", "kind", "light"), delta("mmsidecar_claims_passes_total", "kind", "full")
	deferred := delta("mmsidecar_claims_deferred_total")
	handoffs := delta("mmsidecar_transfers_total", "how", "handoff")
	rounds := logTimes([]*node{keeper}, "takeover round", faultAt)
	var span time.Duration
	if len(rounds) > 0 {
		span = rounds[len(rounds)-1].Sub(rounds[0])
	}
	// The claims pass waits at most 4 TTL while a takeover has entries
	// left, and the drain's change of the live set can end one round
	// early (a full pass may run then): rounds that go on for 7 TTL had
	// a pass during the takeover, light.
	if span > 7*leaseTTL && light == 0 {
		t.Errorf("%s's takeover rounds spanned %s (7 TTL = %s) without a light claims pass (full passes: %v)", keeper.id, ms(span), ms(7*leaseTTL), full)
	}
	if handoffs == 0 {
		t.Errorf("%s restored no entry by handoff: the drain handed nothing over", keeper.id)
	}
	report.addf(t, "takeover-drain: %s killed with %d queued, %s drained %s after the kill (holding %d and its share of the takeover); drain exited 0 after %s (%s); %s: takeover rounds over %s, claims passes light %v / full %v, claims deferred %v, %v entries restored by handoff",
		victim.id, dead, drainer.id, ms(drainAt.Sub(faultAt)), held, ms(drained), strings.TrimSpace(lastLine(string(out))), keeper.id, ms(span), light, full, deferred, handoffs)
}
