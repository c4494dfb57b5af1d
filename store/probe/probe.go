// Package probe proves a store safe before the sidecar trusts it: it races
// conditional creates and compare-and-swap updates, checks that a stale
// If-Match and a large (multipart-sized) conditional write are refused, and
// reports a verdict per probe. `mmsidecar check` prints the report and
// `mmsidecar run` refuses a store whose report is not Safe.
package probe

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

// Defaults for the zero fields of Options.
const (
	// DefaultWriters is how many writers race per round.
	DefaultWriters = 16
	// DefaultRounds is how many rounds each race runs.
	DefaultRounds = 5
	// DefaultLargeSize is the body size of the large-write probe: above
	// the 16 MiB part size at which minio-go switches to a multipart
	// upload and silently drops the condition.
	DefaultLargeSize = 17 << 20
)

// The probes' names, as they appear in a Report.
const (
	NameCreate   = "conditional-create"
	NameCAS      = "cas-update"
	NameStale    = "stale-if-match"
	NameLarge    = "large-conditional"
	NameErrors   = "error-classification"
	NameCleanup  = "cleanup"
	cleanupLimit = time.Minute
)

// Options configures Run. Zero fields take the defaults above.
type Options struct {
	// Writers is how many writers race in each round.
	Writers int
	// Rounds is how many rounds the create and CAS races run.
	Rounds int
	// LargeSize is the body size, in bytes, of the large-write probe.
	LargeSize int64
	// Prefix is prepended to every probe key: the keys live under
	// Prefix+"probe/<random id>/" and are deleted afterwards.
	Prefix string
	// SkipLarge leaves out the large-write probe: a caller whose own
	// conditional writes are all small (the sidecar's leases and claims
	// are under a KiB) need not upload its 4 x 17 MiB on every start.
	SkipLarge bool
}

func (o Options) withDefaults() Options {
	if o.Writers <= 0 {
		o.Writers = DefaultWriters
	}
	if o.Rounds <= 0 {
		o.Rounds = DefaultRounds
	}
	if o.LargeSize <= 0 {
		o.LargeSize = DefaultLargeSize
	}
	return o
}

// Result is the verdict of one probe.
type Result struct {
	// Name is the probe's name, e.g. "conditional-create".
	Name string
	// OK is true when the store behaved safely.
	OK bool
	// Detail says what was checked, or what went wrong.
	Detail string
	// Duration is how long the probe took.
	Duration time.Duration
	// Inconclusive is true when the probe failed because a store call
	// failed transiently (a timeout, a 503 such as MinIO's SlowDownWrite
	// while it heals): the store was not caught ignoring a condition,
	// and a later run may pass.
	Inconclusive bool
}

// Report is the outcome of Run: one Result per probe, in the order run.
type Report struct {
	// Results holds one verdict per probe.
	Results []Result
}

// Safe reports whether every probe passed (and at least one ran).
func (r Report) Safe() bool {
	for _, res := range r.Results {
		if !res.OK {
			return false
		}
	}
	return len(r.Results) > 0
}

// Unsafe reports whether some probe caught the store breaking a rule
// (failed, and not inconclusive), or no probe ran.
func (r Report) Unsafe() bool {
	for _, res := range r.Results {
		if !res.OK && !res.Inconclusive {
			return true
		}
	}
	return len(r.Results) == 0
}

// Failed returns the names of the probes that failed.
func (r Report) Failed() []string {
	var names []string
	for _, res := range r.Results {
		if !res.OK {
			names = append(names, res.Name)
		}
	}
	return names
}

// Write prints one line per probe and a verdict line (write errors are
// the writer's business), e.g.
//
//	ok   conditional-create    16 writers x 5 rounds: one winner each round (38ms)
//	FAIL cas-update            round 1: 16 of 16 writers won (12ms)
//	store is UNSAFE: cas-update failed
func (r Report) Write(w io.Writer) {
	var b strings.Builder
	for _, res := range r.Results {
		status := "ok"
		switch {
		case !res.OK && res.Inconclusive:
			status = "ERR"
		case !res.OK:
			status = "FAIL"
		}
		fmt.Fprintf(&b, "%-4s %-21s %s (%s)\n", status, res.Name, res.Detail, roundDuration(res.Duration))
	}
	switch failed := r.Failed(); {
	case len(r.Results) == 0:
		b.WriteString("store is UNSAFE: no probe ran\n")
	case len(failed) > 0 && !r.Unsafe():
		fmt.Fprintf(&b, "store is NOT VERIFIED: %s failed with store errors (ERR), none caught the store ignoring a condition; try again when the store is healthy\n", strings.Join(failed, ", "))
	case len(failed) > 0:
		fmt.Fprintf(&b, "store is UNSAFE: %s failed\n", strings.Join(failed, ", "))
	default:
		b.WriteString("store is safe: every probe passed\n")
	}
	io.WriteString(w, b.String())
}

func roundDuration(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// jsonReport is the stable JSON form of a Report.
type jsonReport struct {
	Safe    bool         `json:"safe"`
	Results []jsonResult `json:"results"`
}

type jsonResult struct {
	Name         string  `json:"name"`
	OK           bool    `json:"ok"`
	Inconclusive bool    `json:"inconclusive,omitempty"`
	Detail       string  `json:"detail"`
	DurationMS   float64 `json:"duration_ms"`
}

// JSON encodes the report as
//
//	{"safe": bool, "results": [{"name", "ok", "detail", "duration_ms"}]}
func (r Report) JSON() ([]byte, error) {
	out := jsonReport{Safe: r.Safe(), Results: make([]jsonResult, 0, len(r.Results))}
	for _, res := range r.Results {
		out.Results = append(out.Results, jsonResult{
			Name: res.Name, OK: res.OK, Inconclusive: res.Inconclusive, Detail: res.Detail,
			DurationMS: float64(res.Duration.Microseconds()) / 1000,
		})
	}
	return json.Marshal(out)
}

// Run probes s and returns the verdicts. It never returns early: every
// probe runs (a failure in one does not hide another), then every key it
// wrote is deleted, also after a failure or a canceled ctx; the cleanup is
// reported as a probe of its own.
func Run(ctx context.Context, s store.Store, opt Options) Report {
	opt = opt.withDefaults()
	p := &prober{s: s, opt: opt, id: randomHex(8)}
	p.base = opt.Prefix + "probe/" + p.id + "/"
	probes := []struct {
		name string
		fn   func(context.Context) (string, error)
	}{
		{NameCreate, p.conditionalCreate},
		{NameCAS, p.casUpdate},
		{NameStale, p.staleIfMatch},
		{NameLarge, p.largeConditional},
		{NameErrors, p.errorClassification},
	}
	var rep Report
	for _, pr := range probes {
		if opt.SkipLarge && pr.name == NameLarge {
			continue
		}
		rep.Results = append(rep.Results, timed(pr.name, func() (string, error) { return pr.fn(ctx) }))
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupLimit)
	defer cancel()
	rep.Results = append(rep.Results, timed(NameCleanup, func() (string, error) { return p.cleanup(cctx) }))
	return rep
}

func timed(name string, fn func() (string, error)) Result {
	start := time.Now()
	detail, err := fn()
	res := Result{Name: name, OK: err == nil, Detail: detail, Duration: time.Since(start)}
	if err != nil {
		res.Detail = err.Error()
		res.Inconclusive = transient(err)
	}
	return res
}

// transient reports whether err carries a store error of the transient
// kind: the store failed to answer, it did not answer wrongly. Errors the
// probes make themselves (two winners, an accepted stale If-Match) carry
// none.
func transient(err error) bool {
	return store.KindOf(err) == store.KindTransient
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
