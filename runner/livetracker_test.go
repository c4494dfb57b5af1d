package runner_test

import (
	"fmt"
	"sync"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// liveEntry is one entry file and when it existed.
type liveEntry struct {
	key              string
	created, removed time.Time // removed: zero while live
}

// downtime is a window in which the mirror process was not running.
type downtime struct{ from, to time.Time } // to: zero while down

// liveTracker knows when every entry file existed (from the producer and
// workers) and checks store samples against the lag bound.
type liveTracker struct {
	layout fence.Layout
	node   string
	bound  time.Duration

	mu         sync.Mutex
	entries    map[string]*liveEntry
	live       []*liveEntry
	downs      []downtime
	samples    int
	checked    int
	violations int
	worst      time.Duration
	examples   []string
}

func (lt *liveTracker) key(queue, base, ext string) string {
	kind := fence.KindPck
	if ext == "psv" {
		kind = fence.KindPsv
	}
	return lt.layout.MirrorKey(lt.node, 1, fence.Entry{Queue: queue, Base: base, Kind: kind})
}

// created records that an entry file exists (called after its rename).
func (lt *liveTracker) created(queue, base, ext string, at time.Time) {
	e := &liveEntry{key: lt.key(queue, base, ext), created: at}
	lt.mu.Lock()
	lt.entries[e.key] = e
	lt.live = append(lt.live, e)
	lt.mu.Unlock()
}

// removing records that an entry file is about to go (called before).
func (lt *liveTracker) removing(queue, base, ext string, at time.Time) {
	lt.mu.Lock()
	if e := lt.entries[lt.key(queue, base, ext)]; e != nil {
		e.removed = at
	}
	lt.mu.Unlock()
}

func (lt *liveTracker) down(at time.Time) {
	lt.mu.Lock()
	lt.downs = append(lt.downs, downtime{from: at})
	lt.mu.Unlock()
}

func (lt *liveTracker) up(at time.Time) {
	lt.mu.Lock()
	if n := len(lt.downs); n > 0 && lt.downs[n-1].to.IsZero() {
		lt.downs[n-1].to = at
	}
	lt.mu.Unlock()
}

// deadlineLocked is when e must be in the store: bound after it appeared,
// or bound after the mirror was ready again if it was down in between.
// false while such a downtime is still going on.
func (lt *liveTracker) deadlineLocked(e *liveEntry) (time.Time, bool) {
	d := e.created.Add(lt.bound)
	for _, w := range lt.downs {
		if !w.from.Before(d) || !w.to.IsZero() && !w.to.After(e.created) {
			continue
		}
		if w.to.IsZero() {
			return time.Time{}, false
		}
		d = w.to.Add(lt.bound)
	}
	return d, true
}

// check verifies a listing taken between ts and te: every entry that was
// live throughout and past its deadline at ts must be in it.
func (lt *liveTracker) check(ts, te time.Time, keys map[string]bool) {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	lt.samples++
	kept := lt.live[:0]
	for _, e := range lt.live {
		if !e.removed.IsZero() && e.removed.Before(ts) {
			continue // gone before this sample: never checked again
		}
		kept = append(kept, e)
		if !e.removed.IsZero() && !e.removed.After(te) {
			continue
		}
		d, ok := lt.deadlineLocked(e)
		if !ok || d.After(ts) {
			continue
		}
		lt.checked++
		if keys[e.key] {
			continue
		}
		lt.violations++
		age := te.Sub(e.created)
		lt.worst = max(lt.worst, age)
		if len(lt.examples) < 5 {
			lt.examples = append(lt.examples, fmt.Sprintf("%s missing %.2fs after it appeared", e.key, age.Seconds()))
		}
	}
	for i := len(kept); i < len(lt.live); i++ {
		lt.live[i] = nil
	}
	lt.live = kept
}
