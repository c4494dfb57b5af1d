//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// drainResult is what `mmsidecar drain` did.
type drainResult struct {
	out   string
	err   error
	took  time.Duration
	queue map[string]QueueCount // node a's queues right after it exited
	qerr  error
}

// drain builds a backlog on node a (runners stopped before any dequeue,
// so nothing is in flight), runs `mmsidecar drain` on a, and checks that
// b restores every entry as a file Mailman can read and delivers it, and
// that the drain exits 0 with a's queues empty.
func (s *suite) drain(ctx context.Context, t *testing.T) {
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	c, a, b := s.c, s.a, s.b
	const posts = 40
	// b's runners stop too, so that the restored files stay in b's queue
	// long enough to be inspected.
	for _, n := range []*Node{a, b} {
		if err := n.Mailman.Pause(ctx); err != nil {
			t.Fatal(err)
		}
	}
	ids := injectPosts(ctx, t, c, "drain", posts, a)
	if counts, err := a.Mailman.QueueCounts(); err != nil || counts["in"].Pck != posts || SumQueues(counts).Bak != 0 {
		t.Fatalf("node a backlog: %s %v, want in=%dp and nothing in flight", FormatQueueCounts(counts), err, posts)
	}
	start := time.Now()
	drained := make(chan drainResult, 1)
	go func() {
		var r drainResult
		r.out, r.err = s.sidecars["a"].Drain(ctx, "MMSIDECAR_DRAIN_TIMEOUT=60s")
		r.took = time.Since(start)
		r.queue, r.qerr = a.Mailman.QueueCounts()
		drained <- r
	}()

	// Every post arrives in b's "in" queue as a file Mailman can read.
	var have map[string]bool
	err := pollUntil(ctx, 100*time.Millisecond, "b to restore the backlog", func() (bool, error) {
		var err error
		have, err = idsInDir(b.Mailman.Queue("in"), ids)
		return len(have) == posts, err
	})
	restored := time.Since(start)
	if err != nil {
		t.Errorf("node b holds %d of %d drained posts: %v", len(have), posts, err)
	}
	nfiles, probs, err := CheckEntries(b.Mailman.Queue("in"), c.Account)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probs {
		t.Errorf("restored entry on b: %s", p)
	}
	if err := b.Mailman.Resume(); err != nil {
		t.Fatal(err)
	}
	// a's runners stay stopped until b has delivered everything: every
	// delivery of these posts is b's.
	err = c.Sink.WaitFor(ctx, func() bool { return c.Sink.Tally(ids, c.Members).Lost == 0 })
	full := time.Since(start)
	if err != nil {
		t.Fatalf("drain: not delivered by b: %s: %v", c.Sink.Tally(ids, c.Members), err)
	}
	waitNodeEmpty(ctx, t, b)

	var r drainResult
	select {
	case r = <-drained:
	case <-ctx.Done():
		t.Fatalf("mmsidecar drain still running: %v", ctx.Err())
	}
	if err := a.Mailman.Resume(); err != nil {
		t.Fatal(err)
	}
	t.Logf("drain: b held all %d posts %v after the drain started, delivered them after %v; drain exited after %v (%v) %s; a's queues then: %s",
		posts, restored.Round(time.Millisecond), full.Round(time.Millisecond), r.took.Round(time.Millisecond), r.err, strings.TrimSpace(r.out), FormatQueueCounts(r.queue))
	if r.qerr != nil {
		t.Fatal(r.qerr)
	}
	if sq := SumQueues(r.queue); sq.Pck+sq.Bak != 0 {
		t.Errorf("node a's queues not empty when the drain exited: %s", FormatQueueCounts(r.queue))
	}
	st, err := s.sidecars["b"].Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.err != nil {
		local, _ := s.sidecars["a"].Local(ctx)
		t.Errorf("mmsidecar drain on a did not exit 0: %v; a's daemon: state %s, held %d, pending uploads %d deletes %d; store copies by node and queue: %v",
			r.err, local.State, heldOf(local), local.PendingUploads, local.PendingDeletes, st.Entries())
	}
	if ls, err := s.sidecars["a"].Local(ctx); err != nil {
		t.Error(err)
	} else if h := heldOf(ls); h != 0 {
		t.Errorf("node a still holds %d entries after the drain", h)
	}
	s.waitMirrored(ctx, t, []*Node{b})
	tally := c.Sink.Tally(ids, c.Members)
	if !tally.Complete() {
		t.Errorf("drain: %s", tally)
	}
	s.checkHealthy(ctx, t, b)
	// A drained node stays draining until it stops (or the drain is
	// cancelled), and says so: alive, not ready (issue 22).
	if err := a.Mailman.SameRunners(s.health[a.Name]); err != nil {
		t.Error(err)
	}
	if h, r, err := s.sidecars["a"].Probe(ctx); err != nil || h != 200 || r != 503 {
		t.Errorf("drained node a: /healthz %d /readyz %d %v, want 200 and 503 (draining)", h, r, err)
	}
	// b has delivered everything, but its runners may still be unlinking
	// the last .bak files: wait until its queues are idle and mirrored,
	// then the store must hold no live copy (the status read when the
	// drain exited still showed b's work in flight).
	pctx, pcancel := context.WithTimeout(ctx, 45*time.Second)
	perr := pollUntil(pctx, 200*time.Millisecond, "b's queues idle", func() (bool, error) {
		counts, err := b.Mailman.QueueCounts()
		if err != nil {
			return false, err
		}
		q := SumQueues(counts)
		return q.Pck+q.Bak == 0, nil
	})
	pcancel()
	if perr != nil {
		t.Error(perr)
	}
	st = s.waitMirrored(ctx, t, []*Node{b})
	requireNoLiveCopies(t, st)
	state, _ := st.State("a")
	exit := "0"
	if r.err != nil {
		exit = "FAILED: " + firstLine(r.err.Error())
	}
	row := RowOf("3 drain", posts, tally)
	row.FullAfter = full
	row.Note = fmt.Sprintf("time from drain start; all on b after %v (%d files, %s 0660); drain exit %s after %v; a's lease %s",
		restored.Round(10*time.Millisecond), nfiles, c.Account.Name, exit, r.took.Round(10*time.Millisecond), state)
	s.report.Add(row)
	s.checkAudit(t)
}

// heldOf sums the held entries of a daemon's queues.
func heldOf(ls LocalStatus) int {
	n := 0
	for _, q := range ls.Queues {
		n += q.Held
	}
	return n
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
