//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// EnvReport names a file the end-to-end test writes its scenario table
// to (scripts/test.sh prints it in its summary: go test hides the output
// of passing tests).
const EnvReport = "MMSIDECAR_E2E_REPORT"

// Row is one scenario's line in the report.
type Row struct {
	Scenario   string
	Posts      int
	Expected   int           // deliveries expected: posts × members
	Delivered  int           // expected deliveries that happened at least once
	Lost       int           // expected deliveries that never happened
	Duplicated int           // extra deliveries beyond the first
	InFlight   int           // .bak entries at the kill; -1 when nothing was killed
	FullAfter  time.Duration // kill (or drain start) to full delivery; 0 = n/a
	Note       string
}

// RowOf fills a row's delivery columns from a tally.
func RowOf(scenario string, posts int, t Tally) Row {
	return Row{Scenario: scenario, Posts: posts, Expected: t.Expected, Delivered: t.Delivered,
		Lost: t.Lost, Duplicated: t.Duplicated, InFlight: -1}
}

// Report collects rows; safe for concurrent use.
type Report struct {
	mu   sync.Mutex
	rows []Row
}

// Add appends a row.
func (r *Report) Add(row Row) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rows = append(r.rows, row)
}

// String renders the table.
func (r *Report) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tposts\texpected\tdelivered\tlost\tduplicated\tin flight at kill\tfull delivery after\tnotes")
	for _, row := range r.rows {
		inflight, after := "-", "-"
		if row.InFlight >= 0 {
			inflight = fmt.Sprint(row.InFlight)
		}
		if row.FullAfter > 0 {
			after = row.FullAfter.Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", row.Scenario, row.Posts, row.Expected,
			row.Delivered, row.Lost, row.Duplicated, inflight, after, row.Note)
	}
	tw.Flush()
	return b.String()
}

// WriteFile writes the table to the file EnvReport names, if set.
func (r *Report) WriteFile(header string) error {
	path := os.Getenv(EnvReport)
	if path == "" {
		return nil
	}
	if err := os.WriteFile(path, []byte(header+"\n"+r.String()), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}
