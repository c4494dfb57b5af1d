package gatefile

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// names returns the sorted file names in dir.
func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out
}

func TestListRunners(t *testing.T) {
	dir := filepath.Join(t.TempDir(), RunnersDir)
	if live, err := ListRunners(dir); err != nil || len(live) != 0 {
		t.Fatalf("missing dir: %v, %v", live, err)
	}

	in, err := RegisterRunner(dir, RunnerInfo{PID: 11, Runner: "in:0:1", Queue: "in", Started: 1764330000.5, BootID: testBoot, Plugin: "test"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := RegisterRunner(dir, RunnerInfo{PID: 12, Runner: "out:0:1", Queue: "out"})
	if err != nil {
		t.Fatal(err)
	}
	// A runner's temp file before its rename, and a stray file: ignored.
	for _, name := range []string{".host-1-ab.json.tmp", "notes.txt"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o660); err != nil {
			t.Fatal(err)
		}
	}
	// A live runner whose body does not decode still counts.
	garbled, err := os.OpenFile(filepath.Join(dir, "garbled.json"), os.O_CREATE|os.O_RDWR, 0o660)
	if err != nil {
		t.Fatal(err)
	}
	defer garbled.Close()
	if err := unix.Flock(int(garbled.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := garbled.WriteString("{not json"); err != nil {
		t.Fatal(err)
	}
	// A dead runner's record: its lock is free.
	dead := filepath.Join(dir, "dead-1-00.json")
	if err := os.WriteFile(dead, []byte(`{"v":1,"pid":1,"runner":"in:0:1","queue":"in"}`), 0o660); err != nil {
		t.Fatal(err)
	}

	live, err := ListRunners(dir)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Runner{}
	for _, r := range live {
		byName[r.Name] = r
	}
	if len(live) != 3 {
		t.Fatalf("live = %+v, want in, out and garbled", live)
	}
	if r := byName[in.Name()]; r.Err != nil || r.Info != (RunnerInfo{V: 1, PID: 11, Runner: "in:0:1", Queue: "in", Started: 1764330000.5, BootID: testBoot, Plugin: "test"}) {
		t.Fatalf("in runner = %+v", r)
	}
	if r := byName["garbled.json"]; r.Err == nil {
		t.Fatalf("garbled runner decoded: %+v", r)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatalf("dead runner's record not removed: %v", err)
	}
	if got := names(t, dir); !slices.Contains(got, ".host-1-ab.json.tmp") || !slices.Contains(got, "notes.txt") {
		t.Fatalf("ignored files were touched: %v", got)
	}

	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	live, err = ListRunners(dir)
	if err != nil || len(live) != 2 {
		t.Fatalf("after out closed: %+v, %v", live, err)
	}
	if slices.Contains(names(t, dir), out.Name()) {
		t.Fatalf("closed runner's record %s not removed", out.Name())
	}
	if err := in.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestRegisterRunnerName(t *testing.T) {
	dir := t.TempDir()
	a, err := RegisterRunner(dir, RunnerInfo{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := RegisterRunner(dir, RunnerInfo{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if a.Name() == b.Name() || strings.HasPrefix(a.Name(), ".") || !strings.HasSuffix(a.Name(), ".json") {
		t.Fatalf("names %q and %q", a.Name(), b.Name())
	}
	if got := names(t, dir); len(got) != 2 {
		t.Fatalf("dir holds %v, want the two records only (no temp file)", got)
	}
	if safeName("a b/c.d") != "a_b_c.d" || safeName("") != "host" || safeName(".x") != "host.x" {
		t.Fatal("safeName")
	}
}

// TestListRunnersAcrossProcesses: a record held by another process counts
// while it lives and is removed once it has been SIGKILLed.
func TestListRunnersAcrossProcesses(t *testing.T) {
	if dir := os.Getenv("GATEFILE_HELPER_DIR"); dir != "" {
		rec, err := RegisterRunner(dir, RunnerInfo{PID: os.Getpid(), Runner: "in:0:1", Queue: "in"})
		if err != nil {
			os.Stdout.WriteString("error " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Stdout.WriteString("registered " + rec.Name() + "\n")
		select {} // hold the lock until killed
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestListRunnersAcrossProcesses$")
	cmd.Env = append(os.Environ(), "GATEFILE_HELPER_DIR="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill() //nolint:errcheck // already dead when the test passes
	line, err := bufio.NewReader(stdout).ReadString('\n')
	name, ok := strings.CutPrefix(strings.TrimSpace(line), "registered ")
	if err != nil || !ok {
		t.Fatalf("helper said %q (%v)", line, err)
	}
	live, err := ListRunners(dir)
	if err != nil || len(live) != 1 || live[0].Name != name || live[0].Info.PID != cmd.Process.Pid {
		t.Fatalf("with the helper alive: %+v, %v", live, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	live, err = ListRunners(dir)
	if err != nil || len(live) != 0 {
		t.Fatalf("after SIGKILL: %+v, %v", live, err)
	}
	if got := names(t, dir); len(got) != 0 {
		t.Fatalf("dead runner's record left: %v", got)
	}
}
