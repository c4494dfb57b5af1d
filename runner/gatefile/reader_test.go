package gatefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var errNotExist = fmt.Errorf("stat gate record: %w", fs.ErrNotExist)

// writeRecord replaces path with rec the way the sidecar does: temp file,
// rename.
func writeRecord(t *testing.T, path string, rec Record) {
	t.Helper()
	data, err := Encode(rec)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(path), ".gate.json.tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestReaderCachesByStat(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	r := NewReader(path)

	if _, err := r.Read(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("no file: err = %v, want ErrNotExist", err)
	}

	rec := liveRecord()
	writeRecord(t, path, rec)
	first, err := r.Read()
	if err != nil || first.Epoch != 3 {
		t.Fatalf("Read = %+v, %v", first, err)
	}
	again, err := r.Read()
	if err != nil || again != first {
		t.Fatalf("unchanged file decoded again (%p, then %p, %v)", first, again, err)
	}

	held := inodeOf(t, r.f.Name(), r.f)
	rec.Epoch = 4 // same size: only the inode and times tell
	writeRecord(t, path, rec)
	// The replaced version stays open, so its inode cannot come back as
	// the next version's.
	if st, err := os.Stat(path); err != nil || inodeOf(t, path, nil) == held || inodeOf(t, "", r.f) != held {
		t.Fatalf("the reader does not hold the replaced version's inode %d (%v, %v)", held, st, err)
	}
	second, err := r.Read()
	if err != nil || second == first || second.Epoch != 4 {
		t.Fatalf("replaced file: Read = %+v, %v", second, err)
	}

	if err := os.WriteFile(path, []byte(`{"v":1`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("torn file: err = %v, want ErrMalformed", err)
	}
	if _, err := r.Read(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("torn file, cached: err = %v, want ErrMalformed", err)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("removed file: err = %v, want ErrNotExist", err)
	}
}

// inodeOf returns the inode of f when it is given, else of path.
func inodeOf(t *testing.T, path string, f *os.File) uint64 {
	t.Helper()
	var fi os.FileInfo
	var err error
	if f != nil {
		fi, err = f.Stat()
	} else {
		fi, err = os.Stat(path)
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestReaderUnreadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if err := os.Mkdir(path, 0o755); err != nil { // a directory cannot be read as a file
		t.Fatal(err)
	}
	rec, err := NewReader(path).Read()
	if ok, reason := Admit(rec, err, "in", "1.5+0a1b2c3d4e5f60718293a4b5c6d7e8f901234567", 1, testBoot); ok || reason != ReasonUnreadable {
		t.Fatalf("Admit = %v %q (err %v), want false %q", ok, reason, err, ReasonUnreadable)
	}
}

func TestReaderLargeFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	data, err := Encode(liveRecord())
	if err != nil {
		t.Fatal(err)
	}
	big := append(data, []byte(strings.Repeat(" ", 10*MaxSize))...)
	if err := os.WriteFile(path, big, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewReader(path).Read(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a 640 KiB file: err = %v, want ErrMalformed", err)
	}
}

func TestReadBootID(t *testing.T) {
	id, err := ReadBootID()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`).MatchString(id) {
		t.Fatalf("boot id %q is not a trimmed UUID", id)
	}
	again, err := ReadBootID()
	if err != nil || again != id {
		t.Fatalf("boot id changed: %q, then %q (%v)", id, again, err)
	}
}

// TestBootTime compares CLOCK_BOOTTIME with /proc/uptime, which the kernel
// derives from the same clock, and checks that it advances.
func TestBootTime(t *testing.T) {
	before, err := BootTime()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	up, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	after, err := BootTime()
	if err != nil {
		t.Fatal(err)
	}
	if up < before.Seconds()-0.02 || up > after.Seconds()+0.02 {
		t.Fatalf("/proc/uptime %.2f s is outside CLOCK_BOOTTIME %.3f..%.3f s", up, before.Seconds(), after.Seconds())
	}
	if after < before {
		t.Fatalf("CLOCK_BOOTTIME went back: %v, then %v", before, after)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		later, err := BootTime()
		if err != nil {
			t.Fatal(err)
		}
		if later > after {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("CLOCK_BOOTTIME stayed at %v for 5 s", after)
		}
	}
}

func TestChecker(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	c := NewChecker(path)
	id, err := ReadBootID()
	if err != nil || c.bootID != id {
		t.Fatalf("boot id %q, want %q (%v)", c.bootID, id, err)
	}
	base := "1764330010.75+0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
	if ok, reason := c.Check("in", base); ok || reason != ReasonNoGate {
		t.Fatalf("no record: %v %q", ok, reason)
	}
	now, err := BootTime()
	if err != nil {
		t.Fatal(err)
	}
	rec := liveRecord()
	rec.BootID, rec.Deadline = id, (now + time.Minute).Seconds()
	writeRecord(t, path, rec)
	if ok, reason := c.Check("in", base); !ok || reason != ReasonOpen {
		t.Fatalf("open record: %v %q", ok, reason)
	}
	rec.Deadline = (now - time.Second).Seconds()
	writeRecord(t, path, rec)
	if ok, reason := c.Check("in", base); !ok || reason != ReasonExpiredAfter {
		t.Fatalf("expired record, entry after the cutoff: %v %q", ok, reason)
	}
	c.clock = func() (time.Duration, error) { return 0, errors.New("no clock") }
	if ok, reason := c.Check("in", base); ok || reason != ReasonCheckFailed {
		t.Fatalf("no clock: %v %q", ok, reason)
	}
}
