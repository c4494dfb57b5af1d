package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mmsidecar/mmsidecar/fence"
)

// eventRingSize is how many recent events the cluster page shows.
const eventRingSize = 100

// event is one thing worth an operator's attention: this node fenced or
// changed state, a peer changed state or was declared dead, entries were
// taken over or handed off.
type event struct {
	Time time.Time `json:"time"`
	// Kind is fence, state, peer, takeover or handoff.
	Kind string `json:"kind"`
	Text string `json:"text"`
}

// eventRing keeps the last events, oldest first.
type eventRing struct {
	mu   sync.Mutex
	max  int
	list []event
}

func newEventRing(n int) *eventRing { return &eventRing{max: n} }

func (r *eventRing) add(kind, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, event{Time: time.Now().UTC(), Kind: kind, Text: fmt.Sprintf(format, args...)})
	if len(r.list) > r.max {
		r.list = r.list[len(r.list)-r.max:]
	}
}

// recent returns the events, newest first.
func (r *eventRing) recent() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]event, len(r.list))
	for i, e := range r.list {
		out[len(r.list)-1-i] = e
	}
	return out
}

// eventCounters are the counters whose increments are events, with the
// text of one; a label's value is the %s.
var eventCounters = []struct {
	metric, label, kind, text string
}{
	{"mmsidecar_fences_total", "reason", "fence", "this node fenced itself (%s): its entries are held until it is back"},
	{"mmsidecar_peers_declared_dead_total", "", "peer", "this node declared a silent peer dead"},
	{"mmsidecar_transfers_total", "how", "takeover", "took over entries (%s)"},
	{"mmsidecar_handoffs_total", "", "handoff", "handed entries to peers (drain)"},
}

// watchEvents records events into d.events until ctx ends: it compares,
// once a second, the coordinator's counters in the registry and the
// states of this node and its peers with what it saw before. It keeps
// fence unchanged: the events are what its metrics and state already say.
func (d *daemon) watchEvents(ctx context.Context) {
	counts := d.counterValues()
	states := d.nodeStates()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		now := d.counterValues()
		for _, c := range eventCounters {
			keys := make([]string, 0)
			for k := range now {
				if strings.HasPrefix(k, c.metric+"\x00") {
					keys = append(keys, k)
				}
			}
			sort.Strings(keys)
			for _, k := range keys {
				if diff := now[k] - counts[k]; diff > 0 {
					text := c.text
					if c.label != "" {
						text = fmt.Sprintf(text, strings.TrimPrefix(k, c.metric+"\x00"))
					}
					if c.kind == "takeover" || c.kind == "handoff" {
						text = fmt.Sprintf("%s: %.0f", text, diff)
					}
					d.events.add(c.kind, "%s", text)
				}
			}
		}
		counts = now
		next := d.nodeStates()
		for _, node := range sortedKeys(next) {
			if prev, ok := states[node]; !ok || prev != next[node] {
				if node == d.cfg.NodeID {
					d.events.add("state", "this node is %s", next[node])
				} else {
					d.events.add("peer", "peer %s is %s", node, next[node])
				}
			}
		}
		states = next
	}
}

// counterValues reads the event counters from the registry, keyed by
// metric name NUL label value.
func (d *daemon) counterValues() map[string]float64 {
	out := map[string]float64{}
	mfs, err := d.reg.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		for _, c := range eventCounters {
			if mf.GetName() != c.metric {
				continue
			}
			for _, m := range mf.GetMetric() {
				out[c.metric+"\x00"+labelValue(m, c.label)] += m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// nodeStates is this node's state and epoch and each peer's, as text.
func (d *daemon) nodeStates() map[string]string {
	out := map[string]string{}
	if d.node == nil {
		return out
	}
	state, epoch := d.node.State()
	out[d.cfg.NodeID] = fmt.Sprintf("%s (epoch %d)", state, epoch)
	for _, p := range d.node.Peers() {
		if p.Lease.State == "" {
			continue // listed, its lease not read yet
		}
		out[p.Node] = fmt.Sprintf("%s (epoch %d)", p.Lease.State, p.Lease.Epoch)
		if p.Lease.State == fence.StateDead && p.Lease.DeadBy != "" {
			out[p.Node] += ", declared dead by " + p.Lease.DeadBy
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// registerBuildInfo registers mmsidecar_build_info: 1, labelled with the
// binary's version, commit and Go version.
func registerBuildInfo(reg prometheus.Registerer) {
	bi := readBuildInfo()
	commit := bi.Commit
	if commit == "" {
		commit = "unknown"
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "mmsidecar_build_info",
		Help:        "Always 1; the labels say which build runs: version, commit, Go version.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "commit": commit, "goversion": bi.GoVersion},
	})
	g.Set(1)
	reg.MustRegister(g)
}
