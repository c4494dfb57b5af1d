package probe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/dirstore"
	"github.com/mmsidecar/mmsidecar/store/memstore"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// testOptions keep the in-memory runs quick; the large probe keeps its
// real size, since the 16 MiB boundary is what it tests.
var testOptions = Options{Writers: 8, Rounds: 3, Prefix: "mm/"}

// keysUnder lists the keys of s under prefix.
func keysUnder(t *testing.T, s store.Store, prefix string) []string {
	t.Helper()
	var keys []string
	if err := s.List(context.Background(), prefix, func(in store.Info) error {
		keys = append(keys, in.Key)
		return nil
	}); err != nil {
		t.Fatalf("list: %v", err)
	}
	return keys
}

// logReport writes the report into the test log.
func logReport(t *testing.T, rep Report) {
	t.Helper()
	var b strings.Builder
	rep.Write(&b)
	t.Logf("probe report:\n%s", b.String())
}

// checkSafeRun runs the probe with opt against s, which holds one
// unrelated object "keep", and checks an all-ok report, the probe order,
// and that only "keep" is left.
func checkSafeRun(t *testing.T, s store.Store, opt Options) Report {
	t.Helper()
	ctx := t.Context()
	keep, err := store.PutBytes(ctx, s, opt.Prefix+"keep", []byte("unrelated"), store.Condition{})
	if err != nil {
		t.Fatal(err)
	}
	rep := Run(ctx, s, opt)
	logReport(t, rep)
	if !rep.Safe() {
		t.Fatalf("store reported unsafe: %v", rep.Failed())
	}
	var names []string
	for _, r := range rep.Results {
		names = append(names, r.Name)
		if r.Duration <= 0 {
			t.Errorf("%s: duration %v", r.Name, r.Duration)
		}
	}
	want := []string{NameCreate, NameCAS, NameStale, NameLarge, NameErrors, NameCleanup}
	if opt.SkipLarge {
		want = slices.DeleteFunc(want, func(n string) bool { return n == NameLarge })
	}
	if !slices.Equal(names, want) {
		t.Fatalf("probes %q, want %q", names, want)
	}
	if got := keysUnder(t, s, opt.Prefix); !slices.Equal(got, []string{opt.Prefix + "keep"}) {
		t.Fatalf("keys after the probe: %q", got)
	}
	if info, err := s.Stat(ctx, opt.Prefix+"keep"); err != nil || info.ETag != keep.ETag || info.Size != keep.Size {
		t.Fatalf("unrelated object changed: %+v %v", info, err)
	}
	return rep
}

func TestMemstoreIsSafe(t *testing.T) {
	rep := checkSafeRun(t, memstore.New(), testOptions)
	if d := rep.Results[0].Detail; d != "8 writers x 3 rounds: one winner each round" {
		t.Errorf("create detail %q", d)
	}
}

// TestSkipLarge: the start-up probe leaves the large write out and runs
// every other probe.
func TestSkipLarge(t *testing.T) {
	opt := testOptions
	opt.SkipLarge = true
	checkSafeRun(t, memstore.New(), opt)
}

func TestDirstoreIsSafe(t *testing.T) {
	s, err := dirstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkSafeRun(t, s, Options{Prefix: "mm/"})
}

// TestS3EndpointIsSafe runs the probe against the S3 endpoint of the
// environment (MMSIDECAR_TEST_S3_*: any engine; the shared MinIO
// without it).
func TestS3EndpointIsSafe(t *testing.T) {
	checkSafeRun(t, storetest.SharedS3(t).Store(t), Options{Prefix: "mm/"})
}

// condFilter rewrites the condition of every Put: a store that ignores
// some conditions.
type condFilter struct {
	store.Store
	filter func(size int64, c store.Condition) store.Condition
}

func (f condFilter) Put(ctx context.Context, key string, body io.Reader, size int64, c store.Condition) (store.Info, error) {
	return f.Store.Put(ctx, key, body, size, f.filter(size, c))
}

// loserError reports lost conditional writes as server errors.
type loserError struct{ store.Store }

func (l loserError) Put(ctx context.Context, key string, body io.Reader, size int64, c store.Condition) (store.Info, error) {
	info, err := l.Store.Put(ctx, key, body, size, c)
	if errors.Is(err, store.ErrPrecondition) {
		return info, &store.OpError{Op: "put", Key: key, Kind: store.KindTransient, Code: "InternalError", Err: errors.New("500 internal error")}
	}
	return info, err
}

// blindNotFound reports a missing key as a permanent error.
type blindNotFound struct{ store.Store }

func (b blindNotFound) Get(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	rc, info, err := b.Store.Get(ctx, key)
	return rc, info, hideNotFound(err)
}

func (b blindNotFound) Stat(ctx context.Context, key string) (store.Info, error) {
	info, err := b.Store.Stat(ctx, key)
	return info, hideNotFound(err)
}

func hideNotFound(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return &store.OpError{Op: "get", Kind: store.KindPermanent, Code: "AccessDenied", Err: errors.New("access denied")}
	}
	return err
}

// noDelete fails every batched delete.
type noDelete struct{ store.Store }

func (noDelete) DeleteMany(context.Context, []string) error {
	return &store.OpError{Op: "delete", Kind: store.KindPermanent, Code: "AccessDenied", Err: errors.New("access denied")}
}

func TestBrokenStoresAreUnsafe(t *testing.T) {
	const partSize = 16 << 20
	tests := []struct {
		name   string
		wrap   func(store.Store) store.Store
		failed []string
		detail string // in the first failed probe's detail
		leaks  bool
		// inconclusive: every failure is a transient store error, so the
		// report is not safe but does not call the store unsafe either.
		inconclusive bool
	}{
		{
			name: "ignores IfAbsent",
			wrap: func(s store.Store) store.Store {
				return condFilter{s, func(_ int64, c store.Condition) store.Condition { c.IfAbsent = false; return c }}
			},
			failed: []string{NameCreate, NameLarge},
			detail: "8 of 8 writers won",
		},
		{
			name: "ignores IfMatch",
			wrap: func(s store.Store) store.Store {
				return condFilter{s, func(_ int64, c store.Condition) store.Condition { c.IfMatch = ""; return c }}
			},
			failed: []string{NameCAS, NameStale, NameLarge},
			detail: "8 of 8 writers won",
		},
		{
			name: "drops conditions above 16 MiB (multipart)",
			wrap: func(s store.Store) store.Store {
				return condFilter{s, func(size int64, c store.Condition) store.Condition {
					if size > partSize {
						return store.Condition{}
					}
					return c
				}}
			},
			failed: []string{NameLarge},
			detail: "create-if-absent on an existing key accepted",
		},
		{
			name:   "losers get server errors",
			wrap:   func(s store.Store) store.Store { return loserError{s} },
			failed: []string{NameCreate, NameCAS, NameStale, NameLarge},
			detail: "other than precondition failed (InternalError)",
			// A 500 is transient: a store healing answers it too. The
			// sidecar retries such a probe, for a bounded time.
			inconclusive: true,
		},
		{
			name:   "missing keys not classified",
			wrap:   func(s store.Store) store.Store { return blindNotFound{s} },
			failed: []string{NameStale, NameErrors},
			detail: "access denied",
		},
		{
			name:   "delete fails",
			wrap:   func(s store.Store) store.Store { return noDelete{s} },
			failed: []string{NameCleanup},
			detail: "access denied",
			leaks:  true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := memstore.New()
			rep := Run(t.Context(), tt.wrap(mem), testOptions)
			logReport(t, rep)
			if rep.Safe() {
				t.Fatal("broken store reported safe")
			}
			if rep.Unsafe() == tt.inconclusive {
				t.Errorf("Unsafe() = %v, want %v", rep.Unsafe(), !tt.inconclusive)
			}
			if got := rep.Failed(); !slices.Equal(got, tt.failed) {
				t.Fatalf("failed probes %q, want %q", got, tt.failed)
			}
			for _, r := range rep.Results {
				if r.Name == tt.failed[0] && !strings.Contains(r.Detail, tt.detail) {
					t.Errorf("%s detail %q lacks %q", r.Name, r.Detail, tt.detail)
				}
			}
			if left := keysUnder(t, mem, ""); len(left) > 0 != tt.leaks {
				t.Fatalf("keys left after the probe: %q", left)
			}
		})
	}
}

// cancelAfter cancels a context after n successful Puts.
type cancelAfter struct {
	store.Store
	n      int64
	puts   atomic.Int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	info, err := c.Store.Put(ctx, key, body, size, cond)
	if err == nil && c.puts.Add(1) == c.n {
		c.cancel()
	}
	return info, err
}

// TestCleanupAfterCancel cancels the probe's context midway: the
// remaining probes fail, and the cleanup still removes what was written.
func TestCleanupAfterCancel(t *testing.T) {
	mem := memstore.New()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// One winner per create round, then the CAS probe's first object.
	s := &cancelAfter{Store: mem, n: int64(testOptions.Rounds) + 1, cancel: cancel}
	rep := Run(ctx, s, testOptions)
	logReport(t, rep)
	if got, want := rep.Failed(), []string{NameCAS, NameStale, NameLarge, NameErrors}; !slices.Equal(got, want) {
		t.Fatalf("failed %q, want %q", got, want)
	}
	if last := rep.Results[len(rep.Results)-1]; last.Name != NameCleanup || !last.OK || !strings.Contains(last.Detail, "deleted 4 probe objects") {
		t.Fatalf("cleanup: %+v", last)
	}
	if left := keysUnder(t, mem, ""); len(left) > 0 {
		t.Fatalf("left %q", left)
	}
}

func TestReportOutput(t *testing.T) {
	rep := Report{Results: []Result{
		{Name: NameCreate, OK: true, Detail: "16 writers x 5 rounds: one winner each round", Duration: 38123456 * time.Nanosecond},
		{Name: NameCAS, OK: false, Detail: "round 1: 16 of 16 writers won", Duration: 1500 * time.Microsecond},
	}}
	var b bytes.Buffer
	rep.Write(&b)
	want := "ok   conditional-create    16 writers x 5 rounds: one winner each round (38.1ms)\n" +
		"FAIL cas-update            round 1: 16 of 16 writers won (1.5ms)\n" +
		"store is UNSAFE: cas-update failed\n"
	if b.String() != want {
		t.Fatalf("Write:\n%s\nwant:\n%s", b.String(), want)
	}
	data, err := rep.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Safe    bool `json:"safe"`
		Results []struct {
			Name       string  `json:"name"`
			OK         bool    `json:"ok"`
			Detail     string  `json:"detail"`
			DurationMS float64 `json:"duration_ms"`
		} `json:"results"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got.Safe || len(got.Results) != 2 || got.Results[0].Name != NameCreate || !got.Results[0].OK ||
		got.Results[0].DurationMS != 38.123 || got.Results[1].OK || got.Results[1].Detail != "round 1: 16 of 16 writers won" {
		t.Fatalf("JSON %s", data)
	}

	tests := []struct {
		name string
		rep  Report
		safe bool
		last string
	}{
		{"empty", Report{}, false, "store is UNSAFE: no probe ran\n"},
		{"all ok", Report{Results: rep.Results[:1]}, true, "store is safe: every probe passed\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rep.Safe() != tt.safe {
				t.Fatalf("Safe() = %v", !tt.safe)
			}
			var b strings.Builder
			tt.rep.Write(&b)
			if !strings.HasSuffix(b.String(), tt.last) {
				t.Fatalf("Write: %q", b.String())
			}
		})
	}
}
