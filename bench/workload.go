package main

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
)

// ledger records when each queue file was created (renamed into place)
// and finished (unlinked), by file name "<base>.pck".
type ledger struct {
	mu       sync.Mutex
	created  map[string]time.Time
	finished map[string]time.Time
	order    []string // creation order
}

func newLedger() *ledger {
	return &ledger{created: make(map[string]time.Time), finished: make(map[string]time.Time)}
}

func (l *ledger) create(name string, t time.Time) {
	l.mu.Lock()
	l.created[name] = t
	l.order = append(l.order, name)
	l.mu.Unlock()
}

func (l *ledger) finish(name string, t time.Time) {
	l.mu.Lock()
	l.finished[name] = t
	l.mu.Unlock()
}

// counts returns how many files were created and finished.
func (l *ledger) counts() (created, finished int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.created), len(l.finished)
}

// span is the time from the first to the last creation.
func (l *ledger) span() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.order) < 2 {
		return 0
	}
	return l.created[l.order[len(l.order)-1]].Sub(l.created[l.order[0]])
}

// hooks let a baseline act on files as a mirror would (bare PUT/DELETE).
type hooks struct {
	created  func(path, name string)
	finished func(name string)
}

// producer enqueues entries into dir the way Mailman does (temp file,
// fsync, rename) on a fixed schedule: entry i is due at start + i/rate.
// Several writers share the schedule so that an fsync does not delay the
// next entry; lateness is reported.
type producer struct {
	dir     string
	rate    float64
	size    int
	writers int
	led     *ledger
	hooks   hooks
	// after, if set, gets every created file name (the finisher).
	after func(name string, at time.Time)
	late  atomic.Int64 // entries written more than 10 ms after their due time
}

// run writes entries until d has passed or ctx ends; it returns how many.
func (p *producer) run(ctx context.Context, d time.Duration) (int, error) {
	var next, written atomic.Int64
	start := time.Now()
	total := int64(p.rate * d.Seconds())
	var wg sync.WaitGroup
	errs := make(chan error, p.writers)
	for range max(p.writers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= total || ctx.Err() != nil {
					return
				}
				due := start.Add(time.Duration(float64(i) / p.rate * float64(time.Second)))
				if w := time.Until(due); w > 0 {
					select {
					case <-time.After(w):
					case <-ctx.Done():
						return
					}
				} else if w < -10*time.Millisecond {
					p.late.Add(1)
				}
				body := runnertest.Body("e"+strconv.FormatInt(i, 10), p.size)
				base := runnertest.NewBase(time.Now(), body)
				if err := runnertest.WriteEntry(p.dir, base, body, nil); err != nil {
					errs <- err
					return
				}
				now := time.Now()
				name := base + ".pck"
				p.led.create(name, now)
				written.Add(1)
				if p.hooks.created != nil {
					p.hooks.created(filepath.Join(p.dir, name), name)
				}
				if p.after != nil {
					p.after(name, now)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return int(written.Load()), <-errs
}

// finisher dequeues each entry hold after its creation the way a Mailman
// runner finishes one: rename .pck to .bak, read it, unlink the .bak.
type finisher struct {
	dir   string
	hold  time.Duration
	led   *ledger
	hooks hooks

	mu    sync.Mutex
	queue []pending
	wake  chan struct{}
}

type pending struct {
	name string
	due  time.Time
}

func newFinisher(dir string, hold time.Duration, led *ledger, h hooks) *finisher {
	return &finisher{dir: dir, hold: hold, led: led, hooks: h, wake: make(chan struct{}, 1)}
}

// add schedules name for finishing.
func (f *finisher) add(name string, created time.Time) {
	f.mu.Lock()
	f.queue = append(f.queue, pending{name, created.Add(f.hold)})
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// run finishes entries as they fall due until ctx ends and nothing is
// left (drain says no more will be added).
func (f *finisher) run(ctx context.Context, drain <-chan struct{}) error {
	for {
		f.mu.Lock()
		// Writers append out of order by a few microseconds: finish in
		// due order.
		sort.Slice(f.queue, func(i, j int) bool { return f.queue[i].due.Before(f.queue[j].due) })
		var p *pending
		if len(f.queue) > 0 {
			p = &f.queue[0]
		}
		f.mu.Unlock()
		if p == nil {
			select {
			case <-f.wake:
				continue
			case <-drain:
				f.mu.Lock()
				empty := len(f.queue) == 0
				f.mu.Unlock()
				if empty {
					return nil
				}
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if w := time.Until(p.due); w > 0 {
			select {
			case <-time.After(w):
			case <-f.wake:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		name := p.name
		f.mu.Lock()
		f.queue = f.queue[1:]
		f.mu.Unlock()
		if err := f.finishOne(name); err != nil {
			return err
		}
	}
}

func (f *finisher) finishOne(name string) error {
	pck := filepath.Join(f.dir, name)
	bak := pck[:len(pck)-len(".pck")] + ".bak"
	if err := os.Rename(pck, bak); err != nil {
		return fmt.Errorf("dequeue %s: %w", name, err)
	}
	if _, err := os.ReadFile(bak); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if err := os.Remove(bak); err != nil {
		return fmt.Errorf("finish %s: %w", name, err)
	}
	now := time.Now()
	f.led.finish(name, now)
	if f.hooks.finished != nil {
		f.hooks.finished(name)
	}
	return nil
}

// hopWorker runs one queue like Mailman's runner with `slices` instances:
// instance i takes the entries whose hash falls in slice i. Every poll it
// lists the directory and, oldest first, renames each .pck to .bak, reads
// it, writes a successor into next (none when next is ""), and unlinks
// the .bak.
type hopWorker struct {
	root, queue, next string
	slices            int
	poll              time.Duration
	led               *ledger
}

func (w *hopWorker) run(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make(chan error, w.slices)
	for s := range w.slices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if err := w.pass(s); err != nil {
					errs <- err
					return
				}
				select {
				case <-time.After(w.poll):
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// pass processes every .pck of slice s once.
func (w *hopWorker) pass(s int) error {
	dir := filepath.Join(w.root, w.queue)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	type item struct {
		base string
		t    float64
	}
	var items []item
	for _, de := range ents {
		base, ext, ok := fence.ParseFileName(de.Name())
		if !ok || ext != fence.ExtPck || sliceOf(base, w.slices) != s {
			continue
		}
		items = append(items, item{base, fence.BaseTime(base)})
	}
	sort.Slice(items, func(i, j int) bool { return items[i].t < items[j].t })
	for _, it := range items {
		if err := w.process(dir, it.base); err != nil {
			return err
		}
	}
	return nil
}

func (w *hopWorker) process(dir, base string) error {
	bak := filepath.Join(dir, base+".bak")
	if err := os.Rename(filepath.Join(dir, base+".pck"), bak); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	body, err := os.ReadFile(bak)
	if err != nil {
		return err
	}
	if w.next != "" {
		nb := runnertest.NewBase(time.Now(), body)
		if err := runnertest.WriteEntry(filepath.Join(w.root, w.next), nb, body, nil); err != nil {
			return err
		}
		w.led.create(nb+".pck", time.Now())
	}
	if err := os.Remove(bak); err != nil {
		return err
	}
	w.led.finish(base+".pck", time.Now())
	return nil
}

// sliceOf assigns a base to one of n slices.
func sliceOf(base string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(base))
	return int(h.Sum32() % uint32(n))
}

// lagStats compares the ledger with the proxy's records: upload lag
// (creation to PUT answered) and delete lag (unlink to delete answered),
// and how many of either never happened.
type lagStats struct {
	up, del               durations
	missingUp, missingDel int
	// skippedUp counts files finished before any copy was made (a
	// mirror need not copy what is gone); overdueUp those of them that
	// had lived longer than the bound given to computeLag.
	skippedUp, overdueUp int
}

func computeLag(led *ledger, rec *recorder) lagStats { return computeLagBound(led, rec, 0) }

// computeLagBound is computeLag that also counts overdue skips.
func computeLagBound(led *ledger, rec *recorder, bound time.Duration) lagStats {
	led.mu.Lock()
	defer led.mu.Unlock()
	var s lagStats
	for name, c := range led.created {
		if t, ok := rec.putAt(name); ok {
			s.up = append(s.up, max(t.Sub(c), 0))
			continue
		}
		f, done := led.finished[name]
		switch {
		case !done:
			s.missingUp++
		default:
			s.skippedUp++
			if bound > 0 && f.Sub(c) >= bound {
				s.overdueUp++
			}
		}
	}
	for name, f := range led.finished {
		if _, uploaded := rec.putAt(name); !uploaded {
			continue // never stored: nothing to delete
		}
		t, ok := rec.delAt(name)
		// mc mirrors Mailman's .bak as an object of its own: the entry is
		// gone from the store once that copy is too.
		bak := name[:len(name)-len(".pck")] + ".bak"
		if _, bakUp := rec.putAt(bak); bakUp {
			bt, bok := rec.delAt(bak)
			if !bok {
				ok = false
			} else if bt.After(t) {
				t = bt
			}
		}
		if ok {
			s.del = append(s.del, max(t.Sub(f), 0))
		} else {
			s.missingDel++
		}
	}
	return s
}

// upPct is the p-th percentile of the upload lag counting the files
// finished before any copy was made as infinitely late (they were not
// copied while they existed); censored says the percentile falls among
// them.
func (s lagStats) upPct(p float64) (d time.Duration, censored bool) {
	n := len(s.up) + s.skippedUp
	if n == 0 {
		return -1, false
	}
	k := int(math.Ceil(p/100*float64(n))) - 1
	if k >= len(s.up) {
		return -1, true
	}
	sorted := append(durations(nil), s.up...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	return sorted[max(k, 0)], false
}

// settled reports whether every created file has an upload and, with
// wantDel, every finished one that was uploaded has a delete.
func settled(led *ledger, rec *recorder, wantDel bool) bool {
	s := computeLag(led, rec)
	return s.missingUp == 0 && (!wantDel || s.missingDel == 0)
}

// waitSettled waits until settled or the timeout passes.
func waitSettled(ctx context.Context, led *ledger, rec *recorder, wantDel bool, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for !settled(led, rec, wantDel) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}
