package runner

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/gatefile"
)

// DefaultGateSlew is the slew a gate record allows for wall-clock steps.
const DefaultGateSlew = time.Second

// GateConfig says where and how the runner gate is published.
type GateConfig struct {
	// StateDir is the sidecar's state directory: the record is
	// StateDir/gate.json, the runners' records StateDir/runners.
	StateDir string
	// Node is the node id written into the record.
	Node string
	// Clock is the coordinator's clock: the times of a fence.RunnerGate
	// are on it.
	Clock fence.Clock
	// Wall reads the wall clock (nil: time.Now).
	Wall func() time.Time
	// Boot reads CLOCK_BOOTTIME (nil: gatefile.BootTime).
	Boot func() (time.Duration, error)
	// BootID is the kernel's boot id ("": read from /proc).
	BootID string
	// Slew is added to the cutoffs for wall-clock steps (0: DefaultGateSlew).
	Slew time.Duration
}

// GateFile publishes the runner gate (docs/gate.md) in the state
// directory: it implements fence.GatePublisher. It keeps the record's
// cutoffs from one record to the next, starting from the record an
// earlier run left, and raises the cutoff to the birth of every entry
// the node restores before the entry becomes visible (Cover).
type GateFile struct {
	cfg  GateConfig
	fsys FS
	path string

	mu   sync.Mutex
	cur  fence.Cutoffs
	last fence.RunnerGate
	have bool
	// floor is the latest birth of an entry restored here, on the
	// coordinator's clock.
	floor       time.Time
	wasSettling bool
	denied      []fence.Entry // the earlier run's deny list
	rec         gatefile.Record
}

var (
	_ fence.GatePublisher = (*GateFile)(nil)
	_ fence.GateDenials   = (*GateFile)(nil)
)

// NewGateFile reads the record an earlier run of the node left, if any,
// and returns the publisher. It publishes nothing yet.
func NewGateFile(cfg GateConfig, fsys FS) (*GateFile, error) {
	if cfg.Wall == nil {
		cfg.Wall = time.Now
	}
	if cfg.Boot == nil {
		cfg.Boot = gatefile.BootTime
	}
	if cfg.Slew <= 0 {
		cfg.Slew = DefaultGateSlew
	}
	if cfg.BootID == "" {
		id, err := gatefile.ReadBootID()
		if err != nil {
			return nil, fmt.Errorf("runner gate: %w", err)
		}
		cfg.BootID = id
	}
	g := &GateFile{cfg: cfg, fsys: fsys, path: filepath.Join(cfg.StateDir, gatefile.FileName)}
	prev, err := g.read()
	if err != nil {
		return nil, err
	}
	if prev != nil && prev.Node == cfg.Node {
		if prev.Cutoff != nil {
			g.cur.Cutoff = g.fromWall(fromSeconds(*prev.Cutoff))
			g.floor = g.cur.Cutoff
		}
		// Settling after a death: the record admits only entries born
		// after since, or, closed meanwhile, still carries that since
		// below its cutoff.
		if prev.Admit == gatefile.AdmitNew && prev.Deadline > 0 || prev.Cutoff != nil && prev.Since < *prev.Cutoff {
			g.wasSettling = true
			g.cur.Since, g.cur.Settling = g.fromWall(fromSeconds(prev.Since)), true
		}
		for _, d := range prev.Deny {
			queue, base, ok := strings.Cut(d, "/")
			e := fence.Entry{Queue: queue, Base: base, Kind: fence.KindPck}
			if ok && fence.ValidName(queue) && fence.ValidBase(base) {
				g.denied = append(g.denied, e)
			}
		}
	}
	return g, nil
}

// Denied implements fence.GateDenials: the entries the earlier run's
// record denied, which stay denied until the node has tended them.
func (g *GateFile) Denied() []fence.Entry {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]fence.Entry(nil), g.denied...)
}

// Path is the gate record's file.
func (g *GateFile) Path() string { return g.path }

// RunnersDir is where runners that honour the gate keep their records.
func (g *GateFile) RunnersDir() string {
	return filepath.Join(g.cfg.StateDir, gatefile.RunnersDir)
}

// read returns the record in the state directory; nil when there is none
// or it is malformed (an earlier run's record that cannot be read counts
// as none: the new run starts closed from now).
func (g *GateFile) read() (*gatefile.Record, error) {
	f, err := g.fsys.Open(g.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read runner gate: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, gatefile.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read runner gate: %w", err)
	}
	rec, err := gatefile.Decode(data)
	if err != nil {
		return nil, nil
	}
	return rec, nil
}

// PublishGate implements fence.GatePublisher: temp file, fsync, rename,
// fsync of the directory.
func (g *GateFile) PublishGate(rg fence.RunnerGate) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.publishLocked(rg)
}

func (g *GateFile) publishLocked(rg fence.RunnerGate) error {
	boot, err := g.cfg.Boot()
	if err != nil {
		return fmt.Errorf("publish runner gate: %w", err)
	}
	now, wall := g.cfg.Clock.Now(), g.cfg.Wall()
	next := g.cur.Next(rg, now, g.floor)
	toWall := func(t time.Time) float64 { return seconds(wall.Add(t.Sub(now))) }
	cutoff := toWall(next.Cutoff)
	rec := gatefile.Record{
		Node: g.cfg.Node, Epoch: int64(rg.Epoch), BootID: g.cfg.BootID,
		Admit: gatefile.Mode(rg.Admit), Since: cutoff, Cutoff: &cutoff,
		Slew: g.cfg.Slew.Seconds(), Reason: rg.Reason, Written: seconds(wall),
	}
	if !rg.Until.IsZero() {
		rec.Deadline = (boot + rg.Until.Sub(now)).Seconds()
	}
	if next.Settling {
		rec.Since = toWall(next.Since)
	}
	for _, e := range rg.Deny {
		rec.Deny = append(rec.Deny, e.Queue+"/"+e.Base)
	}
	data, err := gatefile.Encode(rec)
	if err != nil {
		return fmt.Errorf("publish runner gate: %w", err)
	}
	if err := g.write(data); err != nil {
		return fmt.Errorf("publish runner gate: %w", err)
	}
	g.cur, g.last, g.have, g.rec = next, rg, true, rec
	return nil
}

// write replaces the record durably.
func (g *GateFile) write(data []byte) error {
	dir := g.cfg.StateDir
	tmp := "." + gatefile.FileName + ".tmp"
	_ = g.fsys.Remove(filepath.Join(dir, tmp)) // left by a crash
	if err := g.fsys.WriteTemp(dir, tmp, data, -1, -1, 0o644); err != nil {
		return err
	}
	if err := g.fsys.Rename(filepath.Join(dir, tmp), g.path); err != nil {
		_ = g.fsys.Remove(filepath.Join(dir, tmp))
		return err
	}
	return g.fsys.SyncDir(dir)
}

// MarkDeath implements fence.GatePublisher.
func (g *GateFile) MarkDeath() {
	g.mu.Lock()
	g.cur = g.cur.Death()
	g.mu.Unlock()
}

// WasSettling implements fence.GatePublisher.
func (g *GateFile) WasSettling() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.wasSettling
}

// Cover makes sure the published cutoff is at or after born, the birth of
// an entry about to be restored here: a peer's wall clock may be ahead,
// and an entry born after the cutoff must stay unknown to every peer. It
// publishes the last gate again with the higher cutoff when needed.
func (g *GateFile) Cover(born time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	t := g.fromWall(born)
	if t.After(g.floor) {
		g.floor = t
	}
	// Against what is published: a republish that failed must be tried
	// again by the next Cover, not pass for done.
	if !g.have || !t.After(g.cur.Cutoff) {
		return nil
	}
	return g.publishLocked(g.last)
}

// HoldBefore is the wall-clock birth up to which the settling rule keeps
// entries from the runners (slew included); ok is false when it is not in
// force.
func (g *GateFile) HoldBefore() (time.Time, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cur.Since.IsZero() {
		return time.Time{}, false
	}
	return g.cfg.Wall().Add(g.cur.Since.Sub(g.cfg.Clock.Now())).Add(g.cfg.Slew), true
}

// Last returns the last record published; ok is false before the first.
func (g *GateFile) Last() (gatefile.Record, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rec, g.have
}

// fromWall maps a wall-clock time to the coordinator's clock.
func (g *GateFile) fromWall(w time.Time) time.Time {
	return g.cfg.Clock.Now().Add(w.Sub(g.cfg.Wall()))
}

func seconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func fromSeconds(s float64) time.Time {
	sec := int64(s)
	return time.Unix(sec, int64((s-float64(sec))*1e9))
}
