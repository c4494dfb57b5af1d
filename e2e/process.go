//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ProcessSpec describes a child process the harness starts and owns, such
// as a node's mmsidecar.
type ProcessSpec struct {
	Name    string   // label for logs and errors
	Path    string   // executable
	Args    []string // arguments after Path
	Env     []string // KEY=VALUE added to a minimal base environment
	Dir     string   // working directory ("" = LogPath's directory)
	AsUser  *Account // run as this user with umask 007; nil = as the test (root)
	LogPath string   // stdout and stderr go here (appended)
}

// Process is a running child started by StartProcess. The child leads its
// own process group; Kill signals the whole group.
type Process struct {
	spec ProcessSpec
	cmd  *exec.Cmd
	log  *os.File

	done    chan struct{}
	mu      sync.Mutex
	waitErr error
}

// RunProcess runs spec's program to completion (e.g. `mmsidecar drain`)
// and returns its combined output; spec.LogPath is ignored and spec.Dir
// must be set. When ctx ends first the process group is killed.
func RunProcess(ctx context.Context, spec ProcessSpec, stdin string) (string, error) {
	cmd := commandAs(spec.AsUser, append([]string{spec.Path}, spec.Args...))
	cmd.Dir = spec.Dir
	cmd.Env = append(baseEnv(spec.Dir), spec.Env...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := runCommand(ctx, cmd)
	if err != nil {
		return string(out), fmt.Errorf("run %s: %w", spec.Name, err)
	}
	return string(out), nil
}

// StartProcess starts spec's program.
func StartProcess(spec ProcessSpec) (*Process, error) {
	if spec.LogPath == "" {
		return nil, fmt.Errorf("start %s: no log path", spec.Name)
	}
	logf, err := os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", spec.Name, err)
	}
	cmd := commandAs(spec.AsUser, append([]string{spec.Path}, spec.Args...))
	dir := spec.Dir
	if dir == "" {
		dir = filepath.Dir(spec.LogPath)
	}
	cmd.Dir = dir
	cmd.Env = append(baseEnv(dir), spec.Env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	p := &Process{spec: spec, cmd: cmd, log: logf, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// PID is the child's process id (also its process group id).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Name is the spec's label.
func (p *Process) Name() string { return p.spec.Name }

// LogPath is where the child's output goes.
func (p *Process) LogPath() string { return p.spec.LogPath }

// Done is closed once the child has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the child has exited, and its exit error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Signal sends sig to the child alone (not its group).
func (p *Process) Signal(sig syscall.Signal) error {
	if err := syscall.Kill(p.PID(), sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %s: %w", p.spec.Name, err)
	}
	return nil
}

// Stop sends SIGCONT then SIGTERM and waits for exit; when ctx ends first
// it kills the process group. It returns the exit error only when the
// child had to be killed.
func (p *Process) Stop(ctx context.Context) error {
	if done, _ := p.Exited(); done {
		return nil
	}
	if err := p.Signal(syscall.SIGCONT); err != nil {
		return err
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		kerr := p.Kill()
		return errors.Join(fmt.Errorf("stop %s: %w", p.spec.Name, ctx.Err()), kerr)
	}
}

// Kill sends SIGKILL to the child's process group and waits until the
// child is reaped.
func (p *Process) Kill() error {
	if done, _ := p.Exited(); done {
		return nil
	}
	if err := syscall.Kill(-p.PID(), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s: %w", p.spec.Name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("kill %s: pid %d not reaped after 30s", p.spec.Name, p.PID())
	}
}

// LogTail returns the last n lines of the child's output.
func (p *Process) LogTail(n int) string { return tailFile(p.spec.LogPath, n) }
