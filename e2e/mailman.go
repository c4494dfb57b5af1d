//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// Paths of Debian's mailman3 package (3.3.8, bookworm).
const (
	// Python is Debian's interpreter, which has Mailman and aiosmtpd; another
	// python3 earlier on the PATH would not.
	Python = "/usr/bin/python3"
	// MailmanBinDir holds master, runner and mailman.
	MailmanBinDir = "/usr/lib/mailman3/bin"
)

// DefaultRunners is the lean runner set a post needs: lmtp (injection),
// in, pipeline, out (delivery), virgin (notices Mailman generates) and
// retry (temporary SMTP failures). archive, bounces, command, digest,
// nntp, rest and task are disabled; the test list has archiving and
// digests off so nothing is left in those queues.
var DefaultRunners = []string{"lmtp", "in", "pipeline", "out", "virgin", "retry"}

// allRunners is every runner Mailman 3.3.8 defines (bad and shunt are
// never started by Mailman itself).
var allRunners = []string{
	"archive", "bad", "bounces", "command", "digest", "in", "lmtp", "nntp",
	"out", "pipeline", "rest", "retry", "shunt", "task", "virgin",
}

// Queues is every queue directory Mailman 3.3.8 creates under queue_dir.
var Queues = []string{
	"archive", "bad", "bounces", "command", "digest", "in", "nntp", "out",
	"pipeline", "retry", "shunt", "virgin",
}

// MailmanConfig describes one Mailman 3 core node.
type MailmanConfig struct {
	Name      string        // node name, e.g. "a"
	Dir       string        // node root directory; created, owned by List
	DBPath    string        // SQLite list database, shared between nodes
	SMTPAddr  string        // outgoing SMTP (the sink), host:port
	LMTPPort  int           // 0 = pick a free port on 127.0.0.1
	RESTPort  int           // 0 = pick a free port on 127.0.0.1
	Runners   []string      // runners to start; nil = DefaultRunners
	SleepTime time.Duration // sleep_time of every runner; 0 = 200ms
	Extra     string        // appended verbatim to mailman.cfg
	Env       []string      // KEY=VALUE for the master and CLI commands (e.g. PYTHONPATH)
	List      Account       // the Mailman user (Debian: list)
}

// Mailman is one Mailman 3 core node: its config, directories, and (while
// started) its master process and runners.
type Mailman struct {
	cfg     MailmanConfig
	cfgPath string
	varDir  string

	master    *Process
	logOffset int64 // size of mailman.log when the master was started
}

// NewMailman writes the node's config and directories; it starts nothing.
func NewMailman(cfg MailmanConfig) (*Mailman, error) {
	if cfg.Name == "" || cfg.Dir == "" || cfg.DBPath == "" || cfg.SMTPAddr == "" {
		return nil, fmt.Errorf("mailman config: name, dir, db path and smtp addr are required")
	}
	if cfg.Runners == nil {
		cfg.Runners = DefaultRunners
	}
	for _, r := range cfg.Runners {
		if !slices.Contains(allRunners, r) {
			return nil, fmt.Errorf("mailman config: unknown runner %q", r)
		}
	}
	if cfg.SleepTime == 0 {
		cfg.SleepTime = 200 * time.Millisecond
	}
	var err error
	for _, p := range []*int{&cfg.LMTPPort, &cfg.RESTPort} {
		if *p == 0 {
			if *p, err = storetest.FreePort(); err != nil {
				return nil, err
			}
		}
	}
	m := &Mailman{
		cfg:     cfg,
		cfgPath: filepath.Join(cfg.Dir, "mailman.cfg"),
		varDir:  filepath.Join(cfg.Dir, "var"),
	}
	if err := os.MkdirAll(m.varDir, 0o770); err != nil {
		return nil, fmt.Errorf("make var dir: %w", err)
	}
	if err := os.WriteFile(m.cfgPath, []byte(m.renderConfig()), 0o640); err != nil {
		return nil, fmt.Errorf("write mailman.cfg: %w", err)
	}
	if err := chownTree(cfg.Dir, cfg.List); err != nil {
		return nil, err
	}
	return m, nil
}

// renderConfig produces the node's mailman.cfg. It replaces
// /etc/mailman3/mailman.cfg entirely (Mailman's built-in defaults still
// apply underneath).
func (m *Mailman) renderConfig() string {
	c := m.cfg
	host, port, _ := net.SplitHostPort(c.SMTPAddr)
	var b strings.Builder
	fmt.Fprintf(&b, `# mmsidecar e2e node %s
[mailman]
layout: e2e
site_owner: postmaster@example.com
noreply_address: noreply

[paths.e2e]
var_dir: %s
queue_dir: $var_dir/queue
bin_dir: %s
list_data_dir: $var_dir/lists
log_dir: $var_dir/logs
lock_dir: $var_dir/locks
data_dir: $var_dir/data
cache_dir: $var_dir/cache
etc_dir: %s
ext_dir: $var_dir/ext
messages_dir: $var_dir/messages
archive_dir: $var_dir/archives
template_dir: $var_dir/templates
pid_file: $var_dir/master.pid
lock_file: $lock_dir/master.lck

[database]
class: mailman.database.sqlite.SQLiteDatabase
url: sqlite:///%s

[webservice]
hostname: 127.0.0.1
port: %d
admin_user: restadmin
admin_pass: e2e-not-secret

[mta]
incoming: mailman.mta.null.NullMTA
outgoing: mailman.mta.deliver.deliver
smtp_host: %s
smtp_port: %s
lmtp_host: 127.0.0.1
lmtp_port: %d
`, c.Name, m.varDir, MailmanBinDir, c.Dir, c.DBPath, c.RESTPort, host, port, c.LMTPPort)
	sleep := strconv.FormatFloat(c.SleepTime.Seconds(), 'f', -1, 64) + "s"
	for _, r := range allRunners {
		if r == "bad" || r == "shunt" {
			continue // never started by Mailman; keep its defaults
		}
		start := "no"
		if slices.Contains(c.Runners, r) {
			start = "yes"
		}
		fmt.Fprintf(&b, "\n[runner.%s]\nstart: %s\nsleep_time: %s\n", r, start, sleep)
	}
	if c.Extra != "" {
		b.WriteString("\n" + c.Extra + "\n")
	}
	return b.String()
}

// Name is the node's name.
func (m *Mailman) Name() string { return m.cfg.Name }

// Dir is the node's root directory (config, master output, helper files).
func (m *Mailman) Dir() string { return m.cfg.Dir }

// ConfigPath is the node's mailman.cfg, passed to every command with -C.
func (m *Mailman) ConfigPath() string { return m.cfgPath }

// VarDir is the node's var_dir.
func (m *Mailman) VarDir() string { return m.varDir }

// QueueDir is the node's queue_dir ($var_dir/queue), holding one
// directory per queue.
func (m *Mailman) QueueDir() string { return filepath.Join(m.varDir, "queue") }

// Queue is the directory of one queue, e.g. Queue("in").
func (m *Mailman) Queue(name string) string { return filepath.Join(m.QueueDir(), name) }

// LogDir is the node's log_dir.
func (m *Mailman) LogDir() string { return filepath.Join(m.varDir, "logs") }

// LMTPAddr is the LMTP runner's host:port.
func (m *Mailman) LMTPAddr() string { return "127.0.0.1:" + strconv.Itoa(m.cfg.LMTPPort) }

// RESTAddr is the REST runner's host:port (served only when "rest" is in
// Runners).
func (m *Mailman) RESTAddr() string { return "127.0.0.1:" + strconv.Itoa(m.cfg.RESTPort) }

// Runners is the set of runners this node starts.
func (m *Mailman) Runners() []string { return slices.Clone(m.cfg.Runners) }

// Account is the Unix user the node runs as.
func (m *Mailman) Account() Account { return m.cfg.List }

// Start starts the master (as the List user, umask 007, in its own process
// group, with a clean environment) and waits until every configured runner
// has logged that it started and the LMTP port answers. A master that was
// killed left a stale lock: Start then passes --force.
func (m *Mailman) Start(ctx context.Context) error {
	if m.master != nil {
		if done, _ := m.master.Exited(); !done {
			return fmt.Errorf("start mailman %s: already running (pid %d)", m.cfg.Name, m.master.PID())
		}
	}
	left, err := m.procs()
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("start mailman %s: %d processes of a previous run still alive", m.cfg.Name, len(left))
	}
	if st, err := os.Stat(m.mainLog()); err == nil {
		m.logOffset = st.Size()
	} else {
		m.logOffset = 0
	}
	args := []string{filepath.Join(MailmanBinDir, "master"), "-C", m.cfgPath}
	if _, err := os.Stat(filepath.Join(m.varDir, "locks", "master.lck")); err == nil {
		args = append(args, "--force")
	}
	acct := m.cfg.List
	p, err := StartProcess(ProcessSpec{
		Name:    "mailman-" + m.cfg.Name,
		Path:    Python,
		Args:    args,
		Env:     m.cfg.Env,
		Dir:     m.varDir,
		AsUser:  &acct,
		LogPath: filepath.Join(m.cfg.Dir, "master.out"),
	})
	if err != nil {
		return err
	}
	m.master = p
	return m.WaitReady(ctx)
}

// WaitReady waits until every configured runner has logged "runner
// started" since the last Start and the LMTP runner accepts connections.
func (m *Mailman) WaitReady(ctx context.Context) error {
	if m.master == nil {
		return fmt.Errorf("mailman %s: not started", m.cfg.Name)
	}
	err := pollUntil(ctx, 100*time.Millisecond, "mailman "+m.cfg.Name+" runners", func() (bool, error) {
		if done, werr := m.master.Exited(); done {
			return false, fmt.Errorf("master exited (%v); master.out:\n%s\nmailman.log:\n%s",
				werr, m.master.LogTail(20), tailFile(m.mainLog(), 20))
		}
		started, err := m.startedRunners()
		if err != nil {
			return false, err
		}
		for _, r := range m.cfg.Runners {
			if !started[r] {
				return false, nil
			}
		}
		if slices.Contains(m.cfg.Runners, "lmtp") {
			c, err := net.DialTimeout("tcp", m.LMTPAddr(), time.Second)
			if err != nil {
				return false, nil
			}
			c.Close()
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("mailman %s not ready: %w", m.cfg.Name, err)
	}
	return nil
}

var startedRE = regexp.MustCompile(`\(\d+\) (\w+) runner started\.`)

// startedRunners reads mailman.log from the last Start's offset.
func (m *Mailman) startedRunners() (map[string]bool, error) {
	f, err := os.Open(m.mainLog())
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open mailman.log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat mailman.log: %w", err)
	}
	if st.Size() <= m.logOffset {
		return nil, nil
	}
	buf := make([]byte, st.Size()-m.logOffset)
	if _, err := f.ReadAt(buf, m.logOffset); err != nil {
		return nil, fmt.Errorf("read mailman.log: %w", err)
	}
	out := make(map[string]bool)
	for _, sm := range startedRE.FindAllSubmatch(buf, -1) {
		out[string(sm[1])] = true
	}
	return out, nil
}

func (m *Mailman) mainLog() string { return filepath.Join(m.LogDir(), "mailman.log") }

// MasterOutTail returns the last n lines of the master's stdout and
// stderr, where runners' tracebacks of fatal errors go.
func (m *Mailman) MasterOutTail(n int) string {
	return tailFile(filepath.Join(m.cfg.Dir, "master.out"), n)
}

// LogTail returns the last n lines of the node's mailman.log (runner
// starts and stops, errors, tracebacks).
func (m *Mailman) LogTail(n int) string { return tailFile(m.mainLog(), n) }

// CPUTime is the CPU time (user+system) used so far by the node's live
// processes, master and runners.
func (m *Mailman) CPUTime() (time.Duration, error) {
	pids, err := m.PIDs()
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, pid := range pids {
		d, err := cpuTime(pid)
		if err != nil {
			continue // exited since the scan
		}
		sum += d
	}
	return sum, nil
}
