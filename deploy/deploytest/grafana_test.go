package deploytest

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// grafanaDashboard is the part of Grafana's dashboard model the check
// reads.
type grafanaDashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		GridPos struct {
			H, W, X, Y int
		} `json:"gridPos"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// groupingRef finds the label lists of by (...) and without (...).
var groupingRef = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)

// TestGrafanaDashboard checks deploy/grafana's dashboard: valid JSON,
// every panel queries something, and every metric, label and label value
// its queries use exists in the code (as for the alert rules).
func TestGrafanaDashboard(t *testing.T) {
	metrics, literals := codeMetrics(t)
	data := readRepoFile(t, "deploy/grafana/mmsidecar-dashboard.json")
	var d grafanaDashboard
	dec := json.NewDecoder(bytes.NewReader([]byte(data)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) < 10 {
		t.Fatalf("dashboard %q (uid %q) has %d panels", d.Title, d.UID, len(d.Panels))
	}
	// Labels every series has besides its own: Prometheus's target
	// labels and a histogram's le.
	targetLabels := map[string]bool{"instance": true, "job": true, "le": true}
	ids := map[int]bool{}
	queries := 0
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Title == "" || len(p.Targets) == 0 || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %d %q: title, targets and a grid position within 24 columns are needed", p.ID, p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			names := metricRef.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q names no mmsidecar metric", p.Title, tg.Expr)
			}
			own := map[string]bool{}
			for _, m := range names {
				info, ok := checkMetricRef(metrics, m)
				if !ok {
					t.Errorf("panel %q: metric %s is not defined in the code", p.Title, m)
				}
				for l := range info.labels {
					own[l] = true
				}
			}
			for _, sel := range selectorRef.FindAllStringSubmatch(tg.Expr, -1) {
				info, _ := checkMetricRef(metrics, sel[1])
				for _, mt := range matcherRef.FindAllStringSubmatch(sel[2], -1) {
					if targetLabels[mt[1]] {
						continue
					}
					if !info.labels[mt[1]] {
						t.Errorf("panel %q: %s has no label %q", p.Title, sel[1], mt[1])
					}
					for _, v := range strings.Split(mt[3], "|") {
						if !literals[v] {
							t.Errorf("panel %q: %s{%s%s%q}: %q appears nowhere in the code", p.Title, sel[1], mt[1], mt[2], mt[3], v)
						}
					}
				}
			}
			for _, g := range groupingRef.FindAllStringSubmatch(tg.Expr, -1) {
				for _, l := range strings.Split(g[1], ",") {
					if l = strings.TrimSpace(l); l != "" && !targetLabels[l] && !own[l] {
						t.Errorf("panel %q: groups by %q, which none of %v has", p.Title, l, names)
					}
				}
			}
		}
	}
	for _, v := range d.Templating.List {
		if v.Type == "query" {
			for _, m := range metricRef.FindAllString(string(v.Query), -1) {
				if _, ok := checkMetricRef(metrics, m); !ok {
					t.Errorf("variable %s: metric %s is not defined in the code", v.Name, m)
				}
			}
		}
	}
	t.Logf("%d panels, %d queries checked", len(d.Panels), queries)
}
