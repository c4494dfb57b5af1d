package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

func httpDo(ctx context.Context, method, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return resp.StatusCode, string(body), err
}

// sample is one Prometheus sample.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// metricSet is a sidecar's /metrics, parsed.
type metricSet []sample

// metrics fetches and parses the node's /metrics.
func (n *node) metrics() (metricSet, error) {
	code, body, err := httpGet(n.addr, "/metrics")
	if err != nil {
		return nil, fmt.Errorf("metrics of %s: %w", n.id, err)
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("metrics of %s: HTTP %d", n.id, code)
	}
	return parseMetrics(body)
}

// mustMetrics is metrics, failing the test on error.
func (n *node) mustMetrics() metricSet {
	n.c.t.Helper()
	m, err := n.metrics()
	if err != nil {
		n.c.t.Fatal(err)
	}
	return m
}

// parseMetrics parses the Prometheus text format (as client_golang
// writes it: no timestamps, no spaces in label values).
func parseMetrics(text string) (metricSet, error) {
	var out metricSet
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			return nil, fmt.Errorf("metrics: bad line %q", line)
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics: bad value in %q", line)
		}
		s := sample{name: line[:sp], labels: map[string]string{}, value: v}
		if i := strings.IndexByte(s.name, '{'); i >= 0 {
			for _, kv := range strings.Split(strings.TrimSuffix(s.name[i+1:], "}"), ",") {
				k, v, ok := strings.Cut(kv, "=")
				if ok {
					s.labels[k] = strings.Trim(v, `"`)
				}
			}
			s.name = s.name[:i]
		}
		out = append(out, s)
	}
	return out, nil
}

// sum adds up the samples of name whose labels match the given key,
// value pairs.
func (m metricSet) sum(name string, match ...string) float64 {
	total := 0.0
next:
	for _, s := range m {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(match); i += 2 {
			if s.labels[match[i]] != match[i+1] {
				continue next
			}
		}
		total += s.value
	}
	return total
}

// byLabel sums name's samples by the value of one label.
func (m metricSet) byLabel(name, label string) map[string]float64 {
	out := make(map[string]float64)
	for _, s := range m {
		if s.name == name {
			out[s.labels[label]] += s.value
		}
	}
	return out
}

// clusterSum sums a metric over several nodes' metric sets.
func clusterSum(sets []metricSet, name string, match ...string) float64 {
	t := 0.0
	for _, s := range sets {
		t += s.sum(name, match...)
	}
	return t
}

// logRecord is one JSON log line of a sidecar.
type logRecord struct {
	Time  time.Time `json:"time"`
	Level string    `json:"level"`
	Msg   string    `json:"msg"`
	Node  string    `json:"node"`
	Entry string    `json:"entry"`
	Epoch uint64    `json:"epoch"`
	Err   string    `json:"err"`
	Peer  string    `json:"peer"`
	From  string    `json:"from"`
	// How is a restore's kind: takeover, handoff or preserved.
	How string `json:"how"`
	// TakenOver is set on "lease acquired" when the node found itself
	// declared dead (or its lease gone).
	TakenOver bool `json:"taken_over"`
}

// readLog parses a sidecar's JSON log, skipping lines that are not JSON.
func readLog(path string) []logRecord {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []logRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r logRecord
		if json.Unmarshal(sc.Bytes(), &r) == nil && !r.Time.IsZero() {
			out = append(out, r)
		}
	}
	return out
}

// logTimes returns the times of the records of the given nodes whose
// message is msg, at or after since, sorted.
func logTimes(nodes []*node, msg string, since time.Time) []time.Time {
	var out []time.Time
	for _, n := range nodes {
		for _, r := range readLog(n.sidecarLog) {
			if r.Msg == msg && !r.Time.Before(since) {
				out = append(out, r.Time)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// workerG4 returns the worker's reports of in-flight files that vanished.
func (n *node) workerG4() []string {
	data, err := os.ReadFile(n.workerLog)
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, g4Marker) {
			out = append(out, n.id+": "+l)
		}
	}
	return out
}

// fenceEnds returns the times the nodes finished a fence's quarantine
// after since: "fenced", or "fence: quarantine incomplete" when some
// entry could not be moved.
func fenceEnds(nodes []*node, since time.Time) []time.Time {
	out := append(logTimes(nodes, "fenced", since), logTimes(nodes, "fence: quarantine incomplete", since)...)
	sort.Slice(out, func(i, j int) bool { return out[i].Before(out[j]) })
	return out
}

// nodeState returns the state the node's GET /status reports.
func (n *node) nodeState() (string, error) {
	code, body, err := httpGet(n.addr, "/status")
	if err != nil {
		return "", err
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("status of %s: HTTP %d", n.id, code)
	}
	var st struct {
		State string `json:"state"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return "", fmt.Errorf("status of %s: %w", n.id, err)
	}
	return st.State, nil
}

// copies counts the mirror copies in the store, by namespace.
func (c *cluster) copies(ctx context.Context) (map[string]int, error) {
	out := make(map[string]int)
	err := c.st.List(ctx, c.layout.Prefix()+"q/", func(in store.Info) error {
		if r, ok := c.layout.ParseMirrorKey(in.Key); ok {
			out[r.Node]++
		} else {
			out["?"]++
		}
		return nil
	})
	return out, err
}

// copyKeys returns "<queue>/<base>" of every copy in node's namespace.
func (c *cluster) copyKeys(ctx context.Context, node string) (map[string]bool, error) {
	out := make(map[string]bool)
	err := c.st.List(ctx, c.layout.NodePrefix(node), func(in store.Info) error {
		if r, ok := c.layout.ParseMirrorKey(in.Key); ok {
			out[r.Entry.Queue+"/"+r.Entry.Base] = true
		}
		return nil
	})
	return out, err
}
