package runner

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the mirror's Prometheus metrics. Create them with
// NewMetrics; one set per Mirror.
type Metrics struct {
	// Lag is the time from a file's rename into place (its ctime) to its
	// copy being durable in the store.
	Lag prometheus.Histogram
	// UploadsPending counts uploads queued or running.
	UploadsPending prometheus.Gauge
	// DeletesPending counts deletes waiting for their turn or running.
	DeletesPending prometheus.Gauge
	// Entries counts local entries (.pck, .bak, .psv) by queue.
	Entries *prometheus.GaugeVec
	// Held counts entries in the hold area.
	Held prometheus.Gauge
	// Uploads counts copies made durable.
	Uploads prometheus.Counter
	// UploadBytes counts bytes made durable.
	UploadBytes prometheus.Counter
	// Deletes counts copies deleted.
	Deletes prometheus.Counter
	// UploadErrors counts failed store writes by error code.
	UploadErrors *prometheus.CounterVec
	// DeleteErrors counts failed store deletes by error code.
	DeleteErrors *prometheus.CounterVec
	// Ignored counts files left alone, by reason, once per name.
	Ignored *prometheus.CounterVec
	// Rescans counts full rescans of the queue directories by reason.
	Rescans *prometheus.CounterVec
	// OldestUpload is the age of the oldest upload still queued or
	// running: how far the mirror is behind, right now.
	OldestUpload prometheus.GaugeFunc
	// OldestDelete is the age of the oldest delete still waiting: a
	// finished entry whose copy is still in the store would run again if
	// the node died now, so this is the window for such re-runs.
	OldestDelete prometheus.GaugeFunc

	// ages reports the oldest pending upload's and delete's ages; set by
	// the Mirror that uses these metrics.
	ages atomic.Pointer[func() (up, del time.Duration)]
}

// age reads the mirror's pending ages, zero before a Mirror is attached.
func (m *Metrics) age(del bool) float64 {
	f := m.ages.Load()
	if f == nil {
		return 0
	}
	up, d := (*f)()
	if del {
		return d.Seconds()
	}
	return up.Seconds()
}

// LagBuckets are the mirror lag histogram's buckets, in seconds.
var LagBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 300}

// NewMetrics creates the mirror's metrics and registers them with reg
// (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mmsidecar_mirror_lag_seconds",
			Help:    "Time from a queue file's rename into place to its copy being durable in the store.",
			Buckets: LagBuckets,
		}),
		UploadsPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mmsidecar_uploads_pending",
			Help: "Uploads queued or running.",
		}),
		DeletesPending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mmsidecar_deletes_pending",
			Help: "Store deletes waiting for their turn or running.",
		}),
		Entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mmsidecar_entries",
			Help: "Local queue entries (.pck, .bak, .psv) by queue.",
		}, []string{"queue"}),
		Held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mmsidecar_held_entries",
			Help: "Entries in the hold area.",
		}),
		Uploads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mmsidecar_uploads_total",
			Help: "Entry copies made durable in the store.",
		}),
		UploadBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mmsidecar_upload_bytes_total",
			Help: "Bytes of entry copies made durable in the store.",
		}),
		Deletes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mmsidecar_deletes_total",
			Help: "Entry copies deleted from the store.",
		}),
		UploadErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_upload_errors_total",
			Help: "Failed entry uploads by error code; each is retried.",
		}, []string{"code"}),
		DeleteErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_delete_errors_total",
			Help: "Failed store deletes by error code; each is retried.",
		}, []string{"code"}),
		Ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_ignored_files_total",
			Help: "Files in queue directories left alone or not mirrored, by reason, counted once per name.",
		}, []string{"reason"}),
		Rescans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_rescans_total",
			Help: "Full rescans of the queue directories by reason.",
		}, []string{"reason"}),
	}
	m.OldestUpload = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mmsidecar_oldest_upload_seconds",
		Help: "Age of the oldest upload still queued or running (0: none).",
	}, func() float64 { return m.age(false) })
	m.OldestDelete = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mmsidecar_oldest_delete_seconds",
		Help: "Age of the oldest delete of a copy still waiting, mostly finished entries' copies (0: none).",
	}, func() float64 { return m.age(true) })
	if reg != nil {
		reg.MustRegister(m.Lag, m.UploadsPending, m.DeletesPending, m.Entries, m.Held,
			m.Uploads, m.UploadBytes, m.Deletes, m.UploadErrors, m.DeleteErrors, m.Ignored, m.Rescans,
			m.OldestUpload, m.OldestDelete)
	}
	return m
}
