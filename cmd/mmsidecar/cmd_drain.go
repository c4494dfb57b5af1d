package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// drainReply is the JSON of POST and GET /drain.
type drainReply struct {
	Draining bool   `json:"draining"`
	Done     bool   `json:"done"`
	Pck      int    `json:"pck"`
	Bak      int    `json:"bak"`
	Held     int    `json:"held"`
	Waiting  int    `json:"waiting"`
	Peers    int    `json:"peers"`
	Error    string `json:"error,omitempty"`
}

func replyOf(s fence.DrainStatus) drainReply {
	return drainReply{Draining: s.Draining, Done: s.Done, Pck: s.Local.Pck, Bak: s.Local.Bak,
		Held: s.Local.Held, Waiting: s.Waiting, Peers: s.Peers}
}

// routes registers the daemon's own endpoints: POST /drain starts a
// drain, GET /drain reports on it, GET /status is the node's local view.
func (d *daemon) routes() {
	d.http.Handle("POST /drain", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.node == nil {
			writeHTTPJSON(w, http.StatusConflict, drainReply{Error: "drain needs MMSIDECAR_MODE=cluster"})
			return
		}
		d.node.StartDrain(r.Context())
		d.mirror.Rescan() // hold every queued entry now, not at the next rescan
		writeHTTPJSON(w, http.StatusAccepted, replyOf(d.node.Drain()))
	}))
	d.http.Handle("GET /drain", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.node == nil {
			writeHTTPJSON(w, http.StatusConflict, drainReply{Error: "drain needs MMSIDECAR_MODE=cluster"})
			return
		}
		writeHTTPJSON(w, http.StatusOK, replyOf(d.node.Drain()))
	}))
	d.http.Handle("GET /status", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeHTTPJSON(w, http.StatusOK, d.localStatus())
	}))
}

func writeHTTPJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// runDrain asks the local daemon to drain and waits until it holds
// nothing: no queued, held or in-flight entry, and nothing left in its
// namespace for a peer to pick up. Exit 0 when done, 1 on timeout.
func runDrain(ctx context.Context, args []string) error {
	fs := newFlagSet("drain", "Hand this node's unstarted backlog to the other live nodes, wait for\nentries in flight to finish, and exit 0 when the node holds nothing.\nTalks to the daemon on MMSIDECAR_LISTEN_ADDR.")
	quiet := fs.Bool("q", false, "print only the final line")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := LoadConfig(ctx, nil)
	if err != nil {
		return err
	}
	ctx, stop := interruptContext(ctx)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.DrainTimeout)
	defer cancel()
	base := "http://" + cfg.ListenAddr + "/drain"
	reply, err := drainCall(ctx, http.MethodPost, base)
	if err != nil {
		return err
	}
	last := time.Time{}
	for !reply.Done {
		if !*quiet && time.Since(last) >= 5*time.Second {
			fmt.Fprintf(os.Stderr, "draining: %d queued, %d in flight, %d held, %d waiting for a peer (%d live peers)\n",
				reply.Pck, reply.Bak, reply.Held, reply.Waiting, reply.Peers)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain not finished after MMSIDECAR_DRAIN_TIMEOUT=%s: %d queued, %d in flight, %d held, %d waiting", cfg.DrainTimeout, reply.Pck, reply.Bak, reply.Held, reply.Waiting)
		case <-time.After(500 * time.Millisecond):
		}
		if reply, err = drainCall(ctx, http.MethodGet, base); err != nil {
			return err
		}
	}
	fmt.Println("drained: this node holds nothing")
	return nil
}

func drainCall(ctx context.Context, method, url string) (drainReply, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return drainReply{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return drainReply{}, fmt.Errorf("reach the daemon on MMSIDECAR_LISTEN_ADDR: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var r drainReply
	if err := json.Unmarshal(body, &r); err != nil {
		return drainReply{}, fmt.Errorf("drain: daemon answered %s: %s", resp.Status, body)
	}
	if r.Error != "" {
		return r, errors.New("drain: " + r.Error)
	}
	return r, nil
}
