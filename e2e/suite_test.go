//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// Sidecar timing for the end-to-end test: short, and valid under the
// rules of cmd/mmsidecar (margin < TTL/2, grace >= margin).
const (
	leaseTTL    = 3 * time.Second
	leaseGrace  = time.Second
	leaseMargin = 600 * time.Millisecond
)

// suite is one two-node cluster with a sidecar per node, shared by the
// scenarios of TestSidecarCluster in order.
type suite struct {
	c        *Cluster
	a, b     *Node
	sidecars map[string]*Sidecar
	health   map[string]RunnerHealth
	audit    *Auditor
	report   *Report
}

// startSuite builds the sidecar, gets a MinIO bucket, and starts two
// Mailman nodes, each after its sidecar answered /readyz.
func startSuite(ctx context.Context, t *testing.T) *suite {
	t.Helper()
	if os.Getenv(storetest.EnvTestMinIO) == "off" {
		t.Fatalf("%s=1 but %s=off: the end-to-end test needs a real MinIO", EnvSwitch, storetest.EnvTestMinIO)
	}
	t0 := time.Now()
	bin, err := BuildSidecar(ctx, t.TempDir(), raceBuild)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built mmsidecar (race=%v) in %v", raceBuild, time.Since(t0).Round(time.Millisecond))
	minio := storetest.Shared(t)
	scfg := SidecarConfig{
		Bin: bin, Endpoint: minio.Endpoint, Bucket: minio.NewBucket(t),
		AccessKey: minio.AccessKey, SecretKey: minio.SecretKey,
		Env: []string{
			"MMSIDECAR_LEASE_TTL=" + leaseTTL.String(),
			"MMSIDECAR_LEASE_GRACE=" + leaseGrace.String(),
			"MMSIDECAR_LEASE_MARGIN=" + leaseMargin.String(),
			"MMSIDECAR_RESCAN_INTERVAL=10s",
			"MMSIDECAR_DRAIN_TIMEOUT=3m",
			"MMSIDECAR_SHUTDOWN_TIMEOUT=5s",
		},
	}
	s := &suite{sidecars: make(map[string]*Sidecar), health: make(map[string]RunnerHealth), report: &Report{}}
	s.c = StartCluster(ctx, t, ClusterConfig{
		BeforeMailman: func(ctx context.Context, c *Cluster) error {
			for _, n := range c.Nodes {
				sc, err := NewSidecar(n, scfg)
				if err != nil {
					return err
				}
				s.sidecars[n.Name] = sc
				if err := sc.Start(ctx); err != nil {
					return err
				}
			}
			return nil
		},
	})
	s.a, s.b = s.c.Node("a"), s.c.Node("b")
	t.Cleanup(func() { s.dumpOnFailure(t) })
	t.Logf("set-up: list %v, sidecars ready %v, Mailman nodes ready %v (MinIO %s)",
		s.c.Timings.CreateList.Round(time.Millisecond), s.c.Timings.BeforeMailman.Round(time.Millisecond),
		s.c.Timings.StartNodes.Round(time.Millisecond), minio.Endpoint)
	for _, n := range s.c.Nodes {
		s.snapshotHealth(t, n)
	}
	s.audit = StartAuditor(s.c, 25*time.Millisecond)
	t.Cleanup(s.audit.Stop)
	return s
}

// snapshotHealth records the node's runners as the reference that later
// checks compare with (no runner may die or be restarted).
func (s *suite) snapshotHealth(t *testing.T, n *Node) {
	t.Helper()
	h, err := n.Mailman.Health()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range n.Mailman.Runners() {
		if len(h.PIDs[r]) != 1 {
			t.Fatalf("node %s: %d %s runners after start, want 1", n.Name, len(h.PIDs[r]), r)
		}
	}
	s.health[n.Name] = h
}

// dumpOnFailure logs, when the test failed, each sidecar's warnings and
// errors and the end of its log, each node's queues, and the auditor's
// findings.
func (s *suite) dumpOnFailure(t *testing.T) {
	if !t.Failed() {
		return
	}
	for _, n := range s.c.Nodes {
		if sc := s.sidecars[n.Name]; sc != nil {
			raw, _ := os.ReadFile(sc.LogPath())
			var warns []string
			for _, l := range strings.Split(string(raw), "\n") {
				if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") || strings.Contains(l, "DATA RACE") {
					warns = append(warns, l)
				}
			}
			if len(warns) > 100 {
				warns = append(warns[:50], append([]string{"..."}, warns[len(warns)-50:]...)...)
			}
			t.Logf("==== node %s sidecar %s: warnings and errors ====\n%s", n.Name, sc.LogPath(), strings.Join(warns, "\n"))
			t.Logf("==== node %s sidecar: last 60 lines ====\n%s", n.Name, tailFile(sc.LogPath(), 60))
		}
		counts, _ := n.Mailman.QueueCounts()
		t.Logf("node %s queues: %s", n.Name, FormatQueueCounts(counts))
	}
	if s.audit != nil {
		for _, v := range s.audit.Violations() {
			t.Logf("audit: %s", v)
		}
	}
	t.Logf("set MMSIDECAR_E2E_KEEP=1 to keep %s (logs, queues) after the test", s.c.Root)
}

// checkHealthy fails the test when a runner of the node died, was
// restarted or printed a traceback, or its sidecar is not healthy and
// ready.
func (s *suite) checkHealthy(ctx context.Context, t *testing.T, n *Node) {
	t.Helper()
	if err := n.Mailman.SameRunners(s.health[n.Name]); err != nil {
		t.Error(err)
	}
	h, r, err := s.sidecars[n.Name].Probe(ctx)
	if err != nil || h != 200 || r != 200 {
		t.Errorf("node %s sidecar: /healthz %d /readyz %d %v", n.Name, h, r, err)
	}
}

// checkAudit fails the test for every file the auditor flagged so far.
func (s *suite) checkAudit(t *testing.T) {
	t.Helper()
	for _, v := range s.audit.Violations() {
		t.Errorf("G4 audit: %s", v)
	}
}

// localEntries counts node's regular Mailman-shaped files (.pck, .bak,
// .psv) per queue: what its namespace in the store should mirror.
func localEntries(n *Node) (map[string]int, error) {
	counts, err := n.Mailman.QueueCounts()
	if err != nil {
		return nil, err
	}
	out := make(map[string]int)
	for q, c := range counts {
		if k := c.Pck + c.Bak + c.Psv; k > 0 {
			out[q] = k
		}
	}
	return out, nil
}

// waitMirrored waits until each of the live nodes' sidecars is caught up
// and the store holds, per queue, exactly as many copies in that node's
// namespace as the node has entries on disk; nodes in gone must have no
// copies left at all. It returns the last store status.
func (s *suite) waitMirrored(ctx context.Context, t *testing.T, live []*Node, gone ...string) StoreStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	var st StoreStatus
	var why string
	err := pollUntil(ctx, 200*time.Millisecond, "store to mirror the disks", func() (bool, error) {
		var err error
		if st, err = s.sidecars[live[0].Name].Status(ctx); err != nil {
			return false, err
		}
		store := st.Entries()
		for _, n := range live {
			ls, err := s.sidecars[n.Name].Local(ctx)
			if err != nil {
				return false, err
			}
			if !ls.CaughtUp() {
				why = fmt.Sprintf("node %s sidecar not caught up: uploads %d deletes %d queues %+v", n.Name, ls.PendingUploads, ls.PendingDeletes, ls.Queues)
				return false, nil
			}
			disk, err := localEntries(n)
			if err != nil {
				return false, err
			}
			if !sameCounts(disk, store[n.Name]) {
				why = fmt.Sprintf("node %s: disk %v, store %v", n.Name, disk, store[n.Name])
				return false, nil
			}
		}
		for _, g := range gone {
			if k := sum(store[g]); k != 0 {
				why = fmt.Sprintf("node %s (gone): %d copies left in the store: %v", g, k, store[g])
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("%v; last: %s", err, why)
	}
	return st
}

// requireNoLiveCopies fails the test when the store holds a copy of an
// entry outside bad (preserved .psv files are mirrored like any entry).
func requireNoLiveCopies(t *testing.T, st StoreStatus) {
	t.Helper()
	for node, qs := range st.Entries() {
		for q, k := range qs {
			if q != "bad" && k != 0 {
				t.Errorf("store holds %d live copies of node %s's %s queue", k, node, q)
			}
		}
	}
}

func sameCounts(a, b map[string]int) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// waitNodeEmpty waits until the node's queues hold no .pck and no .bak.
func waitNodeEmpty(ctx context.Context, t *testing.T, n *Node) {
	t.Helper()
	err := pollUntil(ctx, 50*time.Millisecond, "node "+n.Name+" queues to empty", func() (bool, error) {
		counts, err := n.Mailman.QueueCounts()
		s := SumQueues(counts)
		return s.Pck+s.Bak == 0, err
	})
	if err != nil {
		counts, _ := n.Mailman.QueueCounts()
		t.Fatalf("%v: %s", err, FormatQueueCounts(counts))
	}
}

// postsFullyDelivered counts the posts every member has received.
func postsFullyDelivered(c *Cluster, ids []string) int {
	n := 0
	for _, id := range ids {
		all := true
		for _, m := range c.Members {
			if c.Sink.Deliveries(id, m) == 0 {
				all = false
				break
			}
		}
		if all {
			n++
		}
	}
	return n
}

// duplicatedIDs returns the posts some member received more than once.
func duplicatedIDs(c *Cluster, ids []string) []string {
	var out []string
	for _, id := range ids {
		for _, m := range c.Members {
			if c.Sink.Deliveries(id, m) > 1 {
				out = append(out, id)
				break
			}
		}
	}
	return out
}

// firstDeliveryAfter is the earliest delivery of one of ids after t0.
func firstDeliveryAfter(c *Cluster, ids []string, t0 time.Time) (time.Duration, bool) {
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	var first time.Time
	for _, tx := range c.Sink.Transactions() {
		if want[tx.MessageID] && tx.ReceivedAt.After(t0) && (first.IsZero() || tx.ReceivedAt.Before(first)) {
			first = tx.ReceivedAt
		}
	}
	return first.Sub(t0), !first.IsZero()
}

// InFlightEntry is a .bak found in a node's queues, with the posts whose
// Message-ID its bytes contain.
type InFlightEntry struct {
	Path string
	IDs  []string
}

// inFlight lists the .bak files of node n and, for each, which of ids it
// carries (a queue file pickles the message, so its Message-ID is in the
// bytes).
func inFlight(n *Node, ids []string) ([]InFlightEntry, error) {
	var out []InFlightEntry
	for _, q := range Queues {
		names, err := n.Mailman.QueueEntries(q)
		if err != nil {
			continue
		}
		for _, name := range names {
			if !strings.HasSuffix(name, ".bak") {
				continue
			}
			path := filepath.Join(n.Mailman.Queue(q), name)
			raw, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("read in-flight entry: %w", err)
			}
			e := InFlightEntry{Path: path}
			for _, id := range ids {
				if bytes.Contains(raw, []byte(id)) {
					e.IDs = append(e.IDs, id)
				}
			}
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// idsInDir returns which of ids the entries of dir carry.
func idsInDir(dir string, ids []string) (map[string]bool, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	found := make(map[string]bool)
	for _, e := range ents {
		if !entryRE.MatchString(e.Name()) {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read entry: %w", err)
		}
		for _, id := range ids {
			if bytes.Contains(raw, []byte(id)) {
				found[id] = true
			}
		}
	}
	return found, nil
}
