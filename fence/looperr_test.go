package fence_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/fence/fencetest"
	"github.com/mmsidecar/mmsidecar/store"
)

// TestLoopErrorsAreCounted: a takeover that keeps failing leaves a metric
// (and a log line), not silence.
func TestLoopErrorsAreCounted(t *testing.T) {
	c, b := killedWithBacklog(t, 10)
	claims := c.layout.ClaimPrefix()
	b.st.refuse = func(op, key string) error {
		if strings.HasPrefix(key, claims) && op == "put-if-absent" {
			return &store.OpError{Op: "put", Key: key, Kind: store.KindPermanent, Code: "AccessDenied", Err: errors.New("refused")}
		}
		return nil
	}
	// A coordinator of b's with metrics registered: b's own has none.
	reg := prometheus.NewRegistry()
	m := fence.NewMetrics(reg)
	n, err := fence.New(fence.Config{Node: "b", Layout: c.layout, TTL: ttl, Grace: grace, Margin: margin, MaxTransfers: 3},
		b.st, fencetest.NewLocal("b", c.layout, b.st, func() fence.Gate { return fence.Gate{} }), c.clock, rand.New(rand.NewPCG(1, 2)), m, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.n = n
	b.local.SetGate(n.Gate)
	ctx := context.Background()
	if err := n.Start(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.runFor(ttl + grace + 2*time.Second)
	if got := testutil.ToFloat64(m.LoopErrorsForTest("takeover")); got == 0 {
		t.Fatal("a failing takeover counted no loop error")
	}
}

// TestOwnDeadNamespaceListedUntilEmpty: a node that was declared dead
// takes its own dead epochs over like a peer's, and stops listing its own
// namespace once they are empty (an idle node's cost stays one renewal and
// one lease listing per TTL/3).
func TestOwnDeadNamespaceListedUntilEmpty(t *testing.T) {
	c, _ := killedWithBacklog(t, 10)
	c.runFor(ttl + grace + 2*time.Second)
	a := c.start("a", c.nodes["a"].local, false)
	var lists atomic.Int64
	own := c.layout.NodePrefix("a")
	a.st.onList = func(prefix string) {
		if prefix == own {
			lists.Add(1)
		}
	}
	c.runFor(3 * ttl)
	settled := lists.Load()
	c.runFor(10 * ttl)
	if more := lists.Load() - settled; more > 0 {
		t.Fatalf("node listed its own emptied namespace %d more times in 10 TTL (%d before)", more, settled)
	}
}
