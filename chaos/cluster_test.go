package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// The node's queues: entries hop in -> pipeline -> out and finish in out.
var (
	hops     = []hop{{"in", "pipeline"}, {"pipeline", "out"}, {"out", ""}}
	queues   = []string{"in", "pipeline", "out", "bad"}
	lastHop  = "out"
	prefix   = "mmsidecar"
	nodeIDs  = []string{"a", "b", "c", "d", "e"}
	deadline = 3 * time.Minute // for any condition the test waits on
)

// Timing of every sidecar: short, so that faults play out in seconds.
const (
	leaseTTL    = 3 * time.Second
	leaseGrace  = 1 * time.Second
	leaseMargin = 600 * time.Millisecond
)

// clusterOptions shape a cluster.
type clusterOptions struct {
	// Nodes is the number of nodes (default 3).
	Nodes int
	// Work is each entry's time in flight per hop (the worker's rate).
	Work time.Duration
	// Poll is the workers' sleep_time.
	Poll time.Duration
	// NoWorkers starts sidecars only.
	NoWorkers bool
	// Proxy puts a proxy the test can cut between each sidecar and MinIO.
	Proxy bool
	// Lease is the sidecars' lease timing; zero: leaseTTL, leaseGrace,
	// leaseMargin.
	Lease leaseTiming
	// Env is added to every sidecar's environment (K=V).
	Env []string
}

// leaseTiming is MMSIDECAR_LEASE_TTL, _GRACE and _MARGIN.
type leaseTiming struct {
	TTL, Grace, Margin time.Duration
}

// shortLease is the timing of most scenarios: faults play out in seconds.
var shortLease = leaseTiming{TTL: leaseTTL, Grace: leaseGrace, Margin: leaseMargin}

// storeServer is what a cluster needs of the store it runs against: a
// MinIO server (*storetest.MinIO) or a distributed MinIO over TLS
// (*storetest.Cluster).
type storeServer interface {
	NewBucket(t testing.TB) string
	Config(bucket string) s3store.Config
}

// cluster is one scenario's nodes on a fresh bucket of the store server.
type cluster struct {
	t      *testing.T
	server storeServer
	bucket string
	st     store.Store
	layout fence.Layout
	root   string
	opt    clusterOptions
	nodes  []*node
	uid    int
	gid    int

	mu       sync.Mutex
	injected map[string]string // id -> node it was injected on
}

// node is one Mailman host: queue directories, a sidecar, a worker.
type node struct {
	c          *cluster
	id         string
	queueDir   string
	holdDir    string
	ledger     string
	sidecarLog string
	workerLog  string
	addr       string
	sidecar    *proc
	worker     *proc
	proxy      *proxy // nil unless clusterOptions.Proxy
	// killedAt: when the whole node (worker and sidecar) was SIGKILLed.
	killedAt []time.Time
}

func newCluster(t *testing.T, m storeServer, opt clusterOptions) *cluster {
	t.Helper()
	if opt.Nodes == 0 {
		opt.Nodes = 3
	}
	if opt.Poll == 0 {
		opt.Poll = 200 * time.Millisecond
	}
	if opt.Lease == (leaseTiming{}) {
		opt.Lease = shortLease
	}
	bucket := m.NewBucket(t)
	st, err := s3store.New(m.Config(bucket))
	if err != nil {
		t.Fatalf("store for inspection: %v", err)
	}
	c := &cluster{
		t: t, server: m, bucket: bucket, st: st, layout: fence.NewLayout(prefix),
		root: t.TempDir(), opt: opt, uid: os.Getuid(), gid: os.Getgid(),
		injected: make(map[string]string),
	}
	t.Cleanup(c.dumpOnFailure)
	for _, id := range nodeIDs[:opt.Nodes] {
		dir := filepath.Join(c.root, id)
		n := &node{
			c: c, id: id, queueDir: filepath.Join(dir, "queue"),
			ledger: filepath.Join(dir, "ledger"), sidecarLog: filepath.Join(dir, "sidecar.log"),
			workerLog: filepath.Join(dir, "worker.log"),
		}
		n.holdDir = filepath.Join(n.queueDir, ".mmsidecar", "hold")
		for _, q := range queues {
			if err := os.MkdirAll(filepath.Join(n.queueDir, q), 0o770); err != nil {
				t.Fatal(err)
			}
		}
		port, err := storetest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		n.addr = fmt.Sprintf("127.0.0.1:%d", port)
		if opt.Proxy {
			n.proxy = startProxy(t, m.Config(bucket).Endpoint)
		}
		c.nodes = append(c.nodes, n)
	}
	return c
}

// dumpOnFailure prints the end of every node's logs when the test failed,
// and keeps every log and ledger in $MMSIDECAR_CHAOS_KEEP/<test> when set.
func (c *cluster) dumpOnFailure() {
	if keep := os.Getenv(envKeep); keep != "" {
		dst := filepath.Join(keep, strings.ReplaceAll(c.t.Name(), "/", "_"))
		for _, n := range c.nodes {
			for _, f := range []string{n.sidecarLog, n.workerLog, n.ledger} {
				if data, err := os.ReadFile(f); err == nil {
					_ = os.MkdirAll(dst, 0o755)
					_ = os.WriteFile(filepath.Join(dst, n.id+"-"+filepath.Base(f)), data, 0o644)
				}
			}
		}
	}
	if !c.t.Failed() {
		return
	}
	for _, n := range c.nodes {
		var tl []string
		for _, r := range readLog(n.sidecarLog) {
			switch r.Msg {
			case "lease acquired", "fenced", "fence: quarantine incomplete", "lease not renewed within TTL - margin: fencing", "lease taken: fencing",
				"declared peer dead", "ready", "starting", "stopped":
				tl = append(tl, fmt.Sprintf("%s %s epoch=%d", r.Time.Format("15:04:05.000"), r.Msg, r.Epoch))
			}
		}
		if len(tl) > 12 {
			tl = tl[len(tl)-12:]
		}
		c.t.Logf("---- node %s: lease and fence events (last %d) ----\n%s", n.id, len(tl), strings.Join(tl, "\n"))
		c.t.Logf("---- node %s: sidecar log (tail) %s ----\n%s", n.id, n.sidecarLog, tailFile(n.sidecarLog, 40))
		c.t.Logf("---- node %s: worker log (tail) ----\n%s", n.id, tailFile(n.workerLog, 10))
	}
}

// start starts every sidecar, waits until all are ready, then starts the
// workers.
func (c *cluster) start() {
	c.t.Helper()
	for _, n := range c.nodes {
		n.startSidecar()
	}
	for _, n := range c.nodes {
		n.waitReady()
	}
	if !c.opt.NoWorkers {
		for _, n := range c.nodes {
			n.startWorker(false)
		}
	}
}

// env is the sidecar's environment: the test's, without any MMSIDECAR_
// setting of its own, plus the node's configuration.
func (n *node) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MMSIDECAR_") {
			env = append(env, kv)
		}
	}
	cfg := n.c.server.Config(n.c.bucket)
	endpoint := cfg.Endpoint
	if n.proxy != nil {
		endpoint = n.proxy.addr()
	}
	if cfg.TLS {
		env = append(env, "MMSIDECAR_S3_TLS=true", "MMSIDECAR_S3_CA_FILE="+cfg.CAFile)
	}
	env = append(env,
		"MMSIDECAR_NODE_ID="+n.id,
		"MMSIDECAR_QUEUE_DIR="+n.queueDir,
		"MMSIDECAR_QUEUES="+strings.Join(queues, ","),
		"MMSIDECAR_MODE=cluster",
		fmt.Sprintf("MMSIDECAR_FILE_OWNER=%d:%d", n.c.uid, n.c.gid),
		"MMSIDECAR_S3_ENDPOINT="+endpoint,
		"MMSIDECAR_S3_BUCKET="+n.c.bucket,
		"MMSIDECAR_S3_PREFIX="+prefix,
		"MMSIDECAR_S3_ACCESS_KEY="+cfg.AccessKey,
		"MMSIDECAR_S3_SECRET_KEY="+cfg.SecretKey,
		"MMSIDECAR_LEASE_TTL="+n.c.opt.Lease.TTL.String(),
		"MMSIDECAR_LEASE_GRACE="+n.c.opt.Lease.Grace.String(),
		"MMSIDECAR_LEASE_MARGIN="+n.c.opt.Lease.Margin.String(),
		"MMSIDECAR_RESCAN_INTERVAL=5s",
		"MMSIDECAR_SHUTDOWN_TIMEOUT=5s",
		"MMSIDECAR_DRAIN_TIMEOUT=3m",
		"MMSIDECAR_LISTEN_ADDR="+n.addr,
		"MMSIDECAR_LOG_LEVEL=info",
		"MMSIDECAR_LOG_FORMAT=json",
		// `mmsidecar drain` (5-drain, takeover-drain) needs the secret.
		"MMSIDECAR_ADMIN_TOKEN_FILE="+n.c.adminToken(),
	)
	env = append(env, n.c.opt.Env...)
	// Extra settings for experiments, e.g. MMSIDECAR_UPLOAD_CONCURRENCY=32.
	if extra := os.Getenv("MMSIDECAR_CHAOS_SIDECAR_ENV"); extra != "" {
		env = append(env, strings.Split(extra, ",")...)
	}
	return env
}

// adminToken writes the cluster's admin token file once and returns its
// path.
func (c *cluster) adminToken() string {
	path := filepath.Join(c.root, "admin-token")
	if _, err := os.Stat(path); err != nil {
		if err := os.WriteFile(path, []byte("chaos-admin-token-0123456789\n"), 0o600); err != nil {
			c.t.Fatal(err)
		}
	}
	return path
}

func (n *node) startSidecar() {
	n.c.t.Helper()
	p, err := startProc(n.c.t, "sidecar "+n.id, sidecarBin, []string{"run"}, n.env(), n.sidecarLog)
	if err != nil {
		n.c.t.Fatal(err)
	}
	n.sidecar = p
}

// startWorker starts the node's Mailman-shaped runners; recover makes
// them rename .bak files back to .pck first, as Mailman does on start.
func (n *node) startWorker(recover bool) {
	n.c.t.Helper()
	spec := workerSpec{
		QueueDir: n.queueDir, Node: n.id, Ledger: n.ledger, Hops: hops,
		Work: n.c.opt.Work, Poll: n.c.opt.Poll, Recover: recover, UID: n.c.uid, GID: n.c.gid,
	}
	js, err := json.Marshal(spec)
	if err != nil {
		n.c.t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		n.c.t.Fatal(err)
	}
	env := append(os.Environ(), workerEnv+"="+string(js))
	p, err := startProc(n.c.t, "worker "+n.id, exe, []string{"-test.run=^$"}, env, n.workerLog)
	if err != nil {
		n.c.t.Fatal(err)
	}
	n.worker = p
}

// waitReady polls /readyz until the sidecar is ready, and gives up at
// once when the sidecar exits.
func (n *node) waitReady() {
	n.c.t.Helper()
	err := waitFor(deadline, 50*time.Millisecond, func() (bool, string) {
		if n.sidecar.exited() {
			return true, "" // reported below
		}
		code, body, err := httpGet(n.addr, "/readyz")
		if err != nil {
			return false, err.Error()
		}
		return code == 200, strings.TrimSpace(body)
	})
	if err == nil && n.sidecar.exited() {
		err = fmt.Errorf("exited: %v", n.sidecar.err())
	}
	if err != nil {
		n.c.t.Fatalf("sidecar %s not ready: %v\n%s", n.id, err, tailFile(n.sidecarLog, 5))
	}
}

// httpGet fetches a path of a sidecar's HTTP listener.
func httpGet(addr, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return httpDo(ctx, "GET", "http://"+addr+path)
}

// waitFor polls cond every interval until it holds or timeout passes; the
// error carries cond's last description.
func waitFor(timeout, every time.Duration, cond func() (bool, string)) error {
	end := time.Now().Add(timeout)
	for {
		ok, desc := cond()
		if ok {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("not after %v: %s", timeout, desc)
		}
		time.Sleep(every)
	}
}

// localFile is a file in a node's queue directories or hold area.
type localFile struct {
	Queue, Base string
	Ext         fence.Ext
	Held        bool
	Path        string
}

// files lists the node's valid queue files and held entries.
func (n *node) files() ([]localFile, error) {
	var out []localFile
	for _, held := range []bool{false, true} {
		root := n.queueDir
		if held {
			root = n.holdDir
		}
		for _, q := range queues {
			dir := filepath.Join(root, q)
			ents, err := os.ReadDir(dir)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, err
			}
			for _, de := range ents {
				if base, ext, ok := fence.ParseFileName(de.Name()); ok {
					out = append(out, localFile{Queue: q, Base: base, Ext: ext, Held: held, Path: filepath.Join(dir, de.Name())})
				}
			}
		}
	}
	return out, nil
}

// fileCounts counts what a node holds: queued .pck, in-flight .bak, held
// entries, and preserved .psv.
type fileCounts struct{ Pck, Bak, Held, Psv int }

func (f fileCounts) String() string {
	return fmt.Sprintf("%d pck, %d bak, %d held, %d psv", f.Pck, f.Bak, f.Held, f.Psv)
}

func (n *node) counts() fileCounts {
	fs, err := n.files()
	if err != nil {
		n.c.t.Errorf("list node %s: %v", n.id, err)
	}
	var c fileCounts
	for _, f := range fs {
		switch {
		case f.Held:
			c.Held++
		case f.Ext == fence.ExtPck:
			c.Pck++
		case f.Ext == fence.ExtBak:
			c.Bak++
		case f.Ext == fence.ExtPsv:
			c.Psv++
		}
	}
	return c
}

// backlog counts the .pck files in one of the node's queues.
func (n *node) backlog(queue string) int {
	return countPck(filepath.Join(n.queueDir, queue))
}

// waiting is the node's backlog in queue plus what its hold area keeps
// of that queue: a fenced node holds its queued entries for a moment and
// releases them once it is back.
func (n *node) waiting(queue string) int {
	return n.backlog(queue) + countPck(filepath.Join(n.holdDir, queue))
}

// countPck counts the valid .pck names in dir.
func countPck(dir string) int {
	ents, _ := os.ReadDir(dir)
	k := 0
	for _, de := range ents {
		if _, ext, ok := fence.ParseFileName(de.Name()); ok && ext == fence.ExtPck {
			k++
		}
	}
	return k
}

// hopID names one hop of one message: "<queue>/<id>".
type hopID = string

// idsOf reads the message id of each file whose extension is ext (and
// held or not, as given), keyed "<queue>/<id>".
func idsOf(files []localFile, match func(localFile) bool) (map[hopID]bool, error) {
	out := make(map[hopID]bool)
	for _, f := range files {
		if !match(f) {
			continue
		}
		data, err := os.ReadFile(f.Path)
		if errors.Is(err, os.ErrNotExist) {
			continue // finished since the listing
		}
		if err != nil {
			return nil, err
		}
		if id := runnertest.BodyID(data); id != "" {
			out[f.Queue+"/"+id] = true
		}
	}
	return out, nil
}

// inject writes count entries into the in queues of nodes (count split
// evenly), each node's producer at rate entries/s, and returns a function
// that waits for the producers to finish.
func (c *cluster) inject(ctx context.Context, tag string, count int, rate float64, nodes []*node) func() {
	var wg sync.WaitGroup
	for i, n := range nodes {
		k := count / len(nodes)
		if i < count%len(nodes) {
			k++
		}
		p := &runnertest.Producer{
			Dir: filepath.Join(n.queueDir, "in"), Rate: rate, Count: k,
			IDPrefix: tag + "." + n.id + ".", Owner: &runnertest.Owner{UID: c.uid, GID: c.gid},
			OnCreate: func(_, id string, _ time.Time) {
				c.mu.Lock()
				c.injected[id] = n.id
				c.mu.Unlock()
			},
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := p.Run(ctx); err != nil {
				c.t.Errorf("inject into %s: %v", n.id, err)
			}
		}()
	}
	return wg.Wait
}

// injectedIDs returns the ids injected so far.
func (c *cluster) injectedIDs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.injected))
	for id := range c.injected {
		out = append(out, id)
	}
	return out
}

// ledger reads every node's ledger.
func (c *cluster) ledger() []ledgerEntry {
	var all []ledgerEntry
	for _, n := range c.nodes {
		es, err := readLedger(n.ledger)
		if err != nil {
			c.t.Fatalf("ledger of %s: %v", n.id, err)
		}
		all = append(all, es...)
	}
	return all
}

// node returns the node with id.
func (c *cluster) node(id string) *node {
	for _, n := range c.nodes {
		if n.id == id {
			return n
		}
	}
	c.t.Fatalf("no node %s", id)
	return nil
}

// others returns every node but n.
func (c *cluster) others(n *node) []*node {
	var out []*node
	for _, o := range c.nodes {
		if o != n {
			out = append(out, o)
		}
	}
	return out
}

// itoa is strconv.Itoa, for tables.
func itoa(n int) string { return strconv.Itoa(n) }
