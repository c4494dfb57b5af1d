package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// drainReply is the JSON of POST and GET /drain and POST /drain/cancel.
type drainReply struct {
	Draining bool   `json:"draining"`
	Done     bool   `json:"done"`
	Pck      int    `json:"pck"`
	Bak      int    `json:"bak"`
	Held     int    `json:"held"`
	Waiting  int    `json:"waiting"`
	Peers    int    `json:"peers"`
	Error    string `json:"error,omitempty"`
	// Cancelled is set by POST /drain/cancel: a drain was under way.
	Cancelled bool `json:"cancelled,omitempty"`
}

func replyOf(s fence.DrainStatus) drainReply {
	return drainReply{Draining: s.Draining, Done: s.Done, Pck: s.Local.Pck, Bak: s.Local.Bak,
		Held: s.Local.Held, Waiting: s.Waiting, Peers: s.Peers}
}

// routes registers the daemon's own endpoints. POST /drain starts a drain
// and POST /drain/cancel ends one: both change state and need the admin
// token. GET /drain reports on a drain, GET /status is the node's local
// view, GET / the cluster page: read-only, open to probes.
func (d *daemon) routes() {
	needsCluster := func(w http.ResponseWriter) bool {
		if d.node == nil {
			writeHTTPJSON(w, http.StatusConflict, drainReply{Error: "drain needs MMSIDECAR_MODE=cluster"})
			return false
		}
		if name, _, _ := d.phase.get(); name != phaseReady && name != phaseStopping {
			writeHTTPJSON(w, http.StatusServiceUnavailable, drainReply{Error: "the node is not ready yet (" + name + "): try again once /readyz is 200"})
			return false
		}
		return true
	}
	d.http.Handle("POST /drain", d.admin(func(w http.ResponseWriter, r *http.Request) {
		if !needsCluster(w) {
			return
		}
		if err := d.node.TryStartDrain(r.Context()); errors.Is(err, fence.ErrNoPeer) {
			reply := replyOf(d.node.Drain())
			reply.Error = "no live peer to hand entries to: refused, nothing was moved (the entries stay with Mailman on this node)"
			writeHTTPJSON(w, http.StatusConflict, reply)
			return
		}
		d.events.add("drain", "drain started")
		d.mirror.Rescan() // hold every queued entry now, not at the next rescan
		writeHTTPJSON(w, http.StatusAccepted, replyOf(d.node.Drain()))
	}))
	d.http.Handle("POST /drain/cancel", d.admin(func(w http.ResponseWriter, r *http.Request) {
		if !needsCluster(w) {
			return
		}
		cancelled := d.node.CancelDrain(r.Context())
		if cancelled {
			d.events.add("drain", "drain cancelled: held entries go back to Mailman")
		}
		reply := replyOf(d.node.Drain())
		reply.Cancelled = cancelled
		writeHTTPJSON(w, http.StatusOK, reply)
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
	d.pageRoutes()
}

// admin wraps a state-changing handler: the request must carry the admin
// token (MMSIDECAR_ADMIN_TOKEN_FILE) as "Authorization: Bearer <token>".
// Without a configured token every such request is refused.
func (d *daemon) admin(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		want := d.cfg.AdminToken.Reveal()
		if want == "" {
			writeHTTPJSON(w, http.StatusForbidden, drainReply{Error: "state-changing requests are refused: the daemon has no MMSIDECAR_ADMIN_TOKEN_FILE"})
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(want)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mmsidecar"`)
			writeHTTPJSON(w, http.StatusUnauthorized, drainReply{Error: "missing or wrong admin token (Authorization: Bearer <the secret in MMSIDECAR_ADMIN_TOKEN_FILE>)"})
			return
		}
		h(w, r)
	})
}

func writeHTTPJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// runDrain asks the local daemon to drain and waits until it holds
// nothing: no queued, held or in-flight entry, and nothing left in its
// namespace for a peer to pick up. Exit 0 when done, 1 on timeout or when
// no live peer can take the entries. -cancel ends a drain instead.
func runDrain(ctx context.Context, args []string) error {
	fs := newFlagSet("drain", "Hand this node's unstarted backlog to the other live nodes, wait for\nentries in flight to finish, and exit 0 when the node holds nothing. With\nno live peer it refuses at once and moves nothing (exit 1). -cancel\nends a drain: the entries still held go back to Mailman on this node.\nTalks to the daemon on MMSIDECAR_LISTEN_ADDR with the secret in\nMMSIDECAR_ADMIN_TOKEN_FILE.")
	quiet := fs.Bool("q", false, "print only the final line")
	cancelIt := fs.Bool("cancel", false, "cancel a drain under way instead of starting one")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfigWithToken(ctx)
	if err != nil {
		return err
	}
	if cfg.AdminToken == "" {
		return newConfigError("MMSIDECAR_ADMIN_TOKEN_FILE", "", "drain changes the daemon's state and needs the daemon's admin secret: set it to the file the daemon reads")
	}
	ctx, stop := interruptContext(ctx)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.DrainTimeout)
	defer cancel()
	base := "http://" + cfg.ListenAddr + "/drain"
	if *cancelIt {
		reply, err := drainCall(ctx, http.MethodPost, base+"/cancel", cfg.AdminToken)
		if err != nil {
			return err
		}
		if !reply.Cancelled {
			fmt.Println("no drain was under way")
			return nil
		}
		fmt.Printf("drain cancelled: %d held entries go back to Mailman on this node\n", reply.Held)
		return nil
	}
	reply, err := drainCall(ctx, http.MethodPost, base, cfg.AdminToken)
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
			return fmt.Errorf("drain not finished after MMSIDECAR_DRAIN_TIMEOUT=%s: %d queued, %d in flight, %d held, %d waiting (mmsidecar drain -cancel gives the held ones back to Mailman)", cfg.DrainTimeout, reply.Pck, reply.Bak, reply.Held, reply.Waiting)
		case <-time.After(500 * time.Millisecond):
		}
		if reply, err = drainCall(ctx, http.MethodGet, base, ""); err != nil {
			return err
		}
	}
	fmt.Println("drained: this node holds nothing")
	return nil
}

// drainCall sends one drain request, with the admin token when given.
func drainCall(ctx context.Context, method, url string, token Secret) (drainReply, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return drainReply{}, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token.Reveal())
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return drainReply{}, fmt.Errorf("no daemon answers at MMSIDECAR_LISTEN_ADDR: %w", err)
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
