package runner

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
)

func TestMirrorFollowsEntryThroughHops(t *testing.T) {
	h := newHarness(t)
	x := h.enqueue("in", "m1")
	h.waitKeys(h.key(1, x))

	// A runner dequeues it: the copy stays while it is in flight.
	if err := os.Rename(h.path(x, "pck"), h.path(x, "bak")); err != nil {
		t.Fatal(err)
	}
	// It writes the successor, then unlinks the .bak.
	y := h.enqueue("pipeline", "m1")
	if err := os.Remove(h.path(x, "bak")); err != nil {
		t.Fatal(err)
	}
	h.waitKeys(h.key(1, y))

	// Preserved: .bak renamed into bad as .psv.
	if err := os.Rename(h.path(y, "pck"), h.path(y, "bak")); err != nil {
		t.Fatal(err)
	}
	p := fence.Entry{Queue: "bad", Base: y.Base, Kind: fence.KindPsv}
	if err := os.Rename(h.path(y, "bak"), h.path(p, "psv")); err != nil {
		t.Fatal(err)
	}
	h.waitKeys(h.key(1, p))
	if got := h.object(h.key(1, p)); runnertest.BodyID([]byte(got)) != "m1" {
		t.Errorf("psv copy holds %q", got)
	}
	waitFor(t, "uploads and deletes counted", func() bool {
		return testutil.ToFloat64(h.met.Uploads) == 3 && testutil.ToFloat64(h.met.Deletes) == 2
	}, func() string {
		return fmt.Sprintf("uploads %v deletes %v", testutil.ToFloat64(h.met.Uploads), testutil.ToFloat64(h.met.Deletes))
	})
	if n := testutil.CollectAndCount(h.met.Lag); n != 1 {
		t.Errorf("lag histogram series = %d", n)
	}
	s := h.m.Stats()
	if !s.Ready || s.Queues["bad"].Psv != 1 || s.Queues["in"].Pck != 0 || s.Queues["bad"].LastMirror.IsZero() {
		t.Errorf("stats: %+v", s)
	}
	if got := testutil.ToFloat64(h.met.Entries.WithLabelValues("bad")); got != 1 {
		t.Errorf("entries{queue=bad} = %v", got)
	}
}

func TestRecoveredEntryIsUploadedAgain(t *testing.T) {
	h := newHarness(t)
	x := h.enqueue("out", "r1")
	h.waitKeys(h.key(1, x))
	// Mailman's recovery: .pck -> .bak, rewrite in place, rename back.
	if err := os.Rename(h.path(x, "pck"), h.path(x, "bak")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "in flight seen", func() bool { return h.m.Counts().Bak == 1 })
	f, err := os.OpenFile(h.path(x, "bak"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("_bak_count: 1\n")
	f.Sync()
	f.Close()
	if err := os.Rename(h.path(x, "bak"), h.path(x, "pck")); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(h.path(x, "pck"))
	waitFor(t, "rewritten copy", func() bool { return h.object(h.key(1, x)) == string(want) })
	// A plain rename (no rewrite) is not uploaded again.
	before := testutil.ToFloat64(h.met.Uploads)
	os.Rename(h.path(x, "pck"), h.path(x, "bak"))
	waitFor(t, "in flight seen", func() bool { return h.m.Counts().Bak == 1 })
	os.Rename(h.path(x, "bak"), h.path(x, "pck"))
	waitFor(t, "back seen", func() bool { return h.m.Counts().Pck == 1 })
	marker := h.enqueue("out", "marker")
	h.waitKeys(h.key(1, x), h.key(1, marker))
	if got := testutil.ToFloat64(h.met.Uploads); got != before+1 {
		t.Errorf("uploads = %v, want %v (marker only)", got, before+1)
	}
}

// TestOddFiles covers names and files the mirror must leave alone or
// survive; a valid entry written after each must still be mirrored.
func TestOddFiles(t *testing.T) {
	validBase := "1764330000.5+" + fmt.Sprintf("%040x", 7)
	tests := []struct {
		name   string
		make   func(t *testing.T, dir string)
		reason string
		// mirrored is the base mirrored besides the control entry.
		mirrored string
	}{
		{"bad name", func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "notes.pck"), "x") }, reasonBadName, ""},
		{"short hex", func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "1764330000.5+abc.pck"), "x") }, reasonBadName, ""},
		{"upper hex", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "1764330000.5+"+fmt.Sprintf("%040X", 0xabc)+".pck"), "x")
		}, reasonBadName, ""},
		{"non-utf8", func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "\xff\xfe+0.pck"), "x") }, reasonBadName, ""},
		{"other extension", func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, validBase+".db"), "x") }, reasonBadName, ""},
		{"directory", func(t *testing.T, dir string) { os.Mkdir(filepath.Join(dir, validBase+".pck"), 0o700) }, reasonNotRegular, ""},
		{"symlink", func(t *testing.T, dir string) {
			target := filepath.Join(t.TempDir(), "secret")
			writeFile(t, target, "secret")
			os.Symlink(target, filepath.Join(dir, validBase+".pck"))
		}, reasonNotRegular, ""},
		{"fifo", func(t *testing.T, dir string) {
			if err := syscall.Mkfifo(filepath.Join(dir, validBase+".pck"), 0o600); err != nil {
				t.Skip("mkfifo:", err)
			}
		}, reasonNotRegular, ""},
		{"zero bytes", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, validBase+".pck.tmp"), "")
			os.Rename(filepath.Join(dir, validBase+".pck.tmp"), filepath.Join(dir, validBase+".pck"))
		}, reasonEmpty, validBase},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			tt.make(t, filepath.Join(h.qdir, "in"))
			ctl := h.enqueue("in", "control")
			want := []string{h.key(1, ctl)}
			if tt.mirrored != "" {
				want = append(want, h.key(1, fence.Entry{Queue: "in", Base: tt.mirrored, Kind: fence.KindPck}))
			}
			h.waitKeys(want...)
			waitFor(t, "ignored file counted", func() bool {
				return testutil.ToFloat64(h.met.Ignored.WithLabelValues(tt.reason)) == 1
			})
			// A rescan sees it again: still counted (and logged) once.
			h.watcher.injectOverflow()
			waitFor(t, "rescan", func() bool { return testutil.ToFloat64(h.met.Rescans.WithLabelValues("overflow")) == 1 })
			ctl2 := h.enqueue("in", "control2")
			h.waitKeys(append(want, h.key(1, ctl2))...)
			if got := testutil.ToFloat64(h.met.Ignored.WithLabelValues(tt.reason)); got != 1 {
				t.Errorf("ignored{%s} = %v after rescan, want 1", tt.reason, got)
			}
		})
	}
}

func TestTempFilesAreNotMirrored(t *testing.T) {
	h := newHarness(t)
	dir := filepath.Join(h.qdir, "in")
	writeFile(t, filepath.Join(dir, "1764330000.5+"+fmt.Sprintf("%040x", 1)+".pck.tmp"), "half")
	ctl := h.enqueue("in", "control")
	h.waitKeys(h.key(1, ctl))
	if got := testutil.ToFloat64(h.met.Ignored.WithLabelValues(reasonTmp)); got != 0 {
		t.Errorf("a temp file seen only through events was counted: %v", got)
	}
	h.watcher.injectOverflow()
	waitFor(t, "lingering temp file counted at rescan", func() bool {
		return testutil.ToFloat64(h.met.Ignored.WithLabelValues(reasonTmp)) == 1
	})
}

func TestUnreadableFileDoesNotStallOthers(t *testing.T) {
	var locked atomic.Value
	locked.Store("")
	h := newHarness(t, withFS(func(f FS) FS {
		return &hookFS{FS: f, openErr: func(path string) error {
			if b := locked.Load().(string); b != "" && filepath.Base(path) == b+".pck" {
				return &os.PathError{Op: "open", Path: path, Err: syscall.EACCES}
			}
			return nil
		}}
	}), withConfig(func(c *Config) { c.RescanInterval = 50 * time.Millisecond }))
	body := runnertest.Body("u", 16)
	u := runnertest.NewBase(time.Now(), body)
	locked.Store(u)
	if err := runnertest.WriteEntry(filepath.Join(h.qdir, "in"), u, body, nil); err != nil {
		t.Fatal(err)
	}
	ue := fence.Entry{Queue: "in", Base: u, Kind: fence.KindPck}
	// A hop whose predecessor is finished: its delete is not held up.
	x := h.enqueue("in", "x")
	h.waitKeys(h.key(1, x))
	y := h.enqueue("out", "x")
	os.Remove(h.path(x, "pck"))
	h.waitKeys(h.key(1, y))
	if got := testutil.ToFloat64(h.met.Ignored.WithLabelValues(reasonUnreadable)); got != 1 {
		t.Errorf("ignored{unreadable} = %v", got)
	}
	// Readable again: the next rescan mirrors it.
	locked.Store("")
	h.waitKeys(h.key(1, y), h.key(1, ue))
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o660); err != nil {
		t.Fatal(err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	root := t.TempDir()
	qdir := filepath.Join(root, "queue")
	os.MkdirAll(filepath.Join(qdir, "in"), 0o770)
	good := Config{Node: "n1", QueueDir: qdir, StateDir: filepath.Join(root, "state"), Layout: testLayout}
	otherFS := ""
	if shm, err := os.MkdirTemp("/dev/shm", "mmsidecar-test-"); err == nil {
		defer os.RemoveAll(shm)
		a, _ := OSFS{}.Lstat(shm)
		b, _ := OSFS{}.Lstat(qdir)
		if a.Dev != b.Dev {
			otherFS = shm
		}
	}
	tests := []struct {
		name   string
		change func(c *Config)
		want   string
	}{
		{"node id", func(c *Config) { c.Node = "../x" }, "invalid node id"},
		{"queue name", func(c *Config) { c.Queues = []string{"in", "a/b"} }, "invalid queue name"},
		{"no queue dir", func(c *Config) { c.QueueDir = "" }, "required"},
		{"missing queue dir", func(c *Config) { c.QueueDir = filepath.Join(root, "nope") }, "queue"},
		{"state on another filesystem", func(c *Config) {
			if otherFS == "" {
				t.Skip("no second filesystem")
			}
			c.StateDir = otherFS
		}, "not on the filesystem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.change(&cfg)
			w, err := newTestWatcher()
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			cfg.Watcher = w
			_, err = New(cfg, nil, OSFS{}, fence.SystemClock{}, func() fence.Gate { return fence.Gate{} }, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestNewQueueDirectoryIsWatched(t *testing.T) {
	h := newHarness(t)
	dir := filepath.Join(h.qdir, "digest")
	if err := os.Mkdir(dir, 0o770); err != nil {
		t.Fatal(err)
	}
	x := h.enqueue("digest", "d1") // may land before the watch: the rescan finds it
	h.waitKeys(h.key(1, x))
	y := h.enqueue("digest", "d2")
	h.waitKeys(h.key(1, x), h.key(1, y))
	// Directories starting with "." (like a state dir) are not queues.
	os.Mkdir(filepath.Join(h.qdir, ".hidden"), 0o770)
	base := runnertest.NewBase(time.Now(), nil)
	runnertest.WriteEntry(filepath.Join(h.qdir, ".hidden"), base, []byte("x"), nil)
	z := h.enqueue("digest", "d3")
	h.waitKeys(h.key(1, x), h.key(1, y), h.key(1, z))
}
