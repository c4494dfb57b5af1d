package chaos

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// lockedLease is a node taken over after a store outage because the
// store kept refusing its lease writes once it was back: a MinIO cluster
// keeps keys that had writes in flight when it lost quorum locked for a
// minute or more after it regains it (docs/minio-cluster.md). To the
// protocol such a node is partitioned away, and its takeover is correct.
type lockedLease struct {
	// by is the peer that logged the declaration ("" when its write was
	// not answered but committed: the node itself found it).
	node, by string
	// back is when the node came back under a lease that said it was
	// taken over; refused counts its failed re-acquires between the
	// store's return and then, lastErr the last one's error.
	back    time.Time
	refused int
	lastErr string
}

// outageDeaths finds the nodes that came back from a store outage taken
// over (their "lease acquired" says taken_over) at or after faultAt. One
// is explained (a lockedLease) when, from backAt until it came back so,
// it logged refused re-acquires and no lease: the store refused its
// writes after it was back. Every other takeover, and every declaration
// of one of nodes that it never came back from, is described in odd.
// declared counts the declarations logged, of any node. The store counts as back from the first
// lease any node acquired after faultAt, when that came before backAt:
// the harness's backAt is when starting the servers returned, which can
// be many seconds after the first of them restored write quorum.
func outageDeaths(nodes []*node, faultAt, backAt time.Time) (explained []lockedLease, odd []string, declared int) {
	logs := make(map[string][]logRecord, len(nodes))
	for _, n := range nodes {
		logs[n.id] = readLog(n.sidecarLog)
		for _, r := range logs[n.id] {
			if r.Msg == "lease acquired" && !r.Time.Before(faultAt) && r.Time.Before(backAt) {
				backAt = r.Time
			}
		}
	}
	type declaration struct {
		by string
		at time.Time
	}
	decls := make(map[string][]declaration) // by declared node
	for _, n := range nodes {
		for _, r := range logs[n.id] {
			if r.Msg == "declared peer dead" && !r.Time.Before(faultAt) {
				decls[r.Peer] = append(decls[r.Peer], declaration{n.id, r.Time})
				declared++
			}
		}
	}
	for _, n := range nodes {
		var since time.Time // start of the current run of refusals
		l := lockedLease{node: n.id}
		for _, r := range logs[n.id] {
			if r.Time.Before(faultAt) {
				continue
			}
			switch {
			case r.Msg == "fenced: lease not re-acquired" && !r.Time.Before(backAt):
				l.refused++
				l.lastErr = r.Err
			case r.Msg == "lease acquired" && !r.TakenOver:
				l.refused, since = 0, r.Time
			case r.Msg == "lease acquired":
				l.back = r.Time
				var ds []declaration
				for _, d := range decls[n.id] {
					if !d.at.After(r.Time) && !d.at.Before(since) {
						ds = append(ds, d)
					}
				}
				late := len(ds) == 0 || !ds[len(ds)-1].at.Before(backAt)
				if len(ds) > 0 {
					l.by = ds[len(ds)-1].by
				}
				if since.Before(backAt) && r.Time.After(backAt) && l.refused > 0 && late {
					explained = append(explained, l)
				} else {
					odd = append(odd, fmt.Sprintf("%s came back taken over at %s (store back at %s; re-acquires refused since: %d; declarations %v; a lease of its own since %s)",
						n.id, r.Time.Format("15:04:05.000"), backAt.Format("15:04:05.000"), l.refused, ds, since.Format("15:04:05.000")))
				}
				l = lockedLease{node: n.id}
				since = r.Time
			}
		}
	}
	for node, ds := range decls {
		if _, ok := logs[node]; !ok {
			continue // not one of nodes: the caller judges it
		}
		came := false
		for _, v := range explained {
			came = came || v.node == node
		}
		for _, o := range odd {
			came = came || strings.HasPrefix(o, node+" came back")
		}
		if !came {
			odd = append(odd, fmt.Sprintf("%s declared dead (%v) but never came back taken over", node, ds))
		}
	}
	sort.Strings(odd)
	return explained, odd, declared
}

// allowTakeoverReruns lets every entry claimed from one of the victims
// at or after since, and the later hops of its message, run once more:
// G6's in-flight rule for a node that died. A finished entry whose copy
// the victim could not delete (the store refused that too) is among them.
// Claims from the expected nodes (killed by the scenario, and judged by
// its own rules) are skipped; claims from any other node are described
// in odd.
func (s *scenario) allowTakeoverReruns(victims []lockedLease, since time.Time, expected ...string) (claimed int, odd []string) {
	from := make(map[string]bool)
	for _, v := range victims {
		from[v.node] = true
	}
	skip := make(map[string]bool)
	for _, e := range expected {
		skip[e] = true
	}
	byBase := make(map[string]string) // "<queue>/<base>" -> message id
	for _, e := range s.c.ledger() {
		byBase[e.Queue+"/"+e.Base] = e.ID
	}
	for _, n := range s.c.nodes {
		for _, r := range readLog(n.sidecarLog) {
			if r.Msg != "claimed" || r.Time.Before(since) || skip[r.From] {
				continue
			}
			if !from[r.From] {
				odd = append(odd, fmt.Sprintf("%s claimed %s from %s at %s", n.id, r.Entry, r.From, r.Time.Format("15:04:05.000")))
				continue
			}
			claimed++
			k, _ := entryKey(r.Entry)
			if id, ok := byBase[k]; ok {
				q, _, _ := strings.Cut(k, "/")
				s.inFlight[q+"/"+id] = true
			}
		}
	}
	sort.Strings(odd)
	return claimed, odd
}
