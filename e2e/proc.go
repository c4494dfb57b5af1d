//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ProcInfo is one live process found in /proc.
type ProcInfo struct {
	PID   int
	State byte     // the state letter of /proc/PID/stat: R, S, T, Z, ...
	Args  []string // argv
}

// findProcs returns the live (non-zombie) processes whose argv satisfies
// match.
func findProcs(match func(args []string) bool) ([]ProcInfo, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	var out []ProcInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue // gone, or a zombie / kernel thread
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		if !match(args) {
			continue
		}
		st, err := procState(pid)
		if err != nil || st == 'Z' || st == 'X' {
			continue
		}
		out = append(out, ProcInfo{PID: pid, State: st, Args: args})
	}
	return out, nil
}

// procState reads the state letter of a process.
func procState(pid int) (byte, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	// The comm field is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 || i+2 >= len(raw) {
		return 0, fmt.Errorf("parse stat of %d", pid)
	}
	return raw[i+2], nil
}

// waitState polls until pid is in one of states or ctx ends; a process
// that is gone is an error.
func waitState(ctx context.Context, pid int, states string) error {
	for {
		st, err := procState(pid)
		if err != nil {
			return fmt.Errorf("process %d vanished: %w", pid, err)
		}
		if strings.IndexByte(states, st) >= 0 {
			return nil
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return fmt.Errorf("wait for process %d state %q (now %c): %w", pid, states, st, err)
		}
	}
}

// sleepCtx waits d or until ctx ends; it is the polling interval of the
// harness's condition loops, never a stand-in for a condition.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// pollUntil calls cond every interval until it returns true, returns an
// error, or ctx ends.
func pollUntil(ctx context.Context, interval time.Duration, what string, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		if err := sleepCtx(ctx, interval); err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
	}
}

// Account is a Unix user the harness runs processes as.
type Account struct {
	Name string
	UID  int
	GID  int
}

// LookupAccount resolves a user name (e.g. "list").
func LookupAccount(name string) (Account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return Account{}, fmt.Errorf("lookup user %s: %w", name, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return Account{}, fmt.Errorf("parse uid of %s: %w", name, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return Account{}, fmt.Errorf("parse gid of %s: %w", name, err)
	}
	return Account{Name: name, UID: uid, GID: gid}, nil
}

// baseEnv is the environment every harness child starts from: nothing of
// the test's own environment leaks in (no MAILMAN_VAR_DIR,
// MAILMAN_CONFIG_FILE, PYTHONPATH, proxies).
func baseEnv(home string) []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + home,
		"LANG=C.UTF-8",
		"LC_ALL=C.UTF-8",
	}
}

// commandAs builds a command that runs argv as acct (through setpriv, with
// umask 007 as Debian runs Mailman) or, when acct is nil, as the current
// user with the current umask. The command leads its own process group.
func commandAs(acct *Account, argv []string) *exec.Cmd {
	var cmd *exec.Cmd
	if acct == nil {
		cmd = exec.Command(argv[0], argv[1:]...)
	} else {
		// setpriv execs sh, which execs argv: the PID stays argv's PID.
		full := append([]string{
			"--reuid=" + strconv.Itoa(acct.UID),
			"--regid=" + strconv.Itoa(acct.GID),
			"--init-groups",
			"--", "/bin/sh", "-c", `umask 007 && exec "$@"`, "sh",
		}, argv...)
		cmd = exec.Command("/usr/bin/setpriv", full...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// runCommand runs cmd to completion; when ctx ends first it kills cmd's
// process group. It returns the combined output.
func runCommand(ctx context.Context, cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.Bytes(), err
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return out.Bytes(), ctx.Err()
	}
}

// chownTree gives root and everything below it to acct.
func chownTree(root string, acct Account) error {
	return filepath.WalkDir(root, func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, acct.UID, acct.GID); err != nil {
			return fmt.Errorf("chown %s: %w", p, err)
		}
		return nil
	})
}

// signalAll sends sig to every pid, ignoring processes that are gone.
func signalAll(pids []int, sig syscall.Signal) error {
	var errs []error
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("signal %d %v: %w", pid, sig, err))
		}
	}
	return errors.Join(errs...)
}

// tailFile returns up to the last n lines of a file, or a note that it
// cannot be read.
func tailFile(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ,
// 100 on every Linux architecture Go supports here).
const clockTick = 10 * time.Millisecond

// cpuTime returns the user+system CPU time a live process has used.
func cpuTime(pid int) (time.Duration, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse stat of %d", pid)
	}
	// Fields after the comm: state is field 3; utime and stime are 14, 15.
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse stat of %d: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse cpu of %d: %w", pid, err)
	}
	return time.Duration(ut+st) * clockTick, nil
}
