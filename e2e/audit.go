//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Auditor watches every queue directory of a cluster while a test runs
// and records each file that breaks what Mailman needs (SPEC G4):
//   - in a queue a runner scans, a name ending in .pck that is not
//     <float>+<hex>.pck (it would crash the runner);
//   - an entry (.pck, .bak, .psv of Mailman's shape) that is not a regular
//     file owned by the Mailman user with mode 0660.
//
// Files the test planted on purpose are excused by name. Polling catches
// files that live at least one interval; short-lived ones may slip by.
type Auditor struct {
	c        *Cluster
	interval time.Duration

	mu         sync.Mutex
	excused    map[string]bool // absolute paths
	violations []violation
	seen       map[violation]bool
	checked    int // entry files inspected (a file counts once per scan)
	scans      int

	stop chan struct{}
	done chan struct{}
}

// crashesRunner reports whether a name in a queue a runner scans would
// crash Mailman 3.3.8's Switchboard.get_files (at every scan for .pck, at
// runner start for .bak): it splits the name before the extension at the
// first "+" and parses the left part as a float.
func crashesRunner(name string) bool {
	ext := filepath.Ext(name)
	if ext != ".pck" && ext != ".bak" {
		return false
	}
	when, _, ok := strings.Cut(strings.TrimSuffix(name, ext), "+")
	if !ok {
		return true
	}
	_, err := strconv.ParseFloat(strings.TrimSpace(when), 64)
	return err != nil
}

// violation is one problem with one file.
type violation struct {
	path, msg string
}

// StartAuditor starts polling every interval until Stop.
func StartAuditor(c *Cluster, interval time.Duration) *Auditor {
	a := &Auditor{
		c: c, interval: interval,
		excused: make(map[string]bool), seen: make(map[violation]bool),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	go a.loop()
	return a
}

// Excuse exempts planted files (absolute paths) from the checks, also
// for what a scan found before the call.
func (a *Auditor) Excuse(paths ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range paths {
		a.excused[p] = true
	}
}

// Stop ends polling and waits for the last scan.
func (a *Auditor) Stop() {
	select {
	case <-a.stop:
	default:
		close(a.stop)
	}
	<-a.done
}

// Violations returns what the auditor found so far.
func (a *Auditor) Violations() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, v := range a.violations {
		if !a.excused[v.path] {
			out = append(out, v.msg)
		}
	}
	return out
}

// Stats returns how many scans ran and how many entry files were checked.
func (a *Auditor) Stats() (scans, checked int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.scans, a.checked
}

func (a *Auditor) loop() {
	defer close(a.done)
	t := time.NewTicker(a.interval)
	defer t.Stop()
	for {
		a.scan()
		select {
		case <-a.stop:
			a.scan()
			return
		case <-t.C:
		}
	}
}

// scan inspects every queue directory of every node once.
func (a *Auditor) scan() {
	acct := a.c.Account
	var found []violation
	checked := 0
	for _, n := range a.c.Nodes {
		for _, q := range Queues {
			dir := n.Mailman.Queue(q)
			ents, err := os.ReadDir(dir)
			if err != nil {
				continue
			}
			scanned := q != "bad" && q != "shunt"
			for _, e := range ents {
				name := e.Name()
				path := filepath.Join(dir, name)
				bad := func(format string, args ...any) {
					found = append(found, violation{path, fmt.Sprintf("node %s: %s: ", n.Name, path) + fmt.Sprintf(format, args...)})
				}
				if scanned && crashesRunner(name) {
					bad("name crashes a Mailman runner")
				}
				if !entryRE.MatchString(name) {
					ext := filepath.Ext(name)
					if scanned && (ext == ".pck" || ext == ".bak") {
						bad("%s name is not <time>+<sha1>%s", ext, ext)
					}
					continue
				}
				fi, err := os.Lstat(path)
				if errors.Is(err, os.ErrNotExist) {
					continue // a runner or the sidecar moved it on
				}
				if err != nil {
					bad("%v", err)
					continue
				}
				checked++
				if p := entryProblem(fi, acct); p != "" {
					bad("%s", p)
				}
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.scans++
	a.checked += checked
	for _, v := range found {
		if !a.seen[v] {
			a.seen[v] = true
			a.violations = append(a.violations, v)
		}
	}
}

// entryProblem says what is wrong with a queue entry's file, or "".
func entryProblem(fi os.FileInfo, acct Account) string {
	if !fi.Mode().IsRegular() {
		return fmt.Sprintf("not a regular file (%v)", fi.Mode().Type())
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "no owner information"
	}
	var p []string
	if int(sys.Uid) != acct.UID || int(sys.Gid) != acct.GID {
		p = append(p, fmt.Sprintf("owner %d:%d, want %s %d:%d", sys.Uid, sys.Gid, acct.Name, acct.UID, acct.GID))
	}
	if fi.Mode().Perm() != 0o660 {
		p = append(p, fmt.Sprintf("mode %v, want 0660", fi.Mode().Perm()))
	}
	return strings.Join(p, "; ")
}

// CheckEntries inspects every entry file in one queue directory now and
// returns the problems (G4 owner, mode, type, name) and how many entries
// it looked at.
func CheckEntries(dir string, acct Account) (int, []string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, nil, fmt.Errorf("read %s: %w", dir, err)
	}
	var probs []string
	n := 0
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		if !entryRE.MatchString(e.Name()) {
			probs = append(probs, path+": not a Mailman entry name")
			continue
		}
		fi, err := os.Lstat(path)
		if err != nil {
			probs = append(probs, fmt.Sprintf("%s: %v", path, err))
			continue
		}
		n++
		if p := entryProblem(fi, acct); p != "" {
			probs = append(probs, path+": "+p)
		}
	}
	return n, probs, nil
}

// RunnerHealth is a snapshot of one node's runners.
type RunnerHealth struct {
	PIDs       map[string][]int // live runner PIDs by name
	Tracebacks int              // "Traceback" lines in the master's output
}

// Health returns the node's live runners and the tracebacks its master
// has printed (runner deaths print theirs there).
func (m *Mailman) Health() (RunnerHealth, error) {
	pids, err := m.RunnerPIDs()
	if err != nil {
		return RunnerHealth{}, err
	}
	raw, err := os.ReadFile(filepath.Join(m.cfg.Dir, "master.out"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return RunnerHealth{}, fmt.Errorf("read master.out: %w", err)
	}
	return RunnerHealth{PIDs: pids, Tracebacks: strings.Count(string(raw), "Traceback (most recent call last)")}, nil
}

// SameRunners compares the node's runners now with an earlier snapshot:
// every configured runner must still be the one process it was (no
// crash, no restart) and no new traceback may have appeared.
func (m *Mailman) SameRunners(before RunnerHealth) error {
	now, err := m.Health()
	if err != nil {
		return err
	}
	var probs []string
	for _, r := range m.cfg.Runners {
		if !slices.Equal(now.PIDs[r], before.PIDs[r]) || len(now.PIDs[r]) != 1 {
			probs = append(probs, fmt.Sprintf("%s runner pids %v, were %v", r, now.PIDs[r], before.PIDs[r]))
		}
	}
	if now.Tracebacks != before.Tracebacks {
		probs = append(probs, fmt.Sprintf("%d new tracebacks in master.out:\n%s", now.Tracebacks-before.Tracebacks, m.MasterOutTail(40)))
	}
	if len(probs) > 0 {
		return fmt.Errorf("mailman %s: %s", m.cfg.Name, strings.Join(probs, "; "))
	}
	return nil
}
