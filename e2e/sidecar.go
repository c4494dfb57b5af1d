//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// BuildSidecar builds the real mmsidecar binary (cmd/mmsidecar of the
// module that contains this package) into dir and returns its path. With
// race set it is built with the race detector, whose reports then show up
// in the sidecar's log (see Sidecar.RaceReports).
func BuildSidecar(ctx context.Context, dir string, race bool) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
		if _, serr := os.Stat(goBin); serr != nil {
			return "", fmt.Errorf("find go: %w", err)
		}
	}
	out := filepath.Join(dir, "mmsidecar")
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/mmsidecar")
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build mmsidecar: %w\n%s", err, msg)
	}
	return out, nil
}

// moduleRoot finds the directory holding go.mod, upwards from the test's
// working directory (the package directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("getwd: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the test's directory")
		}
		dir = parent
	}
}

// MakeQueueDirs creates queue_dir and every queue directory the way
// Mailman does (owner the Mailman user, mode 0770), so that a sidecar
// started before Mailman finds them.
func (m *Mailman) MakeQueueDirs() error {
	for _, q := range Queues {
		if err := os.MkdirAll(m.Queue(q), 0o770); err != nil {
			return fmt.Errorf("make queue %s: %w", q, err)
		}
	}
	return chownTree(m.varDir, m.cfg.List)
}

// SidecarConfig is what every node's mmsidecar shares.
type SidecarConfig struct {
	Bin       string // the mmsidecar binary (BuildSidecar)
	Endpoint  string // S3 endpoint host:port
	Bucket    string // existing bucket
	AccessKey string
	SecretKey string
	Env       []string // further MMSIDECAR_*=value settings for every node
}

// Sidecar is one node's mmsidecar: its environment (shared by `run`,
// `status` and `drain`), its HTTP address and, once started, its process
// (Node.Sidecar).
type Sidecar struct {
	node *Node
	bin  string
	addr string
	env  []string
}

// NewSidecar prepares (does not start) the sidecar of node n: its queue
// directories, its own listen port, and files restored as the Mailman
// user.
func NewSidecar(n *Node, cfg SidecarConfig) (*Sidecar, error) {
	if err := n.Mailman.MakeQueueDirs(); err != nil {
		return nil, err
	}
	port, err := storetest.FreePort()
	if err != nil {
		return nil, err
	}
	acct := n.Mailman.Account()
	s := &Sidecar{node: n, bin: cfg.Bin, addr: "127.0.0.1:" + strconv.Itoa(port)}
	// `mmsidecar drain` needs the daemon's admin secret.
	token := filepath.Join(n.Mailman.Dir(), "admin-token")
	if err := os.WriteFile(token, []byte("e2e-admin-token-0123456789\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write admin token: %w", err)
	}
	s.env = append([]string{
		"MMSIDECAR_NODE_ID=" + n.Name,
		"MMSIDECAR_QUEUE_DIR=" + n.Mailman.QueueDir(),
		"MMSIDECAR_FILE_OWNER=" + acct.Name + ":" + acct.Name,
		"MMSIDECAR_S3_ENDPOINT=" + cfg.Endpoint,
		"MMSIDECAR_S3_BUCKET=" + cfg.Bucket,
		"MMSIDECAR_S3_ACCESS_KEY=" + cfg.AccessKey,
		"MMSIDECAR_S3_SECRET_KEY=" + cfg.SecretKey,
		"MMSIDECAR_LISTEN_ADDR=" + s.addr,
		"MMSIDECAR_ADMIN_TOKEN_FILE=" + token,
	}, cfg.Env...)
	return s, nil
}

// Addr is the sidecar's HTTP address.
func (s *Sidecar) Addr() string { return s.addr }

// Env is the sidecar's MMSIDECAR_* environment.
func (s *Sidecar) Env() []string { return append([]string(nil), s.env...) }

// LogPath is where `mmsidecar run` writes its log.
func (s *Sidecar) LogPath() string { return filepath.Join(s.node.Mailman.Dir(), "sidecar.log") }

// Start runs `mmsidecar run` (as root: it restores files as the Mailman
// user through MMSIDECAR_FILE_OWNER) and waits until /readyz answers 200,
// the documented condition for starting Mailman.
func (s *Sidecar) Start(ctx context.Context) error {
	err := s.node.StartSidecar(ProcessSpec{
		Path:    s.bin,
		Args:    []string{"run"},
		Env:     s.env,
		Dir:     s.node.Mailman.Dir(),
		LogPath: s.LogPath(),
	})
	if err != nil {
		return err
	}
	return s.WaitReady(ctx)
}

// WaitReady waits until /readyz answers 200; the sidecar exiting first is
// an error carrying its log tail.
func (s *Sidecar) WaitReady(ctx context.Context) error {
	p := s.node.Sidecar
	err := pollUntil(ctx, 50*time.Millisecond, "sidecar "+s.node.Name+" /readyz", func() (bool, error) {
		if done, werr := p.Exited(); done {
			return false, fmt.Errorf("sidecar exited (%v):\n%s", werr, p.LogTail(30))
		}
		code, _, err := s.get(ctx, "/readyz")
		return err == nil && code == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("sidecar %s not ready: %w\n%s", s.node.Name, err, p.LogTail(30))
	}
	return nil
}

// get performs one GET on the sidecar's listener.
func (s *Sidecar) get(ctx context.Context, path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.addr+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("get %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("read %s: %w", path, err)
	}
	return resp.StatusCode, body, nil
}

// Probe returns the status codes of /healthz and /readyz.
func (s *Sidecar) Probe(ctx context.Context) (healthz, readyz int, err error) {
	if healthz, _, err = s.get(ctx, "/healthz"); err != nil {
		return 0, 0, err
	}
	readyz, _, err = s.get(ctx, "/readyz")
	return healthz, readyz, err
}

// Metrics scrapes /metrics into "name{labels}" → value (labels as the
// exposition prints them, e.g. `mmsidecar_ignored_files_total{reason="bad_name"}`).
func (s *Sidecar) Metrics(ctx context.Context) (map[string]float64, error) {
	code, body, err := s.get(ctx, "/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("metrics: %d %s", code, body)
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// LocalStatus is GET /status, the daemon's own view (README: the "local"
// object of `status -json`).
type LocalStatus struct {
	Node           string                      `json:"node"`
	Mode           string                      `json:"mode"`
	State          string                      `json:"state"`
	Epoch          uint64                      `json:"epoch"`
	Ready          bool                        `json:"ready"`
	PendingUploads int                         `json:"pending_uploads"`
	PendingDeletes int                         `json:"pending_deletes"`
	Queues         map[string]LocalQueueStatus `json:"queues"`
	Peers          []struct {
		Node           string  `json:"node"`
		State          string  `json:"state"`
		Epoch          uint64  `json:"epoch"`
		SilenceSeconds float64 `json:"silence_seconds"`
	} `json:"peers"`
}

// LocalQueueStatus is one queue in LocalStatus.
type LocalQueueStatus struct {
	Pck        int `json:"pck"`
	Bak        int `json:"bak"`
	Psv        int `json:"psv"`
	Held       int `json:"held"`
	Unmirrored int `json:"unmirrored"`
}

// Local fetches GET /status.
func (s *Sidecar) Local(ctx context.Context) (LocalStatus, error) {
	var ls LocalStatus
	code, body, err := s.get(ctx, "/status")
	if err != nil {
		return ls, err
	}
	if code != http.StatusOK {
		return ls, fmt.Errorf("status: %d %s", code, body)
	}
	if err := json.Unmarshal(body, &ls); err != nil {
		return ls, fmt.Errorf("decode status: %w: %s", err, body)
	}
	return ls, nil
}

// CaughtUp reports whether the sidecar has nothing left to upload or
// delete and every local entry has a copy.
func (l LocalStatus) CaughtUp() bool {
	if l.PendingUploads != 0 || l.PendingDeletes != 0 {
		return false
	}
	for _, q := range l.Queues {
		if q.Unmirrored != 0 {
			return false
		}
	}
	return true
}

// StoreStatus is `mmsidecar status -json` (the README's stable interface),
// the fields this package reads.
type StoreStatus struct {
	Claims int `json:"claims"`
	Nodes  []struct {
		Node      string `json:"node"`
		State     string `json:"state"`
		Epoch     uint64 `json:"epoch"`
		DeadEpoch uint64 `json:"dead_epoch"`
		Entries   int    `json:"entries"`
		Queues    []struct {
			Queue   string `json:"queue"`
			Entries int    `json:"entries"`
		} `json:"queues"`
	} `json:"nodes"`
	Local *LocalStatus `json:"local"`
}

// Entries maps node → queue → copies in the store.
func (st StoreStatus) Entries() map[string]map[string]int {
	out := make(map[string]map[string]int)
	for _, n := range st.Nodes {
		m := make(map[string]int)
		for _, q := range n.Queues {
			m[q.Queue] += q.Entries
		}
		out[n.Node] = m
	}
	return out
}

// State returns node's lease state and epoch ("" when it has none).
func (st StoreStatus) State(node string) (string, uint64) {
	for _, n := range st.Nodes {
		if n.Node == node {
			return n.State, n.Epoch
		}
	}
	return "", 0
}

// Status runs `mmsidecar status -json` with the sidecar's environment.
func (s *Sidecar) Status(ctx context.Context) (StoreStatus, error) {
	var st StoreStatus
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := s.runCmd(ctx, nil, "status", "-json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return st, fmt.Errorf("decode status -json: %w: %s", err, out)
	}
	return st, nil
}

// Drain runs `mmsidecar drain -q` with the sidecar's environment and
// returns its output; it returns once the node holds nothing (exit 0).
func (s *Sidecar) Drain(ctx context.Context, env ...string) (string, error) {
	return s.runCmd(ctx, env, "drain", "-q")
}

// runCmd runs the binary with the sidecar's environment. stdout and
// stderr are kept apart: status -json must parse.
func (s *Sidecar) runCmd(ctx context.Context, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Dir = s.node.Mailman.Dir()
	cmd.Env = append(append(baseEnv(cmd.Dir), s.env...), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("mmsidecar %s on node %s: %w: %s%s", strings.Join(args, " "), s.node.Name, err, out, stderr.String())
	}
	return string(out), nil
}

// RaceReports counts race-detector reports in the sidecar's log.
func (s *Sidecar) RaceReports() int {
	raw, err := os.ReadFile(s.LogPath())
	if err != nil {
		return 0
	}
	return strings.Count(string(raw), "WARNING: DATA RACE")
}
