package chaos

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// testPartition cuts one node off the store (its sidecar's connections
// to MinIO are reset and new ones hang) while the others still reach it,
// until the survivors have taken over its namespace; then the partition
// heals. This is the timing model's own case: the node must fence itself
// (TTL - margin) before any peer takes over (TTL + grace). It measures the
// fence-to-takeover margin and checks G2 (no runner dequeues an entry that
// another node has restored). The victim's runner keeps working through
// the partition; entries it finished after it lost the store cannot be
// known finished, so the survivors run them again: those duplicates are
// measured, by when the victim ran them.
func testPartition(t *testing.T, m *storetest.MinIO) {
	s := newScenario(t, m, "7-partition-node", clusterOptions{Proxy: true})
	victim := s.c.node("c")
	survivors := s.c.others(victim)
	s.injectAll()
	s.snapshot()
	s.faultAt = time.Now()
	victim.proxy.partition()
	err := waitFor(deadline, 100*time.Millisecond, func() (bool, string) {
		cp, err := s.c.copies(s.ctx)
		return err == nil && cp[victim.id] == 0, fmt.Sprint("copies ", cp, " err ", err)
	})
	if err != nil {
		t.Fatalf("takeover of the partitioned node: %v", err)
	}
	tookOver := time.Since(s.faultAt)
	victim.proxy.heal()
	s.waitDone(s.c.nodes)

	fenceStart := logTimes([]*node{victim}, "lease not renewed within TTL - margin: fencing", s.faultAt)
	fenced := fenceEnds([]*node{victim}, s.faultAt)
	first, last, ok := logMargin(survivors, s.faultAt)
	if len(fenceStart) == 0 || len(fenced) == 0 || !ok {
		t.Fatalf("missing fence (%d, %d) or takeover (%v) in the logs", len(fenceStart), len(fenced), ok)
	}
	fs, fe := fenceStart[0], fenced[0]
	report.addf(t, "7-partition-node: partition at 0; victim began to fence at %s, quarantine done at %s; survivors' first claim at %s, last restore at %s; namespace empty at %s. Fence-to-takeover margin: %s from fence start, %s from quarantine done (model: grace + margin = %s)",
		ms(fs.Sub(s.faultAt)), ms(fe.Sub(s.faultAt)), ms(first.Sub(s.faultAt)), ms(last.Sub(s.faultAt)), ms(tookOver),
		ms(first.Sub(fs)), ms(first.Sub(fe)), ms(leaseGrace+leaseMargin))
	if !fe.Before(first) {
		t.Errorf("G2 timing: a survivor claimed at %s, before the victim's quarantine was done at %s", first.Format("15:04:05.000"), fe.Format("15:04:05.000"))
	}

	// When did the victim run the messages the survivors ran again? Each
	// message counts once, at its first hop run on both sides; its later
	// hops run twice as a consequence.
	led := s.c.ledger()
	type runs struct{ victim, other map[int]time.Time }
	byID := make(map[string]*runs)
	for _, e := range led {
		r := byID[e.ID]
		if r == nil {
			r = &runs{victim: map[int]time.Time{}, other: map[int]time.Time{}}
			byID[e.ID] = r
		}
		side := r.other
		if e.Node == victim.id {
			side = r.victim
		}
		if at, ok := side[hopIndex(e.Queue)]; !ok || e.At.Before(at) {
			side[hopIndex(e.Queue)] = e.At
		}
	}
	buckets := map[string]int{}
	for _, r := range byID {
		for h := range hops {
			at, v := r.victim[h]
			_, o := r.other[h]
			if !v || !o {
				continue
			}
			switch {
			case at.Before(s.faultAt):
				buckets["before the partition (copy not yet deleted)"]++
			case at.Before(fs):
				buckets["during the partition, before the fence"]++
			case at.Before(fe):
				buckets["while the fence was quarantining"]++
			default:
				buckets["after the fence"]++
			}
			break
		}
	}
	var parts []string
	for b, k := range buckets {
		parts = append(parts, fmt.Sprintf("%d %s", k, b))
	}
	sort.Strings(parts)
	v := s.judge(false, fmt.Sprintf("partitioned %s", tookOver.Round(100*time.Millisecond)))
	report.addf(t, "7-partition-node: %d hop runs twice; messages run by the victim and again by a survivor, by when the victim ran them: %s", v.Dups, strings.Join(parts, ", "))
	if s.leakDesc != "" {
		t.Error(s.leakDesc)
	}
	if len(v.Breaches) > 0 {
		t.Errorf("%d G2 breaches within the timing model: %s", len(v.Breaches), firstN(v.Breaches, 5))
	}
	if buckets["after the fence"] > 0 {
		t.Errorf("the victim's runner dequeued %d messages after its fence that a survivor ran too", buckets["after the fence"])
	}
}
