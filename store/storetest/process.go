package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// process is one server process of the harness (a MinIO server, a
// SeaweedFS master, volume server, filer or S3 gateway): a command line
// and a log file, started, signalled and reaped by PID. It dies with the
// test binary (parent-death signal).
type process struct {
	name    string // for messages: "MinIO", "SeaweedFS filer 2"
	bin     string
	args    []string
	env     []string // nil: the test's environment
	dir     string   // working directory; empty: the test's
	logPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	paused bool
}

// launch starts the process without waiting for it to serve; the
// returned channel closes when it exits.
func (p *process) launch() (<-chan struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return nil, fmt.Errorf("%s is already running", p.name)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", p.name, err)
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = p.env
	cmd.Dir = p.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	// The server dies with the test binary, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := Spawn(cmd); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s %s: %w", p.name, p.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	p.cmd, p.exited, p.paused = cmd, exited, false
	return exited, nil
}

// spawner starts processes from one OS thread that never exits: the
// parent-death signal fires when the forking thread dies, not the process.
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

// Spawn starts cmd (cmd.Start) from one OS thread that never exits, so
// that a parent-death signal in cmd.SysProcAttr fires when this process
// dies, not when the goroutine's thread happens to exit. The chaos suite
// and the bench start their processes through it too.
func Spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread()
			for r := range spawner.reqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawner.reqs <- spawnReq{cmd: cmd, done: done}
	return <-done
}

// signal sends sig to the running process, by its PID.
func (p *process) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("%s: %v to a process that is not running", p.name, sig)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s: send %v to pid %d: %w", p.name, sig, p.cmd.Process.Pid, err)
	}
	if sig == syscall.SIGTERM && p.paused {
		// A stopped process handles SIGTERM only once it runs again.
		p.cmd.Process.Signal(syscall.SIGCONT)
		p.paused = false
	}
	return nil
}

// stop sends SIGTERM and waits for the process to exit (SIGKILL after
// stopTimeout).
func (p *process) stop() error {
	err := p.signal(syscall.SIGTERM)
	if !p.waitExit(stopTimeout) {
		p.kill()
	}
	p.reap()
	return err
}

// pause freezes the process with SIGSTOP and waits until the kernel has
// stopped it: until then a request already accepted can still be
// answered, and a test that expects a hang would see a prompt reply.
func (p *process) pause() error {
	if err := p.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
	if pid := p.pid(); pid != 0 {
		deadline := time.Now().Add(5 * time.Second)
		for !processStopped(pid) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// resume thaws a paused process with SIGCONT.
func (p *process) resume() error {
	err := p.signal(syscall.SIGCONT)
	p.mu.Lock()
	p.paused = false
	p.mu.Unlock()
	return err
}

// processStopped reports whether /proc says pid is stopped (state T).
func processStopped(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	i := bytes.LastIndexByte(data, ')')
	return i >= 0 && i+2 < len(data) && (data[i+2] == 'T' || data[i+2] == 't')
}

// pid returns the process id, or 0 when it is not running.
func (p *process) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// running reports whether the process runs and is not paused.
func (p *process) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !p.paused
}

// waitExit waits up to d for the process to exit.
func (p *process) waitExit(d time.Duration) bool {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	if exited == nil {
		return true
	}
	select {
	case <-exited:
		return true
	case <-time.After(d):
		return false
	}
}

// kill sends SIGKILL, by PID, and waits for the process to go.
func (p *process) kill() {
	p.mu.Lock()
	if p.cmd != nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
	}
	p.mu.Unlock()
	p.waitExit(stopTimeout)
	p.reap()
}

// reap forgets an exited process.
func (p *process) reap() {
	p.mu.Lock()
	p.cmd, p.exited, p.paused = nil, nil, false
	p.mu.Unlock()
}

// errExited is what a readiness wait returns when the process exits.
var errExited = errors.New("the server process exited")

// pollReady calls try every pause until it returns nil (ready), a
// non-nil fatal error, exited closes, or timeout passes; try's error
// is the last reason it was not ready yet.
func pollReady(exited <-chan struct{}, timeout, pause time.Duration, try func(ctx context.Context) (fatal, notYet error)) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		fatal, notYet := try(ctx)
		if fatal != nil {
			return fatal
		}
		if notYet == nil {
			return nil
		}
		select {
		case <-exited:
			return errExited
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %w", timeout, notYet)
		case <-time.After(pause):
		}
	}
}

// findBinary locates a server binary: $envVar, then
// $HOME/.cache/mmsidecar/bin/<name> (where scripts/test.sh builds it),
// then the PATH. It returns "" and no error when it is nowhere, and an
// error when envVar names a file that is not there.
func findBinary(envVar, name string) (string, error) {
	if p := os.Getenv(envVar); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s binary %s=%s: %w", name, envVar, p, err)
		}
		return p, nil
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := filepath.Join(home, ".cache", "mmsidecar", "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", nil
}

// tail returns the end of a log file.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
