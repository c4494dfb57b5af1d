package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// tinyConfig is -quick shrunk further: every workload's code path runs,
// for a second or so each.
func tinyConfig() config {
	return config{
		lagCases:    []lagCase{{4 << 10, 50}},
		lagDuration: time.Second, lagHold: 500 * time.Millisecond,
		hopStep: time.Second, hopLagBound: 2 * time.Second, hopMaxSteps: 2, rawDuration: time.Second, costRate: 20,
		idleTTL: 900 * time.Millisecond, idleFor: 2 * time.Second,
		takeoverCounts: []int{40}, takeoverSurvivors: []int{2}, takeoverTTL: 900 * time.Millisecond,
		scaleEntries: 200, gracefulEntries: 30,
		requestCount: 40,
	}
}

// TestQuickRun runs every workload against a real MinIO and the real
// sidecar binary. It checks that each produced its figures and that the
// sidecar did its job (every entry mirrored, every taken-over entry
// restored on exactly one survivor); it asserts no timing.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs MinIO, several sidecar processes and every workload: not in -short")
	}
	m := storetest.StartMinIO(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var log bytes.Buffer
	tab, err := run(ctx, tinyConfig(), runOptions{only: strings.Join(workloads, ","), minio: m, dir: t.TempDir(),
		lagSystems: "limit,mmsidecar,mc"}, &log)
	if tab != nil {
		var out bytes.Buffer
		tab.print(&out)
		t.Logf("progress:\n%s\ntable:\n%s", log.String(), out.String())
	}
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	find := func(workload, figure string) row {
		t.Helper()
		for _, r := range tab.all() {
			if strings.HasPrefix(r.Workload, workload) && strings.HasPrefix(r.Figure, figure) {
				return r
			}
		}
		t.Fatalf("no row %q / %q", workload, figure)
		return row{}
	}
	tests := []struct {
		name, workload, figure string
		check                  func(row) bool
	}{
		{"sidecar mirrored every entry", "1 lag", "upload lag p50", func(r row) bool {
			return strings.HasSuffix(r.Sidecar, " ms") && !strings.Contains(r.Sidecar, "never")
		}},
		{"limit mirrored every entry", "1 lag", "upload lag p50", func(r row) bool { return strings.HasSuffix(r.Limit, " ms") }},
		{"sidecar deleted copies", "1 lag", "delete lag p99", func(r row) bool { return strings.HasSuffix(r.Sidecar, " ms") }},
		{"raw rate measured", "2 hops", "raw PUT+DELETE", func(r row) bool { return strings.HasSuffix(r.Limit, "/s") && r.Limit != "0/s" }},
		{"a hop rate kept up", "2 hops", "max sustained", func(r row) bool { return strings.HasSuffix(strings.Fields(r.Sidecar)[0], "/s") }},
		{"store cost counted", "3 cost", "store requests per hop", func(r row) bool { return strings.Contains(r.Sidecar, "put ") }},
		{"idle cost counted", "3 cost", "idle requests/min per node, measured", func(r row) bool { return strings.Contains(r.Sidecar, "put ") }},
		{"takeover restored all, once each", "4 takeover", "kill → all restored", func(r row) bool {
			return !strings.HasPrefix(r.Sidecar, "incomplete") && !strings.Contains(r.Met, "two survivors")
		}},
		{"takeover CPU measured", "4 takeover", "CPU, kill → all restored", func(r row) bool {
			return strings.HasPrefix(r.Sidecar, "MinIO ") && strings.Contains(r.Sidecar, "survivors ")
		}},
		{"request cost measured", "6 requests", "MinIO CPU per restored entry", func(r row) bool {
			return strings.Contains(r.Sidecar, " ms: 10,000 entries take ≥ ")
		}},
		{"file costs measured", "6 requests", "CPU to create a file", func(r row) bool {
			c, o, ok := strings.Cut(r.Sidecar, " / ")
			return ok && strings.HasSuffix(c, " ms") && strings.HasSuffix(o, " ms")
		}},
		{"initial sync done", "5 scale", "initial sync", func(r row) bool { return strings.HasSuffix(r.Sidecar, "entries/s)") }},
		{"restart reconciled", "5 scale", "start-up reconcile", func(r row) bool { return strings.HasSuffix(strings.Fields(r.Sidecar)[1], "s") }},
		{"graceful restart restored", "5 scale", "restart after graceful stop (settle", func(r row) bool { return strings.Contains(r.Sidecar, "start → ready") }},
		{"gated stop held nothing", "5 scale", "graceful stop, runner gate on", func(r row) bool { return strings.HasSuffix(r.Sidecar, ", 0 held") }},
		{"gated restart opened the gate", "5 scale", "restart after graceful stop, runner gate on", func(r row) bool {
			return strings.Contains(r.Sidecar, " s (ready ")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := find(tc.workload, tc.figure)
			if !tc.check(r) {
				t.Errorf("row %q / %q: %+v", r.Workload, r.Figure, r)
			}
		})
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP mmsidecar_store_requests_total Store calls.
# TYPE mmsidecar_store_requests_total counter
mmsidecar_store_requests_total{code="ok",op="put"} 10
mmsidecar_store_requests_total{code="PreconditionFailed",op="put"} 2
mmsidecar_store_requests_total{code="ok",op="delete_many"} 1
mmsidecar_uploads_total 7
mmsidecar_mirror_lag_seconds_bucket{le="0.005"} 3
`
	m, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"sum all puts", m.sum("mmsidecar_store_requests_total", `op="put"`), 12},
		{"sum ok puts", m.sum("mmsidecar_store_requests_total", `op="put"`, `code="ok"`), 10},
		{"plain counter", m.sum("mmsidecar_uploads_total"), 7},
		{"ops put", m.storeOps()["put"], 12},
		{"ops delete_many", m.storeOps()["delete_many"], 1},
		{"missing", m.sum("nope"), 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %v, want %v", tc.got, tc.want)
			}
		})
	}
	before, _ := parseMetrics(strings.NewReader(`mmsidecar_store_requests_total{code="ok",op="put"} 4`))
	d, total := opsDelta(before, m)
	if d["put"] != 8 || total != 9 {
		t.Errorf("opsDelta = %v, %v; want put 8, total 9", d, total)
	}
}

func TestPercentiles(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	d := durations{ms(5), ms(1), ms(3), ms(2), ms(4)}
	tests := []struct {
		name string
		p    float64
		want time.Duration
	}{
		{"p50", 50, ms(3)},
		{"p99", 99, ms(5)},
		{"p20", 20, ms(1)},
		{"p100", 100, ms(5)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := d.pct(tc.p); got != tc.want {
				t.Errorf("pct(%v) = %v, want %v", tc.p, got, tc.want)
			}
		})
	}
	if got := (durations{}).pct(50); got != -1 {
		t.Errorf("empty pct = %v, want -1", got)
	}
	// Two of ten never copied: p50 is a real figure, p99 falls among them.
	s := lagStats{up: durations{ms(1), ms(2), ms(3), ms(4), ms(5), ms(6), ms(7), ms(8)}, skippedUp: 2}
	if got, c := s.upPct(50); c || got != ms(5) {
		t.Errorf("upPct(50) = %v, %v; want 5ms, false", got, c)
	}
	if _, c := s.upPct(99); !c {
		t.Error("upPct(99) not censored")
	}
}

func TestComputeLag(t *testing.T) {
	t0 := time.Unix(1000, 0)
	led := newLedger()
	rec := newRecorder()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	// a: copied after 10ms, finished at 1s, deleted 50ms later.
	led.create("a.pck", at(0))
	rec.puts["a.pck"] = at(10 * time.Millisecond)
	led.finish("a.pck", at(time.Second))
	rec.dels["a.pck"] = at(1050 * time.Millisecond)
	// b: finished before any copy.
	led.create("b.pck", at(0))
	led.finish("b.pck", at(20*time.Millisecond))
	// c: copied, its .bak copied too (mc), .pck copy deleted but the .bak
	// copy not yet: not gone from the store.
	led.create("c.pck", at(0))
	rec.puts["c.pck"] = at(time.Millisecond)
	rec.puts["c.bak"] = at(600 * time.Millisecond)
	led.finish("c.pck", at(time.Second))
	rec.dels["c.pck"] = at(700 * time.Millisecond)
	// d: not finished, not copied.
	led.create("d.pck", at(0))
	s := computeLagBound(led, rec, 10*time.Millisecond)
	if len(s.up) != 2 || s.skippedUp != 1 || s.overdueUp != 1 || s.missingUp != 1 || s.missingDel != 1 || len(s.del) != 1 || s.del[0] != 50*time.Millisecond {
		t.Errorf("stats = %+v", s)
	}
	rec.dels["c.bak"] = at(1200 * time.Millisecond)
	s = computeLag(led, rec)
	if s.missingDel != 0 || len(s.del) != 2 || s.del.pct(100) != 200*time.Millisecond {
		t.Errorf("after the .bak delete: %+v", s)
	}
	if settled(led, rec, true) {
		t.Error("settled with d not copied")
	}
}

// TestProxyRecords checks that the proxy forwards requests unchanged and
// records writes and deletes, multi-object deletes included.
func TestProxyRecords(t *testing.T) {
	var hosts []string
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hosts = append(hosts, r.Host)
		io.Copy(io.Discard, r.Body)
		switch r.Method {
		case http.MethodDelete:
			w.WriteHeader(http.StatusNoContent)
		case http.MethodHead:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer upstream.Close()
	p, err := startProxy(strings.TrimPrefix(upstream.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	rec := p.reset()
	do := func(method, path, body string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+p.addr+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	do(http.MethodPut, "/bucket/mmsidecar/q/n/00000001/in/x.pck", "body")
	do(http.MethodHead, "/bucket/y.pck", "")
	do(http.MethodDelete, "/bucket/mc/in/z.pck", "")
	do(http.MethodPost, "/bucket/?delete=", `<Delete><Object><Key>p/a.pck</Key></Object><Object><Key>p/b.pck</Key></Object></Delete>`)
	do(http.MethodGet, "/bucket/?list-type=2&prefix=p", "")
	for _, name := range []string{"x.pck"} {
		if _, ok := rec.putAt(name); !ok {
			t.Errorf("no PUT recorded for %s", name)
		}
	}
	for _, name := range []string{"z.pck", "a.pck", "b.pck"} {
		if _, ok := rec.delAt(name); !ok {
			t.Errorf("no delete recorded for %s", name)
		}
	}
	want := map[string]int{opPut: 1, opHead: 1, opDelete: 1, opDeleteMany: 1, opList: 1}
	got := rec.counts()
	for op, n := range want {
		if got[op] != n {
			t.Errorf("%s: %d requests, want %d (all: %v)", op, got[op], n, got)
		}
	}
	for _, h := range hosts {
		if h != p.addr {
			t.Errorf("upstream saw Host %q, want the proxy's %q (signatures cover it)", h, p.addr)
		}
	}
}

func TestFirstPanic(t *testing.T) {
	log := "some output\npanic: runtime error: invalid memory address or nil pointer dereference\n[signal SIGSEGV]\n\ngoroutine 25 [running]:\ngithub.com/minio/mc/cmd.uploadSourceToTargetURL({_, _}, {...})\n\t/x/common-methods.go:440 +0x138e\n"
	want := "invalid memory address or nil pointer dereference in uploadSourceToTargetURL"
	if got := firstPanic(log); got != want {
		t.Errorf("firstPanic = %q, want %q", got, want)
	}
	if got := firstPanic("exit status 1"); got != "" {
		t.Errorf("firstPanic without a panic = %q", got)
	}
}
