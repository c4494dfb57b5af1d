package fence_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store"
)

// agedStore reports every lease as last written age ago.
type agedStore struct {
	store.Store
	leases string
	age    time.Duration
}

func (a agedStore) Get(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	rc, info, err := a.Store.Get(ctx, key)
	if err == nil && strings.HasPrefix(key, a.leases) {
		info.Modified = time.Now().Add(-a.age)
	}
	return rc, info, err
}

// TestStatusLeaseAge: renewals keep the lease's wall time (the epoch's
// start), so status takes a lease's age from the store's write time: a
// renewing node is live with a young lease however long ago it started,
// and a lease the store last took TTL + grace ago reads as expired.
func TestStatusLeaseAge(t *testing.T) {
	c := newCluster(t, "a", "b")
	c.runFor(3 * ttl)
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		age       time.Duration
		wantState string
	}{
		{"renewing", 0, fence.StateLive},
		{"silent", ttl + grace + time.Second, "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st store.Store = c.shared
			if tc.age > 0 {
				st = agedStore{Store: c.shared, leases: c.layout.LeasePrefix(), age: tc.age}
			}
			cs, err := fence.ReadStatus(ctx, st, c.layout, grace)
			if err != nil {
				t.Fatal(err)
			}
			if len(cs.Nodes) != 2 {
				t.Fatalf("%d nodes in the status, want 2", len(cs.Nodes))
			}
			for _, n := range cs.Nodes {
				if n.State != tc.wantState {
					t.Errorf("%s: state %s, want %s", n.Node, n.State, tc.wantState)
				}
				if n.LeaseAge < tc.age-time.Second || n.LeaseAge > tc.age+5*time.Second {
					t.Errorf("%s: lease age %s, want about %s", n.Node, n.LeaseAge, tc.age)
				}
			}
		})
	}
}
