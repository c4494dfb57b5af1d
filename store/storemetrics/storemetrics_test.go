package storemetrics_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/memstore"
	"github.com/mmsidecar/mmsidecar/store/storemetrics"
)

// failing fails every call with a transient error coded "SlowDown".
type failing struct{}

var errSlow = &store.OpError{Op: "x", Kind: store.KindTransient, Code: "SlowDown", Err: errors.New("slow down")}

func (failing) Get(context.Context, string) (io.ReadCloser, store.Info, error) {
	return nil, store.Info{}, errSlow
}
func (failing) Put(context.Context, string, io.Reader, int64, store.Condition) (store.Info, error) {
	return store.Info{}, errSlow
}
func (failing) Stat(context.Context, string) (store.Info, error)           { return store.Info{}, errSlow }
func (failing) List(context.Context, string, func(store.Info) error) error { return errSlow }
func (failing) Delete(context.Context, string) error                       { return errSlow }
func (failing) DeleteMany(context.Context, []string) error                 { return errSlow }

func TestCountsEveryCall(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		call func(s store.Store) error
		op   string
		code string // code for memstore
	}{
		{"put", func(s store.Store) error {
			_, err := store.PutBytes(ctx, s, "k", []byte("v"), store.Condition{})
			return err
		}, "put", "ok"},
		{"put precondition", func(s store.Store) error {
			_, err := store.PutBytes(ctx, s, "k", []byte("v"), store.Condition{IfMatch: "nope"})
			return err
		}, "put", "NoSuchKey"},
		{"get missing", func(s store.Store) error { _, _, err := s.Get(ctx, "missing"); return err }, "get", "NoSuchKey"},
		{"stat missing", func(s store.Store) error { _, err := s.Stat(ctx, "missing"); return err }, "stat", "NoSuchKey"},
		{"list", func(s store.Store) error { return s.List(ctx, "", func(store.Info) error { return nil }) }, "list", "ok"},
		{"delete", func(s store.Store) error { return s.Delete(ctx, "k") }, "delete", "ok"},
		{"delete many", func(s store.Store) error { return s.DeleteMany(ctx, []string{"a", "b"}) }, "delete_many", "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			m := storemetrics.NewMetrics(reg)
			s := m.Wrap(memstore.New())
			tt.call(s)
			if got := testutil.ToFloat64(m.Requests.WithLabelValues(tt.op, tt.code)); got != 1 {
				t.Errorf("requests{op=%s,code=%s} = %v, want 1", tt.op, tt.code, got)
			}
			if n := testutil.CollectAndCount(m.Requests); n != 1 {
				t.Errorf("%d request series, want 1", n)
			}
			f := failing{}
			fs := m.Wrap(f)
			tt.call(fs)
			if got := testutil.ToFloat64(m.Requests.WithLabelValues(tt.op, "SlowDown")); got != 1 {
				t.Errorf("requests{op=%s,code=SlowDown} = %v, want 1", tt.op, got)
			}
			if n := testutil.CollectAndCount(m.Seconds); n != 1 {
				t.Errorf("%d duration series, want 1 (op %s)", n, tt.op)
			}
		})
	}
}

func TestWrapPassesThrough(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewPedanticRegistry()
	s := storemetrics.Wrap(memstore.New(), reg)
	if _, err := store.PutBytes(ctx, s, "a/1", []byte("one"), store.Condition{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.PutBytes(ctx, s, "a/1", []byte("two"), store.Condition{IfAbsent: true}); !errors.Is(err, store.ErrPrecondition) {
		t.Fatalf("second create: %v, want precondition failed", err)
	}
	data, info, err := store.GetBytes(ctx, s, "a/1")
	if err != nil || !bytes.Equal(data, []byte("one")) || info.ETag != store.ETagOf([]byte("one")) {
		t.Fatalf("get: %q %+v %v", data, info, err)
	}
	var keys []string
	if err := s.List(ctx, "a/", func(i store.Info) error { keys = append(keys, i.Key); return nil }); err != nil || len(keys) != 1 {
		t.Fatalf("list: %v %v", keys, err)
	}
	if err := s.DeleteMany(ctx, []string{"a/1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx, "a/1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("stat after delete: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"mmsidecar_store_requests_total", "mmsidecar_store_request_seconds"} {
		if !names[n] {
			t.Errorf("metric %s not registered", n)
		}
	}
}
