package fencesim

import (
	"bufio"
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// mutation breaks one safety condition of the protocol.
type mutation struct {
	name     string
	file     string // relative to the module root
	old, new string
	want     string // the guarantee the simulator must report
	gate     bool   // run the seeds with the runner gate on
	recovery bool   // with Mailman's .bak recovery at a whole-node restart
}

var mutations = []mutation{
	{
		// A node that loses the claim race to a live owner takes the
		// entry anyway: restore before winning the claim.
		name: "takeover-ignores-live-owner",
		file: "fence/takeover.go",
		old:  "if c.Owner != n.cfg.Node && c.Epoch > horizon {",
		new:  "if c.Owner != n.cfg.Node && c.Epoch > horizon+1<<40 {",
		want: "G2",
	},
	{
		// A node that cannot renew stops acting as owner but leaves its
		// entries visible to its runners.
		name: "fence-skips-quarantine",
		file: "fence/lease.go",
		old:  "moved, err = n.local.Quarantine(ctx, false)",
		new:  "moved, err = []Entry(nil), error(nil)",
		want: "G2",
	},
	{
		// A node coming back restores held entries that a peer took over.
		name: "settle-ignores-takeover",
		file: "fence/settle.go",
		old:  "case found && c.Owner != n.cfg.Node:",
		new:  "case found && c.Owner != n.cfg.Node && c.Token == 0:",
		want: "G2",
	},
	{
		// A finished entry's claim is collected while a node that held a
		// copy has not settled since: it comes back and claims afresh.
		name: "claim-gc-ignores-past-holders",
		file: "fence/claims.go",
		old:  "if !n.mayCollect(c) {",
		new:  "if false && !n.mayCollect(c) {",
		want: "G3",
	},
	{
		// An entry moved too often is restored as .pck instead of being
		// preserved in bad.
		name: "no-transfer-bound",
		file: "fence/takeover.go",
		old:  "if e.Kind == KindPck && c.Transfers > n.cfg.MaxTransfers {",
		new:  "if e.Kind == KindPck && c.Transfers > n.cfg.MaxTransfers+100 {",
		want: "G6",
	},
	{
		// The runner gate stays open after the node lost its lease: its
		// runners go on with entries peers take over.
		name: "gate-open-after-lost-lease",
		file: "fence/gate.go",
		old:  "g.Admit, g.Reason = AdmitNew, v.reason",
		new:  "g.Admit, g.Until, g.Reason = AdmitAll, v.now.Add(time.Hour), v.reason",
		want: "G2",
		gate: true,
	},
	{
		// A node back from a fence under a new epoch after peers declared
		// it dead opens its gate without holding and settling what they
		// took over.
		name: "gate-forgets-death-after-fence",
		file: "fence/lease.go",
		old:  "if err := n.afterDeath(ctx, died, false); err != nil {",
		new:  "if err := n.afterDeath(ctx, died && false, false); err != nil {",
		want: "G2",
		gate: true,
	},
	{
		// The node takes a gate's deadline for its uploads before the
		// record is written: when the write fails, it uploads entries born
		// after the cutoff its runners read.
		name: "gate-uploads-outrun-the-record",
		file: "fence/gate.go",
		old:  "if g.Until.IsZero() {\n\t\tk.until = time.Time{} // closed: no upload from now on\n\t}",
		new:  "k.until = g.Until",
		want: "gate",
		gate: true,
	},
	{
		// A node declared dead leaves the entries its runners had in
		// flight unsettled: one a peer took over comes back as a .pck
		// through Mailman's recovery and is run on both.
		name:     "gate-in-flight-not-settled",
		file:     "fence/settle.go",
		old:      "if err := n.settleInFlight(octx, epoch); err != nil {",
		new:      "if err := error(nil); err != nil {",
		want:     "G2",
		gate:     true,
		recovery: true,
	},
}

// TestSimFindsPlantedBugs copies the module, plants one bug per subtest
// in the copy's protocol code, runs the simulator on the copy, and
// requires it to report the expected guarantee on a seed that the real
// code passes.
func TestSimFindsPlantedBugs(t *testing.T) {
	if *flagSeed >= 0 || *flagSoak > 0 {
		t.Skip("replay and soak runs leave the planted bugs alone")
	}
	root := moduleRoot(t)
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	for _, m := range mutations {
		t.Run(m.name, func(t *testing.T) {
			dir := t.TempDir()
			copyModule(t, root, dir)
			path := filepath.Join(dir, m.file)
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(string(src), m.old); n != 1 {
				t.Fatalf("mutation %s: the text to replace occurs %d times in %s, want once: update the mutation", m.name, n, m.file)
			}
			mutated := strings.Replace(string(src), m.old, m.new, 1)
			if err := os.WriteFile(path, []byte(mutated), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			start := time.Now()
			gate := "off"
			if m.gate {
				gate = "on"
			}
			cmd := exec.CommandContext(ctx, goBin, "test", "./fence/fencesim", "-run", "^TestSim$", "-count=1",
				"-seeds=3000", "-maxfail=5", "-norecovery="+strconv.FormatBool(!m.recovery), "-gate="+gate)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off")
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the simulator found no violation with %s planted:\n%s", m.name, tail(out, 20))
			}
			if bytes.Contains(out, []byte("[build failed]")) || bytes.Contains(out, []byte("[setup failed]")) {
				t.Fatalf("the copy with %s planted does not build:\n%s", m.name, tail(out, 20))
			}
			seed, g, ok := firstFinding(t, out, m.want)
			if !ok {
				t.Fatalf("the simulator did not report %s with %s planted (exit: %v):\n%s", m.want, m.name, err, tail(out, 40))
			}
			if r := Run(seed, Options{NoRecovery: !m.recovery, RunnerGate: m.gate}); r.Violation != nil {
				t.Fatalf("seed %d also fails on the real code (%v): the planted bug is not what was found", seed, r.Violation)
			}
			t.Logf("%s: simulator reported %s on seed %d, gate %s (real code passes it) in %v", m.name, g, seed, gate, time.Since(start).Round(time.Second))
		})
	}
}

var findingRE = regexp.MustCompile(`violation: seed=(\d+) guarantee=(G\d|gate) gate=`)

// firstFinding returns the first reported violation of guarantee want
// whose seed the real code passes.
func firstFinding(t *testing.T, out []byte, want string) (uint64, string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := findingRE.FindStringSubmatch(sc.Text())
		if m == nil || m[2] != want {
			continue
		}
		seed, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			continue
		}
		return seed, m[2], true
	}
	return 0, "", false
}

func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func moduleRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// copyModule copies what the simulator builds from: go.mod, go.sum, the
// store interface and the fence packages (without fence's own tests).
func copyModule(t *testing.T, root, dst string) {
	t.Helper()
	copyFile := func(rel string) {
		data, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, rel), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	copyFile("go.mod")
	copyFile("go.sum")
	goFiles := func(rel string, tests bool) {
		entries, err := os.ReadDir(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			name := e.Name()
			if e.Type()&fs.ModeType != 0 || !strings.HasSuffix(name, ".go") || !tests && strings.HasSuffix(name, "_test.go") {
				continue
			}
			copyFile(filepath.Join(rel, name))
		}
	}
	goFiles("store", false)
	goFiles("fence", false)
	goFiles("fence/fencesim", true)
}
