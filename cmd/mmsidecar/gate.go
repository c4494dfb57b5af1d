package main

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner"
	"github.com/mmsidecar/mmsidecar/runner/gatefile"
)

// gateRunnersEvery is how often the daemon counts the runners that honour
// the runner gate.
const gateRunnersEvery = 5 * time.Second

// gateStatus is the runner gate in GET /status.
type gateStatus struct {
	// Mode says whether the gate is the fence (MMSIDECAR_RUNNER_GATE).
	Mode string `json:"mode"`
	// Open: the record admits every entry until its deadline.
	Open   bool   `json:"open"`
	Admit  string `json:"admit"`
	Reason string `json:"reason"`
	// DeadlineSeconds is how long the record stays in force (0: closed).
	DeadlineSeconds float64 `json:"deadline_seconds"`
	Cutoff          float64 `json:"cutoff"`
	Denied          int     `json:"denied"`
	PublishFailed   bool    `json:"publish_failed,omitempty"`
	// Runners counts the runner processes that honour the gate, by queue.
	Runners      int            `json:"runners"`
	RunnersQueue map[string]int `json:"runners_by_queue,omitempty"`
}

// gateRunners counts the runner processes that honour the gate.
type gateRunners struct {
	dir   string
	gauge prometheus.Gauge
	log   *slog.Logger

	mu      sync.Mutex
	total   int
	byQueue map[string]int
}

func newGateRunners(dir string, reg prometheus.Registerer, log *slog.Logger) *gateRunners {
	g := &gateRunners{dir: dir, log: log, total: -1, gauge: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "mmsidecar_gate_runners",
		Help: "Mailman runner processes on this node that honour the runner gate (their record's lock is held).",
	})}
	reg.MustRegister(g.gauge)
	return g
}

// count lists the runner records once; a change is logged.
func (g *gateRunners) count() {
	rs, err := gatefile.ListRunners(g.dir)
	if err != nil {
		g.log.Warn("cannot count the runners that honour the gate", "dir", g.dir, "err", err)
		return
	}
	by := make(map[string]int)
	for _, r := range rs {
		by[r.Info.Queue]++
	}
	g.mu.Lock()
	changed := g.total != len(rs)
	g.total, g.byQueue = len(rs), by
	g.mu.Unlock()
	g.gauge.Set(float64(len(rs)))
	if changed {
		queues := make([]string, 0, len(by))
		for q, n := range by {
			queues = append(queues, fmt.Sprintf("%s:%d", q, n))
		}
		sort.Strings(queues)
		g.log.Info("runners honouring the gate", "runners", len(rs), "queues", queues)
	}
}

// run counts every gateRunnersEvery until ctx ends.
func (g *gateRunners) run(ctx context.Context) error {
	for {
		g.count()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(gateRunnersEvery):
		}
	}
}

// counts returns the last count (-1 before the first) and its split.
func (g *gateRunners) counts() (int, map[string]int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.total, g.byQueue
}

// gateStatus reports the runner gate for GET /status.
func (d *daemon) gateStatus() *gateStatus {
	out := &gateStatus{Mode: "off"}
	if d.cfg.RunnerGate {
		out.Mode = "on"
	}
	if rec, ok := d.gate.Last(); ok {
		out.Admit, out.Reason, out.Denied = string(rec.Admit), rec.Reason, len(rec.Deny)
		if rec.Cutoff != nil {
			out.Cutoff = *rec.Cutoff
		}
		if boot, err := gatefile.BootTime(); err == nil && rec.Deadline > boot.Seconds() {
			out.DeadlineSeconds = rec.Deadline - boot.Seconds()
			out.Open = rec.Admit == gatefile.AdmitAll
		}
	}
	if d.node != nil {
		_, out.PublishFailed = d.node.RunnerGate()
	}
	out.Runners, out.RunnersQueue = d.runners.counts()
	return out
}

// publishMirrorGate opens the gate for good in mirror mode: nothing is
// fenced, and Mailman's runners with the plugin must not stop.
func publishMirrorGate(g *runner.GateFile, clock fence.Clock) error {
	return g.PublishGate(fence.RunnerGate{Admit: fence.AdmitAll, Until: clock.Now().Add(100 * 365 * 24 * time.Hour), Reason: "mirror"})
}
