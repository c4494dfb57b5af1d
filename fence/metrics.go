package fence

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the coordinator's Prometheus metrics. Create them with
// NewMetrics and pass them in; nothing is registered globally.
type Metrics struct {
	renewals       *prometheus.CounterVec
	renewSeconds   prometheus.Histogram
	fences         *prometheus.CounterVec
	quarantined    prometheus.Counter
	deadMarks      prometheus.Counter
	deadMarkErrs   *prometheus.CounterVec
	takeovers      *prometheus.CounterVec
	settled        *prometheus.CounterVec
	handoffs       prometheus.Counter
	claimsLost     prometheus.Counter
	claimsGC       prometheus.Counter
	lateCopies     prometheus.Counter
	takeoverSecs   prometheus.Histogram
	state          *prometheus.GaugeVec
	epoch          prometheus.Gauge
	peers          *prometheus.GaugeVec
	peerReads      *prometheus.CounterVec
	claimsPasses   *prometheus.CounterVec
	claimsDeferred prometheus.Counter
	// The runner gate (docs/gate.md).
	gateOpen        prometheus.Gauge
	gateDenied      prometheus.Gauge
	gatePublishErrs prometheus.Counter
	gatePublished   *prometheus.CounterVec
	loopErrs        *prometheus.CounterVec
}

// NewMetrics creates the coordinator's metrics and registers them with reg
// (nil: not registered, for tests and the simulator).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_lease_renewals_total", Help: "Lease renewal attempts by result (ok, lost, error).",
		}, []string{"result"}),
		renewSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mmsidecar_lease_renew_seconds", Help: "Latency of successful lease renewals.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		fences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_fences_total", Help: "Times this node fenced itself, by reason (expired, lost).",
		}, []string{"reason"}),
		quarantined: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mmsidecar_quarantined_entries_total", Help: "Entries moved out of the runners' directories by fences and drains.",
		}),
		deadMarks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mmsidecar_peers_declared_dead_total", Help: "Peer leases this node declared dead.",
		}),
		deadMarkErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_peer_death_refused_total",
			Help: "Declarations of a silent peer's death that the store refused or did not answer, by error code; each restarts the peer's silence.",
		}, []string{"code"}),
		takeovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_transfers_total", Help: "Entries this node took over, by how (takeover, handoff, preserved).",
		}, []string{"how"}),
		settled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_settled_entries_total", Help: "Held entries settled after a fence or restart, by result (restored, dropped).",
		}, []string{"result"}),
		handoffs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mmsidecar_handoffs_total", Help: "Entries this node handed to peers while draining.",
		}),
		claimsLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mmsidecar_claims_lost_total", Help: "Conditional claim writes this node lost to a peer.",
		}),
		claimsGC: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mmsidecar_claims_collected_total", Help: "Claims deleted once their entry was finished and no longer contested.",
		}),
		lateCopies: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mmsidecar_late_copies_deleted_total",
			Help: "Copies of finished entries found in the store when their claim was collected (an old owner's upload that committed late, or a copy the owner left under an earlier epoch), deleted.",
		}),
		takeoverSecs: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "mmsidecar_takeover_entry_seconds", Help: "Time to take over one entry: claim to restored.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mmsidecar_node_state", Help: "1 for the node's current state.",
		}, []string{"state"}),
		epoch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mmsidecar_node_epoch", Help: "The node's current epoch.",
		}),
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mmsidecar_peers", Help: "Peers by the state this node sees them in.",
		}, []string{"state"}),
		peerReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_peer_lease_reads_total",
			Help: "Changed peer lease bodies learnt, by how: read (a GET) or predicted (recognised as a plain renewal by its ETag).",
		}, []string{"how"}),
		claimsPasses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_claims_passes_total",
			Help: "Claims passes run, by kind: full, or light (during a takeover with entries left: reads no claim it does not know).",
		}, []string{"kind"}),
		claimsDeferred: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mmsidecar_claims_deferred_total",
			Help: "Listed claims a light claims pass left unread for the first pass after the takeover.",
		}),
		gateOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mmsidecar_gate_open", Help: "1 while the published runner gate admits every entry, 0 while it is closed.",
		}),
		gateDenied: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mmsidecar_gate_denied_entries", Help: "Entries the runner gate denies to Mailman's runners (taken over by a peer while in flight here).",
		}),
		gatePublishErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mmsidecar_gate_publish_errors_total", Help: "Runner gate records that could not be written; uploads stop when the last published one runs out.",
		}),
		loopErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_loop_errors_total",
			Help: "Turns of the coordinator's loops that failed and left work undone, by loop (scan, takeover, claims, drain, settle); the loop runs again.",
		}, []string{"loop"}),
		gatePublished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mmsidecar_gate_published_total", Help: "Runner gate records written, by reason (live, starting, settling, fenced, lost, stopped, draining).",
		}, []string{"reason"}),
	}
	for _, k := range []string{"full", "light"} {
		m.claimsPasses.WithLabelValues(k)
	}
	for _, l := range []string{"scan", "takeover", "claims", "drain", "settle"} {
		m.loopErrs.WithLabelValues(l)
	}
	if reg != nil {
		reg.MustRegister(m.renewals, m.renewSeconds, m.fences, m.quarantined, m.deadMarks, m.deadMarkErrs,
			m.takeovers, m.settled, m.handoffs, m.claimsLost, m.claimsGC, m.lateCopies, m.takeoverSecs,
			m.state, m.epoch, m.peers, m.peerReads, m.claimsPasses, m.claimsDeferred,
			m.gateOpen, m.gateDenied, m.gatePublishErrs, m.gatePublished, m.loopErrs)
	}
	return m
}

func (m *Metrics) setState(state string) {
	for _, s := range []string{StateStarting, StateLive, StateSettling, StateDraining, StateFenced} {
		v := 0.0
		if s == state {
			v = 1
		}
		m.state.WithLabelValues(s).Set(v)
	}
}

// setGate records a published runner gate.
func (m *Metrics) setGate(g RunnerGate) {
	open := 0.0
	if g.Open() {
		open = 1
	}
	m.gateOpen.Set(open)
	m.gateDenied.Set(float64(len(g.Deny)))
	m.gatePublished.WithLabelValues(g.Reason).Inc()
}
