package chaos

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// Environment switches.
const (
	// envChaos=1 runs the chaos test; scripts/test.sh sets it.
	envChaos = "MMSIDECAR_CHAOS"
	// envLong=1 adds the 10,000-entry takeover measurement.
	envLong = "MMSIDECAR_CHAOS_LONG"
	// envRace=1 builds the sidecar with the race detector.
	envRace = "MMSIDECAR_CHAOS_RACE"
	// envReport names the file the report is written to (default
	// $HOME/.cache/mmsidecar/chaos-report.txt).
	envReport = "MMSIDECAR_CHAOS_REPORT"
	// envKeep names a directory that receives every node's logs and
	// ledger after each scenario.
	envKeep = "MMSIDECAR_CHAOS_KEEP"
)

var (
	sidecarBin string
	buildErr   error
	buildOnce  sync.Once
	binDir     string
	// sidecarSources lists the module's Go files the binary is built
	// from; the tests open them so that go test's cache knows the result
	// depends on them (the binary is not a Go import of this package).
	sidecarSources []string
	touchOnce      sync.Once
)

func TestMain(m *testing.M) {
	maybeRunWorker()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	report.write()
	return code
}

// ensureSidecar builds the sidecar binary once, on first use, and
// returns the build error if there was one.
func ensureSidecar() error {
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "mmsidecar-chaos-bin-")
		if buildErr == nil {
			sidecarBin, buildErr = buildSidecar(binDir)
		}
	})
	return buildErr
}

// buildSidecar builds cmd/mmsidecar into dir.
func buildSidecar(dir string) (string, error) {
	out := filepath.Join(dir, "mmsidecar")
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	args := []string{"build", "-o", out}
	if os.Getenv(envRace) == "1" {
		args = append(args, "-race")
	}
	cmd := exec.Command(goBin, append(args, "github.com/mmsidecar/mmsidecar/cmd/mmsidecar")...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build cmd/mmsidecar: %v\n%s", err, b)
	}
	list := exec.Command(goBin, "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{end}}",
		"github.com/mmsidecar/mmsidecar/cmd/mmsidecar")
	b, err := list.Output()
	if err != nil {
		return "", fmt.Errorf("go list the sidecar's sources: %w", err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[0], root+string(filepath.Separator)) {
			continue // empty, or a module outside this one
		}
		for _, name := range f[1:] {
			sidecarSources = append(sidecarSources, filepath.Join(f[0], name))
		}
	}
	return out, nil
}

// touchSources opens the sidecar's source files from within a test, so
// that a cached result is not reused after they change.
func touchSources() {
	touchOnce.Do(func() {
		for _, p := range sidecarSources {
			if f, err := os.Open(p); err == nil {
				f.Close()
			}
		}
	})
}

// requireChaos skips unless MMSIDECAR_CHAOS=1; once on, a missing
// binary is a failure.
func requireChaos(t *testing.T) {
	t.Helper()
	if os.Getenv(envChaos) != "1" {
		t.Skipf("multi-process chaos test against a real MinIO: set %s=1 to run it (scripts/test.sh does)", envChaos)
	}
	if err := ensureSidecar(); err != nil {
		t.Fatalf("%s=1 but the sidecar binary could not be built: %v", envChaos, err)
	}
	if os.Getenv(storetest.EnvTestMinIO) == "off" {
		t.Fatalf("%s=1 needs a real MinIO, but %s=off", envChaos, storetest.EnvTestMinIO)
	}
	touchSources()
}

// report collects the figures the test prints at the end.
var report = &reportBook{}

type reportBook struct {
	mu    sync.Mutex
	rows  [][]string
	lines []string
}

func (r *reportBook) addRow(row []string) {
	r.mu.Lock()
	r.rows = append(r.rows, row)
	r.mu.Unlock()
}

func (r *reportBook) addf(t testing.TB, format string, args ...any) {
	if t != nil {
		t.Helper()
	}
	s := fmt.Sprintf(format, args...)
	if t != nil {
		t.Log(s)
	}
	r.mu.Lock()
	r.lines = append(r.lines, s)
	r.mu.Unlock()
}

// write prints the report to stdout and to the report file.
func (r *reportBook) write() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.rows) == 0 && len(r.lines) == 0 {
		return
	}
	var b strings.Builder
	b.WriteString("==================== mmsidecar chaos report ====================\n")
	if len(r.rows) > 0 {
		b.WriteString(formatTable(tableHeader, r.rows))
		b.WriteString("\n")
	}
	for _, l := range r.lines {
		b.WriteString(l + "\n")
	}
	b.WriteString("================================================================\n")
	fmt.Print(b.String())
	path := os.Getenv(envReport)
	if path == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return
		}
		path = filepath.Join(home, ".cache", "mmsidecar", "chaos-report.txt")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err == nil {
			fmt.Printf("chaos report written to %s\n", path)
		}
	}
}
