package fencesim

import (
	"flag"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	flagSeed       = flag.Int64("seed", -1, "replay this one seed and print its report")
	flagSeeds      = flag.Int("seeds", 5000, "how many seeds TestSim runs")
	flagFirst      = flag.Uint64("first", 1, "first seed of the budget")
	flagSoak       = flag.Duration("soak", 0, "run seeds until this much time has passed (overrides -seeds)")
	flagTrace      = flag.Int("trace", 50, "trace events printed with a violation")
	flagBeyond     = flag.Float64("beyond", 0, "share of seeds with a fault beyond the timing model (0: default 0.2, <0: none)")
	flagDump       = flag.String("dump", "", "with -seed: write the whole trace to this file")
	flagNoRecovery = flag.Bool("norecovery", false, "no Mailman .bak recovery when a whole node restarts on its disk")
)

func options() Options {
	return Options{Beyond: *flagBeyond, NoRecovery: *flagNoRecovery, Trace: *flagTrace}
}

// summary aggregates many runs.
type summary struct {
	mu        sync.Mutex
	seeds     int
	beyond    int
	beyondG2  int
	beyondDup int
	crossNode int
	reruns    int
	fences    int
	lost      int
	lostYoung int
	drains    int
	entries   int
	g5Checked int
	g5Worst   float64
	events    int
	failures  []*Violation
}

func (s *summary) add(r Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := r.Stats
	s.seeds++
	s.events += st.Events
	s.entries += st.Entries
	s.fences += st.Fences
	s.lost += st.LostAnswers
	s.lostYoung += st.LostYoung
	s.drains += st.Drains
	s.g5Checked += st.G5Checked
	s.g5Worst = max(s.g5Worst, st.G5Worst)
	if st.Beyond {
		s.beyond++
		s.beyondG2 += st.BeyondG2
		s.beyondDup += st.CrossNode
	} else {
		s.crossNode += st.CrossNode
		s.reruns += st.Reruns
	}
	if r.Violation != nil {
		s.failures = append(s.failures, r.Violation)
	}
}

// runSeeds runs seeds from first on all cores until n are done or the
// deadline passes (n < 0: no count limit), stopping at the first
// violation.
func runSeeds(first uint64, n int, deadline time.Time, opt Options) *summary {
	s := &summary{}
	var next atomic.Uint64
	next.Store(first)
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				seed := next.Add(1) - 1
				if n >= 0 && seed >= first+uint64(n) || !deadline.IsZero() && time.Now().After(deadline) {
					return
				}
				r := Run(seed, opt)
				s.add(r)
				if r.Violation != nil {
					stop.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return s
}

// TestSim runs the seed budget (or one seed with -seed, or a soak with
// -soak) and fails on the first violated guarantee, printing its seed and
// trace.
func TestSim(t *testing.T) {
	opt := options()
	if *flagSeed >= 0 {
		if *flagDump != "" {
			f, err := os.Create(*flagDump)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			opt.Dump = f
		}
		r := Run(uint64(*flagSeed), opt)
		t.Logf("seed %d: %d events, %d entries (%d finished), %d fences, %d lost answers, beyond model %v (G2 there: %d entries), cross-node runs %d, digest %016x",
			r.Seed, r.Stats.Events, r.Stats.Entries, r.Stats.Finished, r.Stats.Fences, r.Stats.LostAnswers, r.Stats.Beyond, r.Stats.BeyondG2, r.Stats.CrossNode, r.Stats.Digest)
		if r.Violation != nil {
			t.Fatal(r.Violation.Report)
		}
		return
	}
	var deadline time.Time
	n := *flagSeeds
	if *flagSoak > 0 {
		deadline = time.Now().Add(*flagSoak)
		n = -1
	}
	start := time.Now()
	s := runSeeds(*flagFirst, n, deadline, opt)
	el := time.Since(start)
	t.Logf("%d seeds in %v: %.1f seeds/s on %d cores; %d events, %d entries, %d fences, %d lost answers, %d young entries lost with a disk, %d drains",
		s.seeds, el.Round(time.Millisecond), float64(s.seeds)/el.Seconds(), runtime.GOMAXPROCS(0), s.events, s.entries, s.fences, s.lost, s.lostYoung, s.drains)
	t.Logf("within the model: %d entries dequeued on two nodes, %d dequeued twice (in flight at a fence or crash); G5 failovers timed: %d, slowest at %.0f%% of its bound",
		s.crossNode, s.reruns, s.g5Checked, 100*s.g5Worst)
	t.Logf("beyond the model: %d seeds, %d entries visible as .pck on two nodes, %d entries processed on two nodes", s.beyond, s.beyondG2, s.beyondDup)
	for _, v := range s.failures {
		t.Error(v.Report)
	}
}

// TestSimDeterministic replays seeds and compares their trace digests.
func TestSimDeterministic(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 42, 1234} {
		a, b := Run(seed, options()), Run(seed, options())
		if a.Stats.Digest != b.Stats.Digest || a.Stats.Events != b.Stats.Events {
			t.Errorf("seed %d: two runs differ: digest %x/%x, events %d/%d", seed, a.Stats.Digest, b.Stats.Digest, a.Stats.Events, b.Stats.Events)
		}
	}
}
