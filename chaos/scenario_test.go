package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
	"github.com/mmsidecar/mmsidecar/store"
)

// Load of every scenario: 2,000 messages injected across the nodes at
// injectRate per node, each hop taking work in flight, so that each node's
// in queue builds a backlog of hundreds.
// MMSIDECAR_CHAOS_RATE and MMSIDECAR_CHAOS_WORK override the rates.
const (
	injectTotal       = 2000
	defaultInjectRate = 50.0 // per node, entries/s
	defaultWork       = 30 * time.Millisecond
	envRate           = "MMSIDECAR_CHAOS_RATE"
	envWork           = "MMSIDECAR_CHAOS_WORK"
)

// injectRate is each node's injection rate, entries/s.
func injectRate() float64 {
	if v, err := strconv.ParseFloat(os.Getenv(envRate), 64); err == nil && v > 0 {
		return v
	}
	return defaultInjectRate
}

// workTime is each entry's time in flight per hop.
func workTime() time.Duration {
	if d, err := time.ParseDuration(os.Getenv(envWork)); err == nil && d > 0 {
		return d
	}
	return defaultWork
}

// lagSample is the largest mirror backlog of any node seen while
// sampling: entries without a durable copy, uploads and deletes pending.
type lagSample struct{ Unmirrored, PendingUploads, PendingDeletes int }

func (l lagSample) String() string {
	return fmt.Sprintf("max %d unmirrored, %d uploads and %d deletes pending on one node", l.Unmirrored, l.PendingUploads, l.PendingDeletes)
}

// sampleLag polls every node's GET /status until the returned function is
// called, which returns the largest backlog seen.
func (s *scenario) sampleLag() func() lagSample {
	stop := make(chan struct{})
	res := make(chan lagSample, 1)
	go func() {
		var peak lagSample
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, n := range s.c.nodes {
				code, body, err := httpGet(n.addr, "/status")
				if err != nil || code != 200 {
					continue
				}
				var st struct {
					PendingUploads int `json:"pending_uploads"`
					PendingDeletes int `json:"pending_deletes"`
					Queues         map[string]struct {
						Unmirrored int `json:"unmirrored"`
					} `json:"queues"`
				}
				if json.Unmarshal([]byte(body), &st) != nil {
					continue
				}
				un := 0
				for _, q := range st.Queues {
					un += q.Unmirrored
				}
				peak.Unmirrored = max(peak.Unmirrored, un)
				peak.PendingUploads = max(peak.PendingUploads, st.PendingUploads)
				peak.PendingDeletes = max(peak.PendingDeletes, st.PendingDeletes)
			}
			select {
			case <-stop:
				res <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return func() lagSample { close(stop); return <-res }
}

// stuckAfter is how long waitDone lets nothing move before it gives up.
const stuckAfter = 30 * time.Second

// scenario is one fault played against a fresh cluster.
type scenario struct {
	t    *testing.T
	name string
	c    *cluster
	ctx  context.Context
	// entries is how many messages injectAll injects (injectTotal
	// unless a shortened scenario sets fewer).
	entries int
	// rate is each node's injection rate, entries/s; zero means
	// injectRate().
	rate float64
	// faultAt is when the fault began.
	faultAt time.Time
	// inFlight holds "<queue>/<id>" of entries in flight on a SIGKILLed
	// worker, which may run twice.
	inFlight map[hopID]bool
	// staleAtKill holds "<queue>/<base>" of copies in a killed node's
	// namespace whose entry was no longer on its disk at the kill.
	staleAtKill map[string]bool
	// killed and localAtKill are the killed node and "<queue>/<base>" of
	// every file on its disk at the kill (lateCopies).
	killed      *node
	localAtKill map[string]bool
	// lag is the largest mirror backlog sampled before the fault.
	lag lagSample
	// leaked counts the copies, by namespace, still in the store after
	// everything was finished; leakDesc describes them.
	leaked   map[string]int
	leakDesc string
	// deleteWait is how long the store may take to let the last copies
	// go once everything is finished (default 15 s).
	deleteWait time.Duration
	// stuckWait is how long waitDone lets nothing move (default
	// stuckAfter).
	stuckWait time.Duration
	// minQuarantine is the fewest entries a store outage must find
	// queued and quarantine (default min(100, entries/20)).
	minQuarantine int
	// before is every node's metrics just before the fault, scraped at
	// snapAt.
	before map[string]metricSet
	snapAt time.Time
	// staleWindow is how long before a kill an entry may have finished
	// and still be re-run from its undeleted copy: the mirror's lag bound
	// (unmirroredWindow), or more when the killed node's own metrics said
	// its oldest pending delete was older (the mirror was behind, and
	// said so).
	staleWindow time.Duration
}

func newScenario(t *testing.T, m storeServer, name string, opt clusterOptions) *scenario {
	if opt.Work == 0 {
		opt.Work = workTime()
	}
	c := newCluster(t, m, opt)
	c.start()
	return &scenario{t: t, name: name, c: c, ctx: t.Context(), entries: injectTotal, inFlight: map[hopID]bool{}, staleAtKill: map[string]bool{}}
}

// injectAll injects the scenario's messages (2,000 unless shortened) and
// waits until they are all written.
func (s *scenario) injectAll() {
	s.t.Helper()
	stop := s.sampleLag()
	rate := s.rate
	if rate == 0 {
		rate = injectRate()
	}
	s.c.inject(s.ctx, s.tag(), s.entries, rate, s.c.nodes)()
	s.lag = stop()
	if s.t.Failed() {
		s.t.FailNow()
	}
}

// tag is the scenario's message id prefix.
func (s *scenario) tag() string {
	name, _, _ := strings.Cut(s.name, "-")
	return "s" + name
}

// snapshot records every node's metrics as "before the fault".
func (s *scenario) snapshot() {
	s.t.Helper()
	s.before = make(map[string]metricSet)
	s.snapAt = time.Now()
	for _, n := range s.c.nodes {
		s.before[n.id] = n.mustMetrics()
	}
}

// deleteLagAtKill sets staleWindow from n's oldest pending delete at the
// snapshot: every copy still waiting for its delete at the kill was
// queued after that one (or after the snapshot), so its entry finished
// at most that long before the kill, plus the time the mirror takes to
// notice a finished entry (deleteNoticeSlack).
func (s *scenario) deleteLagAtKill(n *node) {
	set, ok := s.before[n.id]
	if !ok || s.faultAt.IsZero() {
		return
	}
	age := time.Duration(set.sum("mmsidecar_oldest_delete_seconds") * float64(time.Second))
	w := age + s.faultAt.Sub(s.snapAt) + deleteNoticeSlack
	if w <= unmirroredWindow {
		return
	}
	s.staleWindow = w
	report.addf(s.t, "%s: %s's mirror was behind its lag bound at the kill: its oldest pending delete was %s old at the snapshot (bound %s); finished entries re-run from copies it had not deleted yet are allowed within %s",
		s.name, n.id, ms(age), unmirroredWindow, ms(w))
}

// deleteNoticeSlack is how long the mirror may take from an entry's
// finish to queueing the delete of its copy.
const deleteNoticeSlack = time.Second

// delta returns a metric's growth on node n since snapshot.
func (s *scenario) delta(n *node, now metricSet, name string, match ...string) float64 {
	return now.sum(name, match...) - s.before[n.id].sum(name, match...)
}

// recordKill notes the in-flight .bak files of a node whose worker was
// just SIGKILLed (they may be re-run once) and compares its disk with its
// namespace in the store: entries not mirrored yet, and copies of entries
// already finished.
func (s *scenario) recordKill(n *node) (queued, unmirrored int) {
	s.t.Helper()
	files, err := n.files()
	if err != nil {
		s.t.Fatal(err)
	}
	keys, err := s.c.copyKeys(s.ctx, n.id)
	if err != nil {
		s.t.Fatal(err)
	}
	local := make(map[string]bool)
	for _, f := range files {
		local[f.Queue+"/"+f.Base] = true
		if !keys[f.Queue+"/"+f.Base] {
			unmirrored++
		}
	}
	for k := range keys {
		if !local[k] {
			s.staleAtKill[k] = true
		}
	}
	s.killed, s.localAtKill = n, local
	s.deleteLagAtKill(n)
	bak, err := idsOf(files, func(f localFile) bool { return !f.Held && f.Ext == fence.ExtBak })
	if err != nil {
		s.t.Fatal(err)
	}
	for k := range bak {
		s.inFlight[k] = true
	}
	for _, f := range files {
		if !f.Held && f.Ext == fence.ExtPck {
			queued++
		}
	}
	return queued, unmirrored
}

// killNode SIGKILLs a node's sidecar and worker together.
func (s *scenario) killNode(n *node) {
	s.t.Helper()
	for _, p := range []*proc{n.worker, n.sidecar} {
		if err := p.signal(syscall.SIGKILL); err != nil {
			s.t.Fatal(err)
		}
	}
	n.worker.kill()
	n.sidecar.kill()
	n.killedAt = append(n.killedAt, time.Now())
}

// waitDone waits until every injected message has reached the last hop
// and the live nodes hold nothing (failing the test when nothing moves for
// stuckWait), then until the store holds no copies any more (an error if
// some stay: a finished entry's copy is a re-run waiting for the next
// takeover of its node).
func (s *scenario) waitDone(live []*node) {
	s.t.Helper()
	ids := s.c.injectedIDs()
	var lastSig string
	lastMove := time.Now()
	stuck := stuckAfter
	if s.stuckWait > 0 {
		stuck = s.stuckWait
	}
	end := time.Now().Add(deadline + stuck - stuckAfter)
	for {
		led := s.c.ledger()
		done := make(map[string]bool)
		for _, e := range led {
			if e.Queue == lastHop {
				done[e.ID] = true
			}
		}
		missing := 0
		for _, id := range ids {
			if !done[id] {
				missing++
			}
		}
		var held []string
		busy := false
		for _, n := range live {
			fc := n.counts()
			held = append(held, n.id+": "+fc.String())
			busy = busy || fc.Pck+fc.Bak+fc.Held > 0
		}
		sig := fmt.Sprintf("%d ledger lines, %d of %d messages not at %s; %s",
			len(led), missing, len(ids), lastHop, strings.Join(held, ", "))
		if missing == 0 && !busy {
			break
		}
		if sig != lastSig {
			lastSig, lastMove = sig, time.Now()
		}
		if time.Since(lastMove) > stuck || time.Now().After(end) {
			s.t.Fatalf("%s: processing did not finish: nothing moved for %v: %s", s.name, time.Since(lastMove).Round(time.Second), sig)
		}
		time.Sleep(250 * time.Millisecond)
	}
	var copies map[string]int
	wait := 15 * time.Second
	if s.deleteWait > 0 {
		wait = s.deleteWait
	}
	began := time.Now()
	err := waitFor(wait, 250*time.Millisecond, func() (bool, string) {
		var err error
		copies, err = s.c.copies(s.ctx)
		return err == nil && len(copies) == 0, fmt.Sprintf("copies %v (err %v)", copies, err)
	})
	if took := time.Since(began); err == nil && took > 2*time.Second {
		report.addf(s.t, "%s: the last copies of finished entries were deleted %s after the last entry finished", s.name, ms(took))
	}
	if err != nil {
		s.leaked = copies
		s.leakDesc = fmt.Sprintf("%s: every entry is finished, but the store keeps copies of finished entries (each one is re-run by the next takeover of its node): %v%s",
			s.name, err, s.leftovers())
	}
}

// leftovers describes the copies left in the store, with the history of
// each entry in the nodes' logs.
func (s *scenario) leftovers() string {
	var keys []string
	err := s.c.st.List(s.ctx, s.c.layout.Prefix()+"q/", func(in store.Info) error {
		keys = append(keys, in.Key)
		return nil
	})
	if err != nil || len(keys) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("\nleft in the store:")
	for i, k := range keys {
		if i == 10 {
			fmt.Fprintf(&b, "\n  ... %d more", len(keys)-10)
			break
		}
		fmt.Fprintf(&b, "\n  %s", k)
		r, ok := s.c.layout.ParseMirrorKey(k)
		if !ok {
			continue
		}
		for _, n := range s.c.nodes {
			for _, rec := range readLog(n.sidecarLog) {
				if strings.Contains(rec.Entry, r.Entry.Base) {
					fmt.Fprintf(&b, "\n    %s %s %s", n.id, rec.Time.Format("15:04:05.000"), rec.Msg)
				}
			}
		}
		for _, e := range s.c.ledger() {
			if e.Base == r.Entry.Base {
				fmt.Fprintf(&b, "\n    ledger: %s/%s run on %s at %s", e.Queue, e.ID, e.Node, e.At.Format("15:04:05.000"))
			}
		}
	}
	return b.String()
}

// judge analyses the ledger, records the row and, for scenarios within
// the timing model (strict), fails on loss and on duplicates the in-flight
// rule does not allow.
func (s *scenario) judge(strict bool, note string) verdict {
	s.t.Helper()
	led := s.c.ledger()
	s.lateCopies()
	v := analyze(s.name, s.c.injectedIDs(), led, s.inFlight, s.staleAtKill, s.faultAt, s.staleWindow)
	restores, handoffs := restoresOf(s.c.nodes)
	v.Breaches = g2Breaches(led, restores, handoffs, killsOf(s.c.nodes))
	if len(s.leaked) > 0 {
		note += fmt.Sprintf("; LEAKED copies %v", s.leaked)
	}
	var g4 []string
	for _, n := range s.c.nodes {
		g4 = append(g4, n.workerG4()...)
	}
	if len(g4) > 0 {
		note += fmt.Sprintf("; %d in-flight .bak moved away", len(g4))
	}
	report.addRow(v.row(note))
	report.addf(s.t, "%s: mirror backlog while injecting: %s", s.name, s.lag)
	s.t.Logf("%s: injected %d, complete %d, hop runs %d, lost %d, dup runs %d (by two nodes %d), in flight at kill %d, allowed %d, not allowed %d (+%d stale copy), G2 breaches %d, fault->done %v",
		s.name, v.Injected, v.Complete, v.HopRuns, len(v.Lost), v.Dups, v.ByTwoNodes, v.InFlight, v.AllowedDups, len(v.Violations), len(v.Stale), len(v.Breaches), v.FaultToDone)
	if len(v.Unknown) > 0 {
		s.t.Errorf("ledger names messages nobody injected: %s", firstN(v.Unknown, 5))
	}
	if len(v.Lost) > 0 {
		s.t.Errorf("%d messages LOST (never reached %s): %s", len(v.Lost), lastHop, firstN(s.locate(v.Lost), 10))
	}
	if len(g4) > 0 {
		msg := fmt.Sprintf("%s: %d in-flight .bak files vanished under a running worker (G4: the sidecar must never move a .bak): %s", s.name, len(g4), firstN(g4, 5))
		if strict {
			s.t.Error(msg)
		} else {
			s.t.Log(msg)
		}
	}
	var incomplete []string
	for _, n := range s.c.nodes {
		for _, r := range readLog(n.sidecarLog) {
			if r.Msg == "fence: quarantine incomplete" {
				incomplete = append(incomplete, fmt.Sprintf("%s %s: %s", n.id, r.Time.Format("15:04:05.000"), firstLine(r.Err)))
			}
		}
	}
	if len(incomplete) > 0 {
		report.addf(s.t, "%s: %d fences logged \"quarantine incomplete\": %s", s.name, len(incomplete), firstN(incomplete, 3))
	}
	if s.leakDesc != "" {
		if strict {
			s.t.Error(s.leakDesc)
		} else {
			s.t.Log(s.leakDesc)
		}
	}
	if strict && len(v.Breaches) > 0 {
		s.t.Errorf("%d G2 breaches (a runner dequeued an entry another node had restored): %s", len(v.Breaches), firstN(v.Breaches, 5))
	}
	if strict && len(v.Violations) > 0 {
		s.t.Errorf("%d duplicates beyond the in-flight rule: %s", len(v.Violations), firstN(v.Violations, 10))
	}
	if strict && len(v.Stale) > 0 {
		s.t.Errorf("%d more duplicates beyond the in-flight rule are re-runs of entries that had finished on the killed node before the kill while their store copy was not yet deleted (or later hops of such a message): %s",
			len(v.Stale), firstN(v.Stale, 3))
	}
	return v
}

// locate says where lost messages are: in which node's files.
func (s *scenario) locate(ids []string) []string {
	where := make(map[string][]string)
	want := make(map[string]bool)
	for _, id := range ids {
		want[id] = true
	}
	for _, n := range s.c.nodes {
		files, _ := n.files()
		for _, f := range files {
			data, err := os.ReadFile(f.Path)
			if err != nil {
				continue
			}
			if id := runnertest.BodyID(data); want[id] {
				kind := map[bool]string{true: "held", false: "queued"}[f.Held]
				where[id] = append(where[id], fmt.Sprintf("%s:%s/%s.%s(%s)", n.id, f.Queue, f.Base[:16], extName(f.Ext), kind))
			}
		}
	}
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		w := where[id]
		sort.Strings(w)
		if len(w) == 0 {
			w = []string{"nowhere on disk"}
		}
		out = append(out, id+" at "+strings.Join(w, " "))
	}
	return out
}

// sleepUntil waits until t: the length of a fault, not a condition.
func sleepUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.Sleep(d)
	}
}

// logMargin reports the first "claimed" on the given survivors after
// since, against a reference time (the kill, or the victim's fence).
func logMargin(survivors []*node, since time.Time) (first, last time.Time, ok bool) {
	claimed := logTimes(survivors, "claimed", since)
	restored := logTimes(survivors, "restored", since)
	if len(claimed) == 0 {
		return time.Time{}, time.Time{}, false
	}
	first = claimed[0]
	if len(restored) > 0 {
		last = restored[len(restored)-1]
	}
	return first, last, true
}

// ms formats a duration in seconds with millisecond precision.
func ms(d time.Duration) string { return fmt.Sprintf("%.3fs", d.Seconds()) }

// firstLine returns s up to its first newline.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// extName names a queue file extension.
func extName(e fence.Ext) string {
	switch e {
	case fence.ExtPck:
		return "pck"
	case fence.ExtBak:
		return "bak"
	case fence.ExtPsv:
		return "psv"
	}
	return "?"
}
