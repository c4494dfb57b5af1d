package fence_test

import (
	"context"
	"strings"
	"testing"
	"time"
)

// requestCounter counts one node's lease reads and claim listings.
type requestCounter struct {
	leaseGets, claimLists int
}

func countRequests(c *cluster, tn *tnode) *requestCounter {
	rc := &requestCounter{}
	leases, claims := c.layout.LeasePrefix(), c.layout.ClaimPrefix()
	tn.st.onGet = func(key string) {
		if strings.HasPrefix(key, leases) {
			rc.leaseGets++
		}
	}
	tn.st.onList = func(prefix string) {
		if prefix == claims {
			rc.claimLists++
		}
	}
	return rc
}

// TestIdleNodesOnlyRenewAndScan: in an idle cluster a node's store
// requests are its renewals and its lease listings. A peer's renewal is
// recognised by its ETag (the body changes only by Seq) and not read, and
// once a claims pass has found no claim, none is listed again. A change
// that is not a plain renewal (the peer starts draining) is read at once,
// and the claims pass runs again.
func TestIdleNodesOnlyRenewAndScan(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(3 * ttl) // first reads of each other's lease, first claims pass
	a := c.nodes["a"]
	rc := countRequests(c, a)
	c.runFor(10 * ttl)
	if rc.leaseGets != 0 || rc.claimLists != 0 {
		t.Fatalf("idle for 10 TTL: a read b's lease %d times and listed the claims %d times, want neither", rc.leaseGets, rc.claimLists)
	}
	if p := a.n.Peers(); len(p) != 1 || p[0].Lease.State != "live" || p[0].Lease.Seq < 10 {
		t.Fatalf("a's view of b after 10 idle TTL: %+v, want b live with its renewals counted", p)
	}

	c.nodes["b"].n.StartDrain(context.Background())
	c.runFor(time.Second)
	if rc.leaseGets == 0 {
		t.Fatal("b started draining: a did not read b's changed lease")
	}
	if p := a.n.Peers(); len(p) != 1 || p[0].Lease.State != "draining" {
		t.Fatalf("a's view of b after b's drain began: %+v, want draining", p)
	}
	if rc.claimLists == 0 {
		t.Fatal("b is draining: a ran no claims pass")
	}
}

// TestClaimsPassResumesForClaims: a node that found no claims skips its
// claims pass until it writes one (here by a takeover); it then lists the
// claims every 2 TTL until they are collected, and stops again.
func TestClaimsPassResumesForClaims(t *testing.T) {
	c, b := killedWithBacklog(t, 20)
	rc := countRequests(c, b)
	c.runFor(ttl + grace + 3*time.Second)
	if v, _ := c.count("b"); v != 20 {
		t.Fatalf("b restored %d entries, want 20", v)
	}
	for _, e := range b.local.Visible() {
		b.local.Dequeue(e)
		b.local.Finish(e)
	}
	if rc.claimLists == 0 {
		t.Fatal("b wrote claims but listed none")
	}
	// The claims stay 2 TTL after their entries finished and until the
	// dead node a is settled; a comes back so that they can go.
	c.nodes["a"].alive = true
	deadline := 40 * ttl
	for elapsed := time.Duration(0); c.storeKeys("claims/") > 0; elapsed += ttl {
		if elapsed > deadline {
			t.Fatalf("%d claims left after %s", c.storeKeys("claims/"), deadline)
		}
		c.runFor(ttl)
	}
	before := rc.claimLists
	c.runFor(10 * ttl)
	if got := rc.claimLists - before; got > 1 {
		t.Fatalf("no claims left: b listed them %d times in 10 TTL, want at most once", got)
	}
}
