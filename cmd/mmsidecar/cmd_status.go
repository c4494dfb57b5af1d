package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// statusOutput is `mmsidecar status -json`, a stable interface for
// scripts: fields are only ever added.
type statusOutput struct {
	// Taken is when the store was read (RFC 3339, UTC).
	Taken time.Time `json:"taken"`
	// Claims counts claim objects: transfers in progress and tombstones.
	Claims int `json:"claims"`
	// Nodes lists every node with a lease or entries, by id.
	Nodes []statusNode `json:"nodes"`
	// Local is the local daemon's own view, when it answers.
	Local *localStatus `json:"local,omitempty"`
	// LocalError says why there is no local view, e.g. "no daemon at
	// 127.0.0.1:9464".
	LocalError string `json:"local_error,omitempty"`
	// Warnings are configuration problems worth shouting about, such as
	// cluster mode on a store only this host can see.
	Warnings []string `json:"warnings,omitempty"`
}

type statusNode struct {
	Node string `json:"node"`
	// State is live, settling, draining, dead, expired (lease older than
	// TTL + grace by wall clock) or "no lease".
	State string `json:"state"`
	Epoch uint64 `json:"epoch"`
	// DeadEpoch: copies at epochs up to it belong to a takeover.
	DeadEpoch uint64 `json:"dead_epoch"`
	// LeaseAgeSeconds is the time since the store took the lease's last
	// write, by the store's clock; -1 without a lease.
	LeaseAgeSeconds float64       `json:"lease_age_seconds"`
	Entries         int           `json:"entries"`
	Queues          []statusQueue `json:"queues"`
}

type statusQueue struct {
	Queue            string    `json:"queue"`
	Entries          int       `json:"entries"`
	Bytes            int64     `json:"bytes"`
	Oldest           time.Time `json:"oldest"`
	OldestAgeSeconds float64   `json:"oldest_age_seconds"`
}

// localStatus is GET /status: the daemon's own view.
type localStatus struct {
	Node           string                `json:"node"`
	Mode           string                `json:"mode"`
	State          string                `json:"state"`
	Epoch          uint64                `json:"epoch"`
	Ready          bool                  `json:"ready"`
	NotReady       string                `json:"not_ready,omitempty"`
	Phase          string                `json:"phase,omitempty"`
	PendingUploads int                   `json:"pending_uploads"`
	PendingDeletes int                   `json:"pending_deletes"`
	Queues         map[string]localQueue `json:"queues"`
	Peers          []localPeer           `json:"peers,omitempty"`
	Gate           *gateStatus           `json:"gate,omitempty"`
	Warnings       []string              `json:"warnings,omitempty"`
	Events         []event               `json:"events,omitempty"`
}

type localQueue struct {
	Pck        int       `json:"pck"`
	Bak        int       `json:"bak"`
	Psv        int       `json:"psv"`
	Held       int       `json:"held"`
	Unmirrored int       `json:"unmirrored"`
	Oldest     time.Time `json:"oldest,omitzero"`
	LastMirror time.Time `json:"last_mirror,omitzero"`
}

type localPeer struct {
	Node           string  `json:"node"`
	State          string  `json:"state"`
	Epoch          uint64  `json:"epoch"`
	SilenceSeconds float64 `json:"silence_seconds"`
}

func (d *daemon) localStatus() localStatus {
	st := d.mirror.Stats()
	notReady := d.ready()
	phase, _, _ := d.phase.get()
	out := localStatus{Node: d.cfg.NodeID, Mode: string(d.cfg.Mode), State: "mirroring", Ready: notReady == nil, Phase: phase,
		PendingUploads: st.PendingUploads, PendingDeletes: st.PendingDeletes, Queues: map[string]localQueue{}, Events: d.events.recent()}
	if notReady != nil {
		out.NotReady = notReady.Error()
	}
	if w := localStoreWarning(d.cfg); w != "" {
		out.Warnings = append(out.Warnings, w)
	}
	for q, s := range st.Queues {
		out.Queues[q] = localQueue{Pck: s.Pck, Bak: s.Bak, Psv: s.Psv, Held: s.Held, Unmirrored: s.Unmirrored, Oldest: s.Oldest, LastMirror: s.LastMirror}
	}
	out.Gate = d.gateStatus()
	if d.node != nil {
		out.State, out.Epoch = d.node.State()
		for _, p := range d.node.Peers() {
			out.Peers = append(out.Peers, localPeer{Node: p.Node, State: p.Lease.State, Epoch: p.Lease.Epoch, SilenceSeconds: p.Silence.Seconds()})
		}
	}
	return out
}

func runStatus(ctx context.Context, args []string) error {
	fs := newFlagSet("status", "Show what the store holds: every node's lease (state, epoch, age) and its\nentries per queue, oldest first, plus the local daemon's view when it\nanswers on MMSIDECAR_LISTEN_ADDR.")
	asJSON := fs.Bool("json", false, "print one JSON object (stable; documented in README)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := LoadConfig(ctx, nil)
	if err != nil {
		return err
	}
	ctx, stop := interruptContext(ctx)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st, err := openStoreReadOnly(cfg)
	if err != nil {
		return err
	}
	defer closeStore(st)
	cs, err := fence.ReadStatus(ctx, st, fence.NewLayout(cfg.S3Prefix), cfg.LeaseGrace)
	if err != nil {
		return fmt.Errorf("read store: %w", err)
	}
	out := statusOf(cs)
	out.Local, out.LocalError = fetchLocal(ctx, cfg.ListenAddr)
	if w := localStoreWarning(cfg); w != "" {
		out.Warnings = append(out.Warnings, w)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	printStatus(os.Stdout, out)
	return nil
}

func statusOf(cs fence.ClusterStatus) statusOutput {
	out := statusOutput{Taken: cs.Taken, Claims: cs.Claims, Nodes: []statusNode{}}
	for _, n := range cs.Nodes {
		sn := statusNode{Node: n.Node, State: n.State, Entries: n.Entries, LeaseAgeSeconds: -1, Queues: []statusQueue{}}
		if n.Lease != nil {
			sn.Epoch, sn.DeadEpoch, sn.LeaseAgeSeconds = n.Lease.Epoch, n.Lease.DeadEpoch, n.LeaseAge.Seconds()
		}
		for _, q := range n.Queues {
			sn.Queues = append(sn.Queues, statusQueue{Queue: q.Queue, Entries: q.Entries, Bytes: q.Bytes,
				Oldest: q.Oldest, OldestAgeSeconds: cs.Taken.Sub(q.Oldest).Seconds()})
		}
		out.Nodes = append(out.Nodes, sn)
	}
	return out
}

// fetchLocal asks the local daemon for its view; without one it says why.
func fetchLocal(ctx context.Context, addr string) (*localStatus, string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return nil, err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Sprintf("no daemon at %s (MMSIDECAR_LISTEN_ADDR): %v", addr, errors.Unwrap(err))
	}
	defer resp.Body.Close()
	var ls localStatus
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Sprintf("the daemon at %s answered %s", addr, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&ls); err != nil {
		return nil, fmt.Sprintf("the daemon at %s answered something that is not its status: %v", addr, err)
	}
	return &ls, ""
}

// ageOf prints the age of a time for people, "-" for none.
func ageOf(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return humanDuration(now.Sub(t)) + " ago"
}

func printStatus(w io.Writer, out statusOutput) {
	for _, warn := range out.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n\n", warn)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tEPOCH\tLEASE AGE\tENTRIES")
	for _, n := range out.Nodes {
		age := "-"
		if n.LeaseAgeSeconds >= 0 {
			age = humanDuration(time.Duration(n.LeaseAgeSeconds * float64(time.Second)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\n", n.Node, n.State, n.Epoch, age, n.Entries)
		for _, q := range n.Queues {
			fmt.Fprintf(tw, "  %s\t\t\t\t%d (oldest %s, %d bytes)\n", q.Queue, q.Entries, ageOf(q.Oldest, out.Taken), q.Bytes)
		}
	}
	if len(out.Nodes) == 0 {
		fmt.Fprintln(tw, "(no node has written to this store yet)")
	}
	tw.Flush()
	fmt.Fprintf(w, "claims: %d\n", out.Claims)
	l := out.Local
	if l == nil {
		fmt.Fprintf(w, "\nlocal daemon: %s\n", out.LocalError)
		return
	}
	ready := "ready"
	if !l.Ready {
		ready = "NOT READY: " + l.NotReady
	}
	fmt.Fprintf(w, "\nlocal daemon %s: %s, epoch %d, %s; %d uploads and %d deletes pending\n",
		l.Node, l.State, l.Epoch, ready, l.PendingUploads, l.PendingDeletes)
	names := make([]string, 0, len(l.Queues))
	for q := range l.Queues {
		names = append(names, q)
	}
	sort.Strings(names)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tPCK\tBAK\tPSV\tHELD\tUNMIRRORED\tOLDEST\tLAST MIRROR")
	now := time.Now()
	for _, q := range names {
		s := l.Queues[q]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", q, s.Pck, s.Bak, s.Psv, s.Held, s.Unmirrored, ageOf(s.Oldest, now), ageOf(s.LastMirror, now))
	}
	tw.Flush()
	for _, p := range l.Peers {
		fmt.Fprintf(w, "peer %s: %s, epoch %d, silent %s\n", p.Node, p.State, p.Epoch, humanDuration(time.Duration(p.SilenceSeconds*float64(time.Second))))
	}
	if g := l.Gate; g != nil {
		fmt.Fprintln(w, gateLine(g))
	}
}

// gateLine describes the runner gate for humans.
func gateLine(g *gateStatus) string {
	state := "closed"
	switch {
	case g.Open:
		state = fmt.Sprintf("open for %.1fs", g.DeadlineSeconds)
	case g.Admit == "none" && g.DeadlineSeconds > 0:
		state = "closed to every entry"
	case g.Admit != "":
		state = "closed, new entries only"
	}
	guard := "runners guarded by the gate"
	if g.Mode != "on" {
		guard = "MMSIDECAR_RUNNER_GATE off: fences also move entries"
	}
	runners := fmt.Sprintf("%d runners honour it", g.Runners)
	if g.Runners < 0 {
		runners = "runners not counted yet"
	}
	line := fmt.Sprintf("runner gate: %s (%s), %s; %s", state, g.Reason, runners, guard)
	if g.Denied > 0 {
		line += fmt.Sprintf("; %d entries denied", g.Denied)
	}
	if g.PublishFailed {
		line += "; LAST PUBLISH FAILED"
	}
	return line
}
