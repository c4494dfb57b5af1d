package main

import (
	"context"
	"html/template"
	"net/http"
	"sync"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// clusterView is what the page at / shows, and GET /cluster.json serves:
// the store's view of every node (as `mmsidecar status`) and this
// daemon's own.
type clusterView struct {
	Store      *statusOutput `json:"store,omitempty"`
	StoreError string        `json:"store_error,omitempty"`
	Local      localStatus   `json:"local"`
	// Generated is when this view was put together.
	Generated time.Time `json:"generated"`
}

// clusterCacheFor is how long the store's part of the view is reused: it
// lists every key of the prefix (O(entries)), and a page left open, or
// several, must not turn into a listing loop.
const clusterCacheFor = 5 * time.Second

// clusterCache keeps the last store view; one request refreshes it while
// the others reuse it.
type clusterCache struct {
	mu    sync.Mutex
	at    time.Time
	out   *statusOutput
	err   string
	fresh bool
}

// view returns the cluster view, reading the store when the cached one is
// older than clusterCacheFor.
func (d *daemon) view(ctx context.Context) clusterView {
	c := &d.cluster
	c.mu.Lock()
	if time.Since(c.at) >= clusterCacheFor || !c.fresh {
		rctx, cancel := context.WithTimeout(ctx, 2*d.cfg.S3RequestTimeout)
		cs, err := fence.ReadStatus(rctx, d.st, fence.NewLayout(d.cfg.S3Prefix), d.cfg.LeaseGrace)
		cancel()
		c.at, c.fresh = time.Now(), true
		if err != nil {
			c.out, c.err = nil, err.Error()
		} else {
			out := statusOf(cs)
			c.out, c.err = &out, ""
		}
	}
	v := clusterView{Store: c.out, StoreError: c.err}
	c.mu.Unlock()
	v.Local = d.localStatus()
	v.Generated = time.Now().UTC()
	return v
}

// pageRoutes registers GET / (the cluster page) and GET /cluster.json.
func (d *daemon) pageRoutes() {
	d.http.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'")
		if err := pageTemplate.Execute(w, d.view(r.Context())); err != nil {
			d.log.Debug("cluster page", "err", err)
		}
	}))
	d.http.Handle("GET /cluster.json", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeHTTPJSON(w, http.StatusOK, d.view(r.Context()))
	}))
}

// pageRefresh is how often the page reloads itself.
const pageRefresh = 5 * time.Second

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"age": func(t time.Time, now time.Time) string { return ageOf(t, now) },
	"secs": func(s float64) string {
		if s < 0 {
			return "-"
		}
		return humanDuration(time.Duration(s * float64(time.Second)))
	},
	"since":   func(t time.Time) string { return ageOf(t, time.Now()) },
	"refresh": func() int { return int(pageRefresh / time.Second) },
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mmsidecar {{.Local.Node}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; background: #fff; } th, td { padding: .25em .7em; border: 1px solid #ddd; text-align: left; vertical-align: top; }
th { background: #eee; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.state-live { color: #11691b; font-weight: 600; } .state-dead, .state-expired, .state-fenced { color: #b00020; font-weight: 600; }
.state-draining, .state-settling, .state-starting { color: #8a5a00; font-weight: 600; }
.warn { background: #fff3cd; border: 1px solid #e0b400; padding: .5em .8em; margin: .6em 0; }
.err { background: #fde2e2; border: 1px solid #b00020; padding: .5em .8em; margin: .6em 0; }
.muted { color: #777; } ul.events { padding-left: 1.2em; } ul.events li { margin: .15em 0; }
</style>
</head>
<body>
<h1>mmsidecar: node <span id="node">{{.Local.Node}}</span></h1>
<div class="muted">mode {{.Local.Mode}} &middot; <span id="ready">{{if .Local.Ready}}ready{{else}}NOT READY: {{.Local.NotReady}}{{end}}</span>
&middot; updated <span id="generated" data-time="{{.Generated.Format "2006-01-02T15:04:05.000Z07:00"}}">{{.Generated.Format "15:04:05"}} UTC</span>, every {{refresh}}s</div>
{{range .Local.Warnings}}<div class="warn">{{.}}</div>{{end}}
{{with .Store}}{{range .Warnings}}<div class="warn">{{.}}</div>{{end}}{{end}}

<h2>Nodes</h2>
{{if .StoreError}}<div class="err" id="store-error">the store did not answer: {{.StoreError}}</div>{{end}}
{{with .Store}}
<table id="nodes">
<thead><tr><th>node</th><th>lease state</th><th>epoch</th><th>lease age</th><th>entries</th><th>per queue: entries (oldest)</th></tr></thead>
<tbody>
{{$taken := .Taken}}
{{range .Nodes}}<tr data-node="{{.Node}}">
<td>{{.Node}}</td><td class="state-{{.State}}">{{.State}}</td><td class="n">{{.Epoch}}</td><td class="n">{{secs .LeaseAgeSeconds}}</td><td class="n">{{.Entries}}</td>
<td>{{range .Queues}}<div data-queue="{{.Queue}}">{{.Queue}}: {{.Entries}} ({{age .Oldest $taken}})</div>{{else}}<span class="muted">none</span>{{end}}</td>
</tr>
{{else}}<tr><td colspan="6" class="muted">no node has written to this store yet</td></tr>{{end}}
</tbody>
</table>
<p>claims (transfers in progress and tombstones): <span id="claims">{{.Claims}}</span></p>
{{end}}

<h2>This node ({{.Local.Node}})</h2>
<p>state <span id="local-state" class="state-{{.Local.State}}">{{.Local.State}}</span>, epoch {{.Local.Epoch}};
pending uploads <span id="pending-uploads">{{.Local.PendingUploads}}</span>, pending deletes <span id="pending-deletes">{{.Local.PendingDeletes}}</span></p>
<table id="queues">
<thead><tr><th>queue</th><th>.pck</th><th>.bak</th><th>.psv</th><th>held</th><th>unmirrored</th><th>oldest</th><th>last mirror</th></tr></thead>
<tbody>
{{range $q, $s := .Local.Queues}}<tr data-queue="{{$q}}"><td>{{$q}}</td><td class="n">{{$s.Pck}}</td><td class="n">{{$s.Bak}}</td><td class="n">{{$s.Psv}}</td><td class="n">{{$s.Held}}</td><td class="n">{{$s.Unmirrored}}</td><td>{{since $s.Oldest}}</td><td>{{since $s.LastMirror}}</td></tr>
{{end}}
</tbody>
</table>
{{if .Local.Peers}}<p class="muted">peers as this node sees them: {{range .Local.Peers}}{{.Node}} {{.State}} (epoch {{.Epoch}}, silent {{secs .SilenceSeconds}}); {{end}}</p>{{end}}

<h2>Recent events</h2>
<ul class="events" id="events">
{{range .Local.Events}}<li data-kind="{{.Kind}}"><span class="muted">{{.Time.Format "15:04:05"}}</span> {{.Text}}</li>
{{else}}<li class="muted">none since this daemon started</li>{{end}}
</ul>
<noscript><meta http-equiv="refresh" content="{{refresh}}"></noscript>
<script>
// Reload the page every few seconds, unless the tab is hidden.
setTimeout(function again() {
  if (document.hidden) { setTimeout(again, 1000); return; }
  location.reload();
}, {{refresh}} * 1000);
</script>
</body>
</html>
`))
