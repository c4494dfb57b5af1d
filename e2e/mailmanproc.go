//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"
)

// MasterPID is the master's PID, or 0 when it is not running.
func (m *Mailman) MasterPID() int {
	if m.master == nil {
		return 0
	}
	if done, _ := m.master.Exited(); done {
		return 0
	}
	return m.master.PID()
}

// procs finds every live process of this node (master and runners) by its
// -C argument.
func (m *Mailman) procs() ([]ProcInfo, error) {
	return findProcs(func(args []string) bool {
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-C" && args[i+1] == m.cfgPath {
				return true
			}
		}
		return false
	})
}

// runnerName returns NAME from a runner's --runner=NAME:slice:count, or "".
func runnerName(args []string) string {
	for _, a := range args {
		if rest, ok := strings.CutPrefix(a, "--runner="); ok {
			name, _, _ := strings.Cut(rest, ":")
			return name
		}
	}
	return ""
}

// RunnerPIDs maps each live runner's name to its PIDs.
func (m *Mailman) RunnerPIDs() (map[string][]int, error) {
	ps, err := m.procs()
	if err != nil {
		return nil, err
	}
	out := make(map[string][]int)
	for _, p := range ps {
		if n := runnerName(p.Args); n != "" {
			out[n] = append(out[n], p.PID)
		}
	}
	return out, nil
}

// PIDs returns every live process of the node, master included.
func (m *Mailman) PIDs() ([]int, error) {
	ps, err := m.procs()
	if err != nil {
		return nil, err
	}
	pids := make([]int, len(ps))
	for i, p := range ps {
		pids[i] = p.PID
	}
	return pids, nil
}

// queueRunners is the configured runners that scan a queue directory.
func (m *Mailman) queueRunners() []string {
	var out []string
	for _, r := range m.cfg.Runners {
		if r != "lmtp" && r != "rest" {
			out = append(out, r)
		}
	}
	return out
}

// runnerPIDsOf returns the PIDs of the named runners (all queue runners
// when names is empty); a named runner with no live process is an error.
func (m *Mailman) runnerPIDsOf(names []string) ([]int, error) {
	if len(names) == 0 {
		names = m.queueRunners()
	}
	byName, err := m.RunnerPIDs()
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, n := range names {
		if len(byName[n]) == 0 {
			return nil, fmt.Errorf("mailman %s: no live %s runner", m.cfg.Name, n)
		}
		pids = append(pids, byName[n]...)
	}
	return pids, nil
}

// Pause stops (SIGSTOP) the named runners, by default every runner that
// scans a queue (all but lmtp and rest, so posts can still be injected
// and pile up in "in"). It returns once each is stopped. A runner stopped
// in the middle of a message leaves its .bak in place, and may hold a lock
// on the shared SQLite database while stopped.
func (m *Mailman) Pause(ctx context.Context, names ...string) error {
	pids, err := m.runnerPIDsOf(names)
	if err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	if err := signalAll(pids, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	for _, pid := range pids {
		if err := waitState(ctx, pid, "Tt"); err != nil {
			return fmt.Errorf("pause: %w", err)
		}
	}
	return nil
}

// Resume continues (SIGCONT) the named runners, by default every queue
// runner.
func (m *Mailman) Resume(names ...string) error {
	pids, err := m.runnerPIDsOf(names)
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	if err := signalAll(pids, syscall.SIGCONT); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	return nil
}

// Stop sends SIGTERM to the master (which stops its runners) and waits
// until every process of the node is gone. Paused runners are continued
// first. When ctx ends first, the node is killed.
func (m *Mailman) Stop(ctx context.Context) error {
	if m.master == nil {
		return nil
	}
	pids, err := m.PIDs()
	if err != nil {
		return err
	}
	if err := signalAll(pids, syscall.SIGCONT); err != nil {
		return fmt.Errorf("stop mailman %s: %w", m.cfg.Name, err)
	}
	if err := m.master.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop mailman %s: %w", m.cfg.Name, err)
	}
	err = pollUntil(ctx, 50*time.Millisecond, "mailman "+m.cfg.Name+" to stop", func() (bool, error) {
		done, _ := m.master.Exited()
		if !done {
			return false, nil
		}
		left, err := m.procs()
		return len(left) == 0, err
	})
	if err != nil {
		return fmt.Errorf("stop mailman %s: %w", m.cfg.Name, errors.Join(err, m.Kill()))
	}
	return nil
}

// Kill sends SIGKILL to the master and every runner of the node at once
// (process group, then a /proc scan for strays) and waits until they are
// all gone. Nothing gets to clean up: .bak files stay, the master lock
// stays (the next Start passes --force).
func (m *Mailman) Kill() error {
	if m.master != nil {
		if err := syscall.Kill(-m.master.PID(), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("kill mailman %s group: %w", m.cfg.Name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := pollUntil(ctx, 20*time.Millisecond, "mailman "+m.cfg.Name+" to die", func() (bool, error) {
		left, err := m.procs()
		if err != nil {
			return false, err
		}
		if len(left) == 0 {
			return true, nil
		}
		pids := make([]int, len(left))
		for i, p := range left {
			pids[i] = p.PID
		}
		return false, signalAll(pids, syscall.SIGKILL)
	})
	if err != nil {
		return fmt.Errorf("kill mailman %s: %w", m.cfg.Name, err)
	}
	if m.master != nil {
		if err := m.master.Kill(); err != nil {
			return err
		}
	}
	return nil
}
