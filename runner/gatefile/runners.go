package gatefile

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// RunnersDir is the directory, in the sidecar's state directory, holding
// one record per runner process that honours the gate.
const RunnersDir = "runners"

// RunnerInfo is the body of a runner record (docs/gate.md, "Runner
// records").
type RunnerInfo struct {
	V       int     `json:"v"`
	PID     int     `json:"pid"`
	Runner  string  `json:"runner"` // Mailman's runner spec, e.g. "in:0:1"
	Queue   string  `json:"queue"`
	Started float64 `json:"started"` // wall-clock seconds
	BootID  string  `json:"boot_id"`
	Plugin  string  `json:"plugin"` // the plugin's version
}

// Runner is one live runner found by ListRunners: its record's file name
// and body. Err is set, and Info partly empty, when the body does not
// decode; the runner still counts (its lock is held).
type Runner struct {
	Name string
	Info RunnerInfo
	Err  error
}

// ListRunners returns the runners that honour the gate: the records in dir
// (<state dir>/runners) whose flock is held by a live process. A record
// whose lock is free belongs to a process that is gone: it is removed,
// under that lock. Dot names (a runner's temp file before its rename) and
// names not ending in .json are ignored. A missing dir means no runners.
func ListRunners(dir string) ([]Runner, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list runner records: %w", err)
	}
	var live []Runner
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") || !e.Type().IsRegular() {
			continue
		}
		r, alive, err := checkRunner(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		if alive {
			r.Name = name
			live = append(live, r)
		}
	}
	return live, nil
}

// checkRunner tries the record's lock: held means alive (the body is
// read); free means dead, and the record is removed while locked.
func checkRunner(path string) (Runner, bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Runner{}, false, nil // removed meanwhile
	}
	if err != nil {
		return Runner{}, false, fmt.Errorf("open runner record: %w", err)
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		var r Runner
		data, rerr := io.ReadAll(io.LimitReader(f, MaxSize+1))
		if rerr == nil {
			r.Info, rerr = decodeRunnerInfo(data)
		}
		r.Err = rerr
		return r, true, nil
	}
	if err != nil {
		return Runner{}, false, fmt.Errorf("lock runner record: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return Runner{}, false, fmt.Errorf("remove dead runner record: %w", err)
	}
	return Runner{}, false, nil
}

func decodeRunnerInfo(data []byte) (RunnerInfo, error) {
	var info RunnerInfo
	if len(data) > MaxSize {
		return info, fmt.Errorf("runner record: more than %d bytes", MaxSize)
	}
	if err := json.Unmarshal(data, &info); err != nil {
		return info, fmt.Errorf("runner record: %w", err)
	}
	if info.V != Version {
		return info, fmt.Errorf("runner record: version %d, want %d", info.V, Version)
	}
	return info, nil
}

// RunnerRecord is a runner record this process holds (RegisterRunner).
// Close releases its lock; the next ListRunners removes it.
type RunnerRecord struct {
	f    *os.File
	name string
}

// Name is the record's file name in the runners directory.
func (r *RunnerRecord) Name() string { return r.name }

// Close releases the record's lock: the runner no longer counts.
func (r *RunnerRecord) Close() error { return r.f.Close() }

// RegisterRunner makes this process a runner that honours the gate, the
// way the Mailman plugin does (a Go worker of the chaos suite, and tests):
// it writes info under a fresh name into dir (created 0770 if missing)
// with the exclusive flock taken before the rename, and keeps the file
// open. info.V is set to Version.
func RegisterRunner(dir string, info RunnerInfo) (*RunnerRecord, error) {
	info.V = Version
	body, err := json.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("register runner: %w", err)
	}
	if err := os.MkdirAll(dir, 0o770); err != nil {
		return nil, fmt.Errorf("register runner: %w", err)
	}
	host, _ := os.Hostname()
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("register runner: %w", err)
	}
	name := safeName(host) + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(rnd[:]) + ".json"
	tmp := filepath.Join(dir, "."+name+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o660)
	if err != nil {
		return nil, fmt.Errorf("register runner: %w", err)
	}
	fail := func(err error) (*RunnerRecord, error) {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("register runner: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fail(err)
	}
	if _, err := f.Write(body); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fail(err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the record counts once it exists; durability is a bonus
		d.Close()
	}
	return &RunnerRecord{f: f, name: name}, nil
}

// safeName keeps [A-Za-z0-9._-] of s (a host name) and replaces the rest.
func safeName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	if len(b) == 0 || b[0] == '.' {
		return "host" + string(b)
	}
	return string(b)
}
