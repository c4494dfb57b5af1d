//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// EnvSwitch is the environment variable that turns the end-to-end tests
// on (value 1). They also need the build tag e2e.
const EnvSwitch = "MMSIDECAR_E2E"

// RequireE2E skips the test unless MMSIDECAR_E2E=1. Once switched on,
// every missing prerequisite is a failure, never a skip.
func RequireE2E(t testing.TB) {
	t.Helper()
	if os.Getenv(EnvSwitch) != "1" {
		t.Skipf("end-to-end test with real Mailman: set %s=1 (and -tags e2e) to run it", EnvSwitch)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("%s=1 but not running as root: the harness runs Mailman as user list through setpriv", EnvSwitch)
	}
	for _, p := range []string{Python, filepath.Join(MailmanBinDir, "master"), "/usr/bin/setpriv"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=1 but %s is missing (install Debian's mailman3): %v", EnvSwitch, p, err)
		}
	}
}

// ClusterConfig describes a set of Mailman nodes sharing one list
// database and one SMTP sink.
type ClusterConfig struct {
	Nodes     []string      // node names; nil = {"a", "b"}
	List      string        // posting address; "" = "e2e@example.com"
	Members   int           // number of members; 0 = 5
	Runners   []string      // runners per node; nil = DefaultRunners
	SleepTime time.Duration // runner sleep_time; 0 = 200ms
	Extra     string        // appended to every node's mailman.cfg
	Env       []string      // KEY=VALUE for every node's master and CLI commands
	// BeforeMailman, when set, runs after the list is set up and before
	// any node's Mailman starts: the place to start each node's sidecar,
	// which must be ready before its Mailman runs.
	BeforeMailman func(ctx context.Context, c *Cluster) error
}

// Cluster is a running set of Mailman nodes with their shared database,
// their SMTP sink and one configured list.
type Cluster struct {
	Root    string    // temp root of everything (mode 0711)
	DBPath  string    // the shared SQLite list database
	Sink    *SMTPSink // every node's outgoing SMTP
	List    string    // the list's posting address
	Poster  string    // sender of test posts, registered as a nonmember
	Members []string  // the list's member addresses
	Nodes   []*Node   // in ClusterConfig.Nodes order
	Account Account   // the Mailman user
	Timings ClusterTimings
}

// ClusterTimings records how long set-up took.
type ClusterTimings struct {
	CreateList    time.Duration // create + configure + subscribe through the CLI
	BeforeMailman time.Duration // ClusterConfig.BeforeMailman (e.g. sidecars to ready)
	StartNodes    time.Duration // all nodes started in parallel until ready
}

// Node is one Mailman node and, once the lead's tests start it, its
// mmsidecar.
type Node struct {
	Name    string
	Mailman *Mailman
	Sidecar *Process // nil until StartSidecar
	cluster *Cluster
}

// StartCluster builds and starts a cluster under a fresh temp directory:
// SMTP sink, node configs, the list (created through node 0's CLI), then
// every node's Mailman in parallel. It registers a cleanup that kills
// everything, logs each node's Mailman log tail when the test failed, and
// removes the temp directory (kept when MMSIDECAR_E2E_KEEP=1).
func StartCluster(ctx context.Context, t testing.TB, cfg ClusterConfig) *Cluster {
	t.Helper()
	c, err := newCluster(cfg)
	if c != nil {
		t.Cleanup(func() { c.cleanup(t) })
	}
	if err != nil {
		t.Fatalf("build cluster: %v", err)
	}
	t0 := time.Now()
	if err := c.setUpList(ctx); err != nil {
		t.Fatalf("set up list: %v", err)
	}
	c.Timings.CreateList = time.Since(t0)
	if cfg.BeforeMailman != nil {
		t0 = time.Now()
		if err := cfg.BeforeMailman(ctx, c); err != nil {
			t.Fatalf("before mailman: %v", err)
		}
		c.Timings.BeforeMailman = time.Since(t0)
	}
	t0 = time.Now()
	if err := c.StartAll(ctx); err != nil {
		t.Fatalf("start nodes: %v", err)
	}
	c.Timings.StartNodes = time.Since(t0)
	return c
}

func newCluster(cfg ClusterConfig) (*Cluster, error) {
	if cfg.Nodes == nil {
		cfg.Nodes = []string{"a", "b"}
	}
	if cfg.List == "" {
		cfg.List = "e2e@example.com"
	}
	if cfg.Members == 0 {
		cfg.Members = 5
	}
	acct, err := LookupAccount("list")
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", "mmsidecar-e2e-")
	if err != nil {
		return nil, fmt.Errorf("make root: %w", err)
	}
	// The Mailman user must traverse the root, not list it.
	if err := os.Chmod(root, 0o711); err != nil {
		return nil, fmt.Errorf("chmod root: %w", err)
	}
	c := &Cluster{Root: root, List: cfg.List, Poster: "poster@outside.test", Account: acct}
	shared := filepath.Join(root, "shared")
	if err := os.Mkdir(shared, 0o770); err != nil {
		return c, fmt.Errorf("make shared dir: %w", err)
	}
	if err := os.Chown(shared, acct.UID, acct.GID); err != nil {
		return c, fmt.Errorf("chown shared dir: %w", err)
	}
	c.DBPath = filepath.Join(shared, "mailman.db")
	if c.Sink, err = StartSMTPSink(); err != nil {
		return c, err
	}
	for i := 0; i < cfg.Members; i++ {
		c.Members = append(c.Members, fmt.Sprintf("member%02d@members.test", i+1))
	}
	for _, name := range cfg.Nodes {
		m, err := NewMailman(MailmanConfig{
			Name:      name,
			Dir:       filepath.Join(root, "node-"+name),
			DBPath:    c.DBPath,
			SMTPAddr:  c.Sink.Addr(),
			Runners:   cfg.Runners,
			SleepTime: cfg.SleepTime,
			Extra:     cfg.Extra,
			Env:       cfg.Env,
			List:      acct,
		})
		if err != nil {
			return c, fmt.Errorf("node %s: %w", name, err)
		}
		c.Nodes = append(c.Nodes, &Node{Name: name, Mailman: m, cluster: c})
	}
	return c, nil
}

func (c *Cluster) setUpList(ctx context.Context) error {
	cli := c.Nodes[0].Mailman.CLI()
	if err := cli.CreateList(ctx, c.List); err != nil {
		return err
	}
	if err := cli.AddMembers(ctx, c.List, c.Members); err != nil {
		return err
	}
	sum, err := cli.ConfigureTestList(ctx, c.List, []string{c.Poster})
	if err != nil {
		return err
	}
	if !slices.Equal(sum.Members, c.Members) || !slices.Equal(sum.Nonmembers, []string{c.Poster}) ||
		sum.NonmemberAction != "accept" || len(sum.Archivers) == 0 {
		return fmt.Errorf("list set up wrong: %+v", sum)
	}
	return nil
}

// Node returns the node called name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// StartAll starts every node's Mailman in parallel and waits until all
// are ready.
func (c *Cluster) StartAll(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.Mailman.Start(ctx)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// StopAll stops every node (Mailman, then its sidecar) in parallel.
func (c *Cluster) StopAll(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.Stop(ctx)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// StartSidecar starts the node's sidecar from spec. The spec's LogPath
// defaults to <node dir>/sidecar.log and its Name to "sidecar-<node>".
func (n *Node) StartSidecar(spec ProcessSpec) error {
	if n.Sidecar != nil {
		if done, _ := n.Sidecar.Exited(); !done {
			return fmt.Errorf("node %s: sidecar already running (pid %d)", n.Name, n.Sidecar.PID())
		}
	}
	if spec.Name == "" {
		spec.Name = "sidecar-" + n.Name
	}
	if spec.LogPath == "" {
		spec.LogPath = filepath.Join(n.Mailman.Dir(), "sidecar.log")
	}
	p, err := StartProcess(spec)
	if err != nil {
		return err
	}
	n.Sidecar = p
	return nil
}

// Kill SIGKILLs the node's sidecar and every Mailman process of the node,
// as a machine failure would, and waits until they are gone.
func (n *Node) Kill() error {
	var errs []error
	if n.Sidecar != nil {
		errs = append(errs, n.Sidecar.Kill())
	}
	errs = append(errs, n.Mailman.Kill())
	return errors.Join(errs...)
}

// Stop stops Mailman (SIGTERM to the master) and then the sidecar
// (SIGTERM), waiting for each.
func (n *Node) Stop(ctx context.Context) error {
	errs := []error{n.Mailman.Stop(ctx)}
	if n.Sidecar != nil {
		errs = append(errs, n.Sidecar.Stop(ctx))
	}
	return errors.Join(errs...)
}

// QueuesEmpty reports whether every queue of every node is free of .pck
// and .bak entries, and a summary of what is left.
func (c *Cluster) QueuesEmpty() (bool, string, error) {
	empty := true
	var sum string
	for _, n := range c.Nodes {
		counts, err := n.Mailman.QueueCounts()
		if err != nil {
			return false, "", err
		}
		s := SumQueues(counts)
		if s.Pck+s.Bak > 0 {
			empty = false
		}
		sum += fmt.Sprintf("%s: %s; ", n.Name, FormatQueueCounts(counts))
	}
	return empty, sum, nil
}

// cleanup kills every process, reports logs on failure and removes Root.
func (c *Cluster) cleanup(t testing.TB) {
	for _, n := range c.Nodes {
		if err := n.Kill(); err != nil {
			t.Errorf("cleanup node %s: %v", n.Name, err)
		}
		if t.Failed() {
			t.Logf("node %s mailman.log tail:\n%s", n.Name, n.Mailman.LogTail(40))
			t.Logf("node %s master.out tail:\n%s", n.Name, n.Mailman.MasterOutTail(20))
			if n.Sidecar != nil {
				t.Logf("node %s sidecar log tail:\n%s", n.Name, n.Sidecar.LogTail(40))
			}
		}
	}
	if c.Sink != nil {
		if err := c.Sink.Close(); err != nil {
			t.Errorf("cleanup sink: %v", err)
		}
	}
	if os.Getenv("MMSIDECAR_E2E_KEEP") == "1" {
		t.Logf("kept %s", c.Root)
		return
	}
	if err := os.RemoveAll(c.Root); err != nil {
		t.Errorf("remove %s: %v", c.Root, err)
	}
}
