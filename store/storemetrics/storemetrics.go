// Package storemetrics wraps a store.Store and counts every call in
// Prometheus metrics: mmsidecar_store_requests_total{op,code} (code "ok"
// or store.CodeOf of the error) and mmsidecar_store_request_seconds{op}.
package storemetrics

import (
	"context"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mmsidecar/mmsidecar/store"
)

// The operation labels.
const (
	OpGet        = "get"
	OpPut        = "put"
	OpStat       = "stat"
	OpList       = "list"
	OpDelete     = "delete"
	OpDeleteMany = "delete_many"
)

// Metrics are the store call metrics. One set can wrap several stores.
type Metrics struct {
	// Requests counts calls by operation and result code.
	Requests *prometheus.CounterVec
	// Seconds is the duration of calls by operation.
	Seconds *prometheus.HistogramVec
}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_store_requests_total",
			Help: "Store calls by operation and result code (ok, or the error code).",
		}, []string{"op", "code"}),
		Seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mmsidecar_store_request_seconds",
			Help:    "Duration of store calls by operation.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"op"}),
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.Seconds)
	}
	return m
}

// Wrap returns s counted in metrics registered with reg.
func Wrap(s store.Store, reg prometheus.Registerer) store.Store {
	return NewMetrics(reg).Wrap(s)
}

// Wrap returns s counted in m.
func (m *Metrics) Wrap(s store.Store) store.Store { return &counted{s: s, m: m} }

type counted struct {
	s store.Store
	m *Metrics
}

func (c *counted) observe(op string, start time.Time, err error) {
	code := "ok"
	if err != nil {
		code = store.CodeOf(err)
	}
	c.m.Requests.WithLabelValues(op, code).Inc()
	c.m.Seconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// Get implements store.Store. The time is until the body starts.
func (c *counted) Get(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	start := time.Now()
	rc, info, err := c.s.Get(ctx, key)
	c.observe(OpGet, start, err)
	return rc, info, err
}

// Put implements store.Store.
func (c *counted) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	start := time.Now()
	info, err := c.s.Put(ctx, key, body, size, cond)
	c.observe(OpPut, start, err)
	return info, err
}

// Stat implements store.Store.
func (c *counted) Stat(ctx context.Context, key string) (store.Info, error) {
	start := time.Now()
	info, err := c.s.Stat(ctx, key)
	c.observe(OpStat, start, err)
	return info, err
}

// List implements store.Store. The time includes the callbacks.
func (c *counted) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	start := time.Now()
	err := c.s.List(ctx, prefix, fn)
	c.observe(OpList, start, err)
	return err
}

// Delete implements store.Store.
func (c *counted) Delete(ctx context.Context, key string) error {
	start := time.Now()
	err := c.s.Delete(ctx, key)
	c.observe(OpDelete, start, err)
	return err
}

// DeleteMany implements store.Store.
func (c *counted) DeleteMany(ctx context.Context, keys []string) error {
	start := time.Now()
	err := c.s.DeleteMany(ctx, keys)
	c.observe(OpDeleteMany, start, err)
	return err
}
