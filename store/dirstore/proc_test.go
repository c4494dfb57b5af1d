package dirstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

// childEnv switches the test binary into a child process that serves
// store commands on stdin against the directory store named by the
// variable.
const childEnv = "MMSIDECAR_DIRSTORE_TEST_CHILD"

// childMain runs the child: it prints "ready", then answers each command
// line with one line.
//
//	create KEY BODY       -> win | lose | err MSG   (If-None-Match: *)
//	cas KEY ETAG BODY     -> win | lose | err MSG   (If-Match)
//	hang KEY SIZE         -> writes SIZE/2 bytes of a SIZE-byte body, then blocks forever
func childMain(root string) int {
	s, err := Open(root)
	if err != nil {
		fmt.Println("err", err)
		return 1
	}
	defer s.Close()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	ctx := context.Background()
	for in.Scan() {
		f := strings.Fields(in.Text())
		var err error
		switch {
		case len(f) == 3 && f[0] == "create":
			_, err = store.PutBytes(ctx, s, f[1], []byte(f[2]), store.Condition{IfAbsent: true})
		case len(f) == 4 && f[0] == "cas":
			_, err = store.PutBytes(ctx, s, f[1], []byte(f[3]), store.Condition{IfMatch: f[2]})
		case len(f) == 3 && f[0] == "hang":
			size, _ := strconv.ParseInt(f[2], 10, 64)
			body := io.MultiReader(io.LimitReader(zeros{}, size/2), blockForever{})
			_, err = s.Put(ctx, f[1], body, size, store.Condition{})
		default:
			err = fmt.Errorf("bad command %q", in.Text())
		}
		switch {
		case err == nil:
			fmt.Println("win")
		case errors.Is(err, store.ErrPrecondition):
			fmt.Println("lose")
		default:
			fmt.Println("err", strings.ReplaceAll(err.Error(), "\n", " "))
		}
	}
	return 0
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

type blockForever struct{}

func (blockForever) Read([]byte) (int, error) { select {} }

// child is one store process started from the test binary.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Scanner
}

func startChild(t *testing.T, root string) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+root)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	t.Cleanup(func() {
		c.stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	if line := c.reply(t); line != "ready" {
		t.Fatalf("child: %q", line)
	}
	return c
}

func (c *child) send(t *testing.T, format string, args ...any) {
	t.Helper()
	if _, err := fmt.Fprintf(c.stdin, format+"\n", args...); err != nil {
		t.Fatalf("send to child: %v", err)
	}
}

func (c *child) reply(t *testing.T) string {
	t.Helper()
	if !c.out.Scan() {
		t.Fatalf("child %d ended: %v", c.cmd.Process.Pid, c.out.Err())
	}
	return c.out.Text()
}

// TestCrossProcessRaces races several processes on one directory:
// conditional creates on a fresh key per round, then CAS updates of one
// key from a common ETag. Every round must have exactly one winner, the
// others must lose with a precondition failure, and the store must hold
// the winner's body.
func TestCrossProcessRaces(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openTest(t, root)
	const procs, rounds = 4, 25
	children := make([]*child, procs)
	for i := range children {
		children[i] = startChild(t, root)
	}
	// race sends cmd(i) to every child, then collects the answers.
	race := func(what string, cmd func(i int) string) (winner int) {
		for i, c := range children {
			c.send(t, "%s", cmd(i))
		}
		winner = -1
		for i, c := range children {
			switch r := c.reply(t); r {
			case "win":
				if winner >= 0 {
					t.Fatalf("%s: processes %d and %d both won", what, winner, i)
				}
				winner = i
			case "lose":
			default:
				t.Fatalf("%s: process %d: %s", what, i, r)
			}
		}
		if winner < 0 {
			t.Fatalf("%s: no winner", what)
		}
		return winner
	}
	wins := make([]int, procs)
	for r := range rounds {
		key := fmt.Sprintf("xproc/create/%d", r)
		body := func(i int) string { return fmt.Sprintf("create-r%d-p%d", r, i) }
		w := race(key, func(i int) string { return fmt.Sprintf("create %s %s", key, body(i)) })
		wins[w]++
		if data, _, err := store.GetBytes(ctx, s, key); err != nil || string(data) != body(w) {
			t.Fatalf("%s holds %q (%v), winner wrote %q", key, data, err, body(w))
		}
	}
	t.Logf("create wins per process: %v", wins)
	info := mustPut(t, s, "xproc/cas", "start", store.Condition{})
	for r := range rounds {
		body := func(i int) string { return fmt.Sprintf("cas-r%d-p%d", r, i) }
		w := race(fmt.Sprintf("cas round %d", r), func(i int) string {
			return fmt.Sprintf("cas xproc/cas %s %s", info.ETag, body(i))
		})
		var err error
		info, err = s.Stat(ctx, "xproc/cas")
		if err != nil || info.ETag != store.ETagOf([]byte(body(w))) {
			t.Fatalf("cas round %d: store has %+v (%v), winner wrote %q", r, info, err, body(w))
		}
	}
}

// TestCrashMidWrite kills a process while its Put is streaming the body:
// the partial temp file must never be visible as an object, and the next
// Open removes it while leaving live instances' temp directories alone.
func TestCrashMidWrite(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	live := openTest(t, root)
	c := startChild(t, root)
	const size = 4 << 20
	c.send(t, "hang crash/key %d", size)

	// Wait until the child's temp file holds the first half of the body.
	var partial string
	deadline := time.Now().Add(30 * time.Second)
	for partial == "" {
		matches, _ := filepath.Glob(filepath.Join(root, "tmp", "*", "*.tmp"))
		for _, m := range matches {
			if fi, err := os.Stat(m); err == nil && fi.Size() >= size/2 {
				partial = m
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("child never wrote its temp file")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Wait(); err == nil {
		t.Fatal("killed child exited cleanly")
	}

	if _, err := live.Stat(ctx, "crash/key"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("stat after crash: %v", err)
	}
	if keys := listKeys(t, live, ""); len(keys) != 0 {
		t.Fatalf("list after crash: %q", keys)
	}
	if _, err := os.Stat(partial); err != nil {
		t.Fatalf("temp file should still exist before the sweep: %v", err)
	}

	// Reopening sweeps the dead instance, not the live one.
	mustPut(t, openTest(t, root), "after/crash", "ok", store.Condition{IfAbsent: true})
	if _, err := os.Stat(filepath.Dir(partial)); !os.IsNotExist(err) {
		t.Fatalf("dead instance dir survived the sweep: %v", err)
	}
	if _, err := os.Stat(live.tmp.path); err != nil {
		t.Fatalf("live instance dir swept: %v", err)
	}
	mustPut(t, live, "after/live", "ok", store.Condition{IfAbsent: true})
	if keys := listKeys(t, live, ""); strings.Join(keys, ",") != "after/crash,after/live" {
		t.Fatalf("list: %q", keys)
	}
}

// TestStrayTempNeverVisible plants files in every temp location: none of
// them may show up as an object.
func TestStrayTempNeverVisible(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openTest(t, root)
	mustPut(t, s, "q/x", "real", store.Condition{})
	for _, p := range []string{
		filepath.Join(s.tmp.path, "99.tmp"),
		filepath.Join(root, "objects", "d.q", "stray.tmp"),
		filepath.Join(root, "objects", "junk"),
	} {
		if err := os.WriteFile(p, append(header(store.ETagOf(nil)), "x"...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if keys := listKeys(t, s, ""); strings.Join(keys, ",") != "q/x" {
		t.Fatalf("list: %q", keys)
	}
	if _, err := s.Stat(ctx, "q/stray.tmp"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("stat stray: %v", err)
	}
}
