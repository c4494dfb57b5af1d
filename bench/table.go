package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"sync"
	"time"
)

// row is one line of the result table. Empty cells print as "–".
type row struct {
	// Store is the store the row was measured on (the -stores name);
	// the table fills it in.
	Store    string
	Workload string
	Figure   string
	Sidecar  string // mmsidecar's figure
	Limit    string // the physical limit (bare minio-go on the same MinIO)
	MC       string // mc mirror --watch
	VsLimit  string // mmsidecar / limit
	VsMC     string // mmsidecar / mc
	Target   string
	Met      string // "yes", "NO (why)", or empty when not a target
	Load     float64
}

// table collects rows as workloads finish; safe for concurrent use.
type table struct {
	mu    sync.Mutex
	rows  []row
	store string // the Store of rows added from now on
}

// setStore names the store of the rows added from now on.
func (t *table) setStore(name string) {
	t.mu.Lock()
	t.store = name
	t.mu.Unlock()
}

func (t *table) add(r row) {
	if r.Load == 0 {
		r.Load = loadAvg()
	}
	t.mu.Lock()
	if r.Store == "" {
		r.Store = t.store
	}
	t.rows = append(t.rows, r)
	t.mu.Unlock()
}

// all returns the rows so far.
func (t *table) all() []row {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]row(nil), t.rows...)
}

// print writes the table as Markdown.
func (t *table) print(w io.Writer) {
	head := []string{"store", "workload", "figure", "mmsidecar", "limit (bare PUT)", "mc mirror", "sidecar/limit", "sidecar/mc", "target", "met", "load1"}
	lines := [][]string{head}
	for _, r := range t.all() {
		lines = append(lines, []string{r.Store, r.Workload, r.Figure, r.Sidecar, r.Limit, r.MC, r.VsLimit, r.VsMC, r.Target, r.Met, fmt.Sprintf("%.1f", r.Load)})
	}
	width := make([]int, len(head))
	for _, l := range lines {
		for i, c := range l {
			if c == "" {
				l[i] = "–"
			}
			width[i] = max(width[i], len([]rune(l[i])))
		}
	}
	for n, l := range lines {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range l {
			b.WriteString(" " + c + strings.Repeat(" ", width[i]-len([]rune(c))) + " |")
		}
		fmt.Fprintln(w, b.String())
		if n == 0 {
			b.Reset()
			b.WriteString("|")
			for i := range l {
				b.WriteString(strings.Repeat("-", width[i]+2) + "|")
			}
			fmt.Fprintln(w, b.String())
		}
	}
}

// durations is a sample of latencies.
type durations []time.Duration

// pct returns the p-th percentile (0 < p <= 100) by nearest rank, or -1
// for an empty sample.
func (d durations) pct(p float64) time.Duration {
	if len(d) == 0 {
		return -1
	}
	s := append(durations(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}

// ms formats a duration in milliseconds, "n/a" when negative.
func ms(d time.Duration) string {
	if d < 0 {
		return "n/a"
	}
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 10:
		return fmt.Sprintf("%.1f ms", v)
	}
	return fmt.Sprintf("%.2f ms", v)
}

// secs formats a duration in seconds.
func secs(d time.Duration) string {
	if d < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

// ratio formats a/b as "×0.42", "n/a" when either is unknown.
func ratio(a, b float64) string {
	if a < 0 || b <= 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "n/a"
	}
	return fmt.Sprintf("×%.2f", a/b)
}

// ratioD is ratio for durations.
func ratioD(a, b time.Duration) string { return ratio(float64(a), float64(b)) }

// mib formats bytes in MiB.
func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// verdict says whether a measured value meets a bound: yes, or NO with
// the factor by which it misses.
func verdict(ok bool, miss string) string {
	if ok {
		return "yes"
	}
	return "NO: " + miss
}
