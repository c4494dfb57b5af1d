package deploytest

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// Settings of every sidecar container: a short lease so that a killed
// node is taken over in seconds, and the shutdown timeout `podman stop`
// is given.
const (
	ctrLeaseTTL        = 6 * time.Second
	ctrLeaseGrace      = 2 * time.Second
	ctrLeaseMargin     = 1500 * time.Millisecond
	ctrShutdownTimeout = 10 * time.Second
	// ctrDeadline bounds every condition the container test waits on.
	ctrDeadline = 3 * time.Minute
)

// ctrQueues are the queue directories each node's host queue root holds.
var ctrQueues = []string{"in", "out", "bad"}

// ctrCluster is one scenario: sidecar containers on a fresh bucket of the
// test MinIO, each with its own queue directory on the host.
type ctrCluster struct {
	t       *testing.T
	p       *podman
	image   string
	img     sidecarImage // the image's uid, gid and queue mount point
	m       *storetest.MinIO
	bucket  string
	st      store.Store
	layout  fence.Layout
	root    string
	secrets string // host directory with the S3 keys, mounted read-only
}

// ctrSeq numbers container names and entry ids within the test process.
var ctrSeq atomic.Int64

// newCtrCluster prepares a scenario on a fresh bucket of the shared test
// MinIO (scripts/test.sh's, reached over the host network).
func newCtrCluster(t *testing.T, p *podman, image string) *ctrCluster {
	t.Helper()
	m := storetest.Shared(t)
	c := &ctrCluster{t: t, p: p, image: image, img: imageFacts(t), m: m, bucket: m.NewBucket(t),
		layout: fence.NewLayout("mmsidecar"), root: t.TempDir()}
	st, err := s3store.New(m.Config(c.bucket))
	if err != nil {
		t.Fatalf("store for inspection: %v", err)
	}
	c.st = st
	c.secrets = filepath.Join(c.root, "secrets")
	c.mkdirOwned(c.secrets, 0o750)
	// admin-token: the secret POST /drain needs (`mmsidecar drain` in
	// the container reads it from the same file).
	for name, v := range map[string]string{"access-key": m.AccessKey, "secret-key": m.SecretKey, "admin-token": "deploytest-admin-secret"} {
		f := filepath.Join(c.secrets, name)
		if err := os.WriteFile(f, []byte(v+"\n"), 0o400); err != nil {
			t.Fatal(err)
		}
		c.chown(f)
	}
	return c
}

func (c *ctrCluster) chown(path string) {
	c.t.Helper()
	if err := os.Chown(path, c.img.UID, c.img.GID); err != nil {
		c.t.Fatalf("chown %s to the image's user %d:%d: %v", path, c.img.UID, c.img.GID, err)
	}
}

func (c *ctrCluster) mkdirOwned(dir string, mode os.FileMode) {
	c.t.Helper()
	if err := os.MkdirAll(dir, mode); err != nil {
		c.t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		c.t.Fatal(err)
	}
	c.chown(dir)
}

// sidecar is one mmsidecar container.
type sidecar struct {
	c        *ctrCluster
	name     string
	node     string
	queueDir string // on the host, mounted at the image's queue directory
	listen   string // 127.0.0.1:port on the host network
}

// start runs the image as node's sidecar: its queue directory, owned by
// the image's user, mounted from the host; the keys as read-only files.
func (c *ctrCluster) start(node string) *sidecar {
	c.t.Helper()
	port, err := storetest.FreePort()
	if err != nil {
		c.t.Fatal(err)
	}
	s := &sidecar{c: c, node: node, queueDir: filepath.Join(c.root, node, "queue"),
		listen: fmt.Sprintf("127.0.0.1:%d", port),
		name:   fmt.Sprintf("mmsidecar-deploytest-%d-%d-%s", os.Getpid(), ctrSeq.Add(1), node)}
	c.mkdirOwned(s.queueDir, 0o770)
	for _, q := range ctrQueues {
		c.mkdirOwned(filepath.Join(s.queueDir, q), 0o770)
	}
	env := map[string]string{
		"MMSIDECAR_NODE_ID":            node,
		"MMSIDECAR_MODE":               "cluster",
		"MMSIDECAR_S3_ENDPOINT":        c.m.Endpoint,
		"MMSIDECAR_S3_BUCKET":          c.bucket,
		"MMSIDECAR_S3_ACCESS_KEY_FILE": "/run/secrets/mmsidecar/access-key",
		"MMSIDECAR_S3_SECRET_KEY_FILE": "/run/secrets/mmsidecar/secret-key",
		"MMSIDECAR_ADMIN_TOKEN_FILE":   "/run/secrets/mmsidecar/admin-token",
		"MMSIDECAR_LEASE_TTL":          ctrLeaseTTL.String(),
		"MMSIDECAR_LEASE_GRACE":        ctrLeaseGrace.String(),
		"MMSIDECAR_LEASE_MARGIN":       ctrLeaseMargin.String(),
		"MMSIDECAR_SHUTDOWN_TIMEOUT":   ctrShutdownTimeout.String(),
		"MMSIDECAR_DRAIN_TIMEOUT":      ctrDeadline.String(),
		"MMSIDECAR_RESCAN_INTERVAL":    "5s",
		"MMSIDECAR_LISTEN_ADDR":        s.listen,
	}
	args := append([]string{"run", "-d", "--name", s.name, "--label", containerLabel + "=" + strconv.Itoa(os.Getpid())}, runFlags...)
	args = append(args, "-v", s.queueDir+":"+c.img.QueueDir, "-v", c.secrets+":/run/secrets/mmsidecar:ro")
	for k, v := range env {
		args = append(args, "-e", k+"="+v)
	}
	c.t.Cleanup(s.remove)
	c.p.must(c.t, append(args, c.image)...)
	return s
}

// pairWithBacklog starts nodes a and b, waits until both are ready, and
// queues n entries on a ("in"), mirrored before it returns.
func (c *ctrCluster) pairWithBacklog(t *testing.T, n int) (a, b *sidecar, backlog []entry) {
	t.Helper()
	a, b = c.start("a"), c.start("b")
	a.waitReady(t)
	b.waitReady(t)
	// A drain refuses while a sees no live peer: wait until it sees b.
	a.waitPeerLive(t, "b")
	backlog = a.enqueue(t, "in", n)
	c.waitCopies(t, "a", backlog)
	return a, b, backlog
}

// remove prints the container's log if the test failed, and removes it.
func (s *sidecar) remove() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if s.c.t.Failed() {
		out, _ := s.c.p.run(ctx, "logs", "--tail", "40", s.name)
		s.c.t.Logf("---- container %s (node %s): log tail ----\n%s", s.name, s.node, out)
	}
	if out, err := s.c.p.run(ctx, "rm", "-f", "-t", "0", s.name); err != nil {
		s.c.t.Logf("podman rm %s: %v\n%s", s.name, err, out)
	}
}

// waitReady waits until the sidecar's /readyz answers 200, and gives up
// at once when its container stopped.
func (s *sidecar) waitReady(t *testing.T) {
	t.Helper()
	eventually(t, "sidecar "+s.node+" ready", func() (bool, string) {
		if st := s.c.p.inspect(t, s.name); !st.State.Running {
			t.Fatalf("container %s is %s (exit %d)", s.name, st.State.Status, st.State.ExitCode)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.listen+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// waitPeerLive waits until the sidecar's GET /status shows peer live.
func (s *sidecar) waitPeerLive(t *testing.T, peer string) {
	t.Helper()
	eventually(t, "sidecar "+s.node+" sees "+peer+" live", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.listen+"/status", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var st struct {
			Peers []struct{ Node, State string } `json:"peers"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
			return false, err.Error()
		}
		for _, p := range st.Peers {
			if p.Node == peer && p.State == "live" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("peers %+v", st.Peers)
	})
}

// entry is one queue entry the test wrote: the message id in its body and
// its file base.
type entry struct{ ID, Base string }

// enqueue writes n entries into the sidecar's queue the way Mailman does,
// owned by the image's user.
func (s *sidecar) enqueue(t *testing.T, queue string, n int) []entry {
	t.Helper()
	owner := &runnertest.Owner{UID: s.c.img.UID, GID: s.c.img.GID}
	out := make([]entry, n)
	for i := range out {
		id := fmt.Sprintf("%s-%s-%d", t.Name(), s.node, ctrSeq.Add(1))
		body := runnertest.Body(id, 2048)
		out[i] = entry{ID: id, Base: runnertest.NewBase(time.Now(), body)}
		if err := runnertest.WriteEntry(filepath.Join(s.queueDir, queue), out[i].Base, body, owner); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// local returns the ids of the entries in a directory of the sidecar's
// queue root with extension ext, by base, read from their bodies.
func (s *sidecar) local(t *testing.T, rel string, ext fence.Ext) map[string]string {
	t.Helper()
	dir := filepath.Join(s.queueDir, rel)
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	out := make(map[string]string)
	for _, de := range ents {
		base, e, ok := fence.ParseFileName(de.Name())
		if !ok || e != ext {
			continue
		}
		body, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			if os.IsNotExist(err) {
				continue // a worker took it meanwhile
			}
			t.Fatal(err)
		}
		out[base] = runnertest.BodyID(body)
	}
	return out
}

// held lists every file in the sidecar's hold area.
func (s *sidecar) held(t *testing.T) []string {
	t.Helper()
	var out []string
	root := filepath.Join(s.queueDir, ".mmsidecar", "hold")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			out = append(out, strings.TrimPrefix(path, root+"/"))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// copies returns the copies in node's namespace of the store, by entry
// base.
func (c *ctrCluster) copies(t *testing.T, node string) map[string]fence.MirrorRef {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := make(map[string]fence.MirrorRef)
	err := c.st.List(ctx, c.layout.NodePrefix(node), func(info store.Info) error {
		if ref, ok := c.layout.ParseMirrorKey(info.Key); ok {
			out[ref.Entry.Base] = ref
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list %s's copies: %v", node, err)
	}
	return out
}

// waitCopies waits until node's namespace holds a copy of every entry.
func (c *ctrCluster) waitCopies(t *testing.T, node string, entries []entry) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d copies in %s's namespace", len(entries), node), func() (bool, string) {
		have := c.copies(t, node)
		missing := 0
		for _, e := range entries {
			if _, ok := have[e.Base]; !ok {
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d of %d missing", missing, len(entries))
	})
}

// eventually polls cond every 200 ms until it holds, and fails the test
// with cond's last description after ctrDeadline.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	end := time.Now().Add(ctrDeadline)
	for {
		ok, desc := cond()
		if ok {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s: not after %v: %s", what, ctrDeadline, desc)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
