package deploytest

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// TestVariablesExist checks that every MMSIDECAR_ name mentioned under
// deploy/ and in docs/operations.md is a variable cmd/mmsidecar reads.
func TestVariablesExist(t *testing.T) {
	known := knownVars(t)
	var total int
	for _, rel := range deployFiles(t) {
		for _, v := range mentionedVars(readRepoFile(t, rel)) {
			total++
			if !known[v] {
				t.Errorf("%s mentions %s, which cmd/mmsidecar/config.go does not define", rel, v)
			}
		}
	}
	if total < 20 {
		t.Errorf("only %d variable mentions found under deploy/: is the scan broken?", total)
	}
}

// metricInfo is what the code defines for one metric.
type metricInfo struct {
	labels map[string]bool
}

// codeMetrics parses the metric names and label names defined in the
// repository's Go code (prometheus Opts with Name: "mmsidecar_...", and
// the label list of a *Vec), and collects the Go string literals, which
// label values must come from.
func codeMetrics(t *testing.T) (map[string]metricInfo, map[string]bool) {
	t.Helper()
	root := repoRoot(t)
	def := regexp.MustCompile(`Name:\s*"(mmsidecar_[a-z0-9_]+)"(?:[^{}]|\{[^{}]*\})*\}(?:, \[\]string\{([^}]*)\})?`)
	lit := regexp.MustCompile(`"([a-z_]+)"`)
	metrics := map[string]metricInfo{}
	literals := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "deploy" || strings.HasPrefix(d.Name(), ".")) && p != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range def.FindAllSubmatch(src, -1) {
			info := metricInfo{labels: map[string]bool{}}
			for _, l := range lit.FindAllSubmatch(m[2], -1) {
				info.labels[string(l[1])] = true
			}
			metrics[string(m[1])] = info
		}
		for _, l := range lit.FindAllSubmatch(src, -1) {
			literals[string(l[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(metrics) < 20 || len(metrics["mmsidecar_fences_total"].labels) == 0 {
		t.Fatalf("parsed only %d metric definitions (%v): is the pattern broken?", len(metrics), metrics)
	}
	return metrics, literals
}

// alertRules is a Prometheus rule file.
type alertRules struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval,omitempty"`
		Rules    []struct {
			Alert         string            `json:"alert,omitempty"`
			Record        string            `json:"record,omitempty"`
			Expr          string            `json:"expr"`
			For           string            `json:"for,omitempty"`
			KeepFiringFor string            `json:"keep_firing_for,omitempty"`
			Labels        map[string]string `json:"labels,omitempty"`
			Annotations   map[string]string `json:"annotations,omitempty"`
		} `json:"rules"`
	} `json:"groups"`
}

var (
	metricRef   = regexp.MustCompile(`\bmmsidecar_[a-z0-9_]+\b`)
	selectorRef = regexp.MustCompile(`\b(mmsidecar_[a-z0-9_]+)\{([^}]*)\}`)
	matcherRef  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
)

// checkMetricRef reports whether name is a defined metric or a histogram
// series of one.
func checkMetricRef(metrics map[string]metricInfo, name string) (metricInfo, bool) {
	if m, ok := metrics[name]; ok {
		return m, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if m, ok := metrics[base]; ok {
				return m, true
			}
		}
	}
	return metricInfo{}, false
}

// TestAlertRules decodes the Prometheus rule file strictly and checks
// that every metric, label and label value its expressions use exists in
// the code.
func TestAlertRules(t *testing.T) {
	metrics, literals := codeMetrics(t)
	data := readRepoFile(t, "deploy/prometheus/mmsidecar-alerts.yaml")
	var rules alertRules
	if err := yaml.UnmarshalStrict([]byte(data), &rules, func(d *json.Decoder) *json.Decoder {
		d.DisallowUnknownFields()
		return d
	}); err != nil {
		t.Fatalf("rule file: %v", err)
	}
	var n int
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			name := r.Alert + r.Record
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %q: want alert, expr, labels.severity and annotations.summary", name)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("rule %s: for %q: %v", name, r.For, err)
				}
			}
			if !metricRef.MatchString(r.Expr) {
				t.Errorf("rule %s uses no mmsidecar metric", name)
			}
			for _, m := range metricRef.FindAllString(r.Expr, -1) {
				if _, ok := checkMetricRef(metrics, m); !ok {
					t.Errorf("rule %s: metric %s is not defined in the code", name, m)
				}
			}
			for _, sel := range selectorRef.FindAllStringSubmatch(r.Expr, -1) {
				info, _ := checkMetricRef(metrics, sel[1])
				for _, mt := range matcherRef.FindAllStringSubmatch(sel[2], -1) {
					if !info.labels[mt[1]] {
						t.Errorf("rule %s: %s has no label %q (has %v)", name, sel[1], mt[1], keys(info.labels))
					}
					for _, v := range strings.Split(mt[3], "|") {
						if !literals[v] {
							t.Errorf("rule %s: %s{%s%s%q}: %q appears nowhere in the code", name, sel[1], mt[1], mt[2], mt[3], v)
						}
					}
				}
			}
		}
	}
	if n < 5 {
		t.Errorf("only %d rules", n)
	}
}

// TestRunbookMetrics checks that every metric docs/operations.md names is
// defined in the code.
func TestRunbookMetrics(t *testing.T) {
	metrics, _ := codeMetrics(t)
	doc := readRepoFile(t, "docs/operations.md")
	refs := metricRef.FindAllString(doc, -1)
	if len(refs) < 5 {
		t.Errorf("docs/operations.md names only %d metrics", len(refs))
	}
	for _, m := range refs {
		if _, ok := checkMetricRef(metrics, m); !ok {
			t.Errorf("docs/operations.md: metric %s is not defined in the code", m)
		}
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// iamPolicy is an S3/MinIO IAM policy document.
type iamPolicy struct {
	Version   string `json:"Version"`
	Statement []struct {
		Sid       string                         `json:"Sid"`
		Effect    string                         `json:"Effect"`
		Action    []string                       `json:"Action"`
		Resource  []string                       `json:"Resource"`
		Condition map[string]map[string][]string `json:"Condition,omitempty"`
	} `json:"Statement"`
}

// TestMinioPolicy checks deploy/minio/policy.json: only the actions the
// sidecar uses, on exactly the bucket and prefix every deployment uses.
func TestMinioPolicy(t *testing.T) {
	data := readRepoFile(t, "deploy/minio/policy.json")
	dec := json.NewDecoder(bytes.NewReader([]byte(data)))
	dec.DisallowUnknownFields()
	var pol iamPolicy
	if err := dec.Decode(&pol); err != nil {
		t.Fatalf("policy.json: %v", err)
	}
	bucket, prefix := deploymentStore(t)
	allowed := map[string]bool{"s3:ListBucket": true, "s3:GetObject": true, "s3:PutObject": true, "s3:DeleteObject": true,
		"s3:AbortMultipartUpload": true, "s3:ListMultipartUploadParts": true}
	granted := map[string][]string{}
	for _, st := range pol.Statement {
		if st.Effect != "Allow" {
			t.Errorf("statement %s: effect %s", st.Sid, st.Effect)
		}
		for _, a := range st.Action {
			if !allowed[a] {
				t.Errorf("statement %s grants %s, which the sidecar does not need", st.Sid, a)
			}
			granted[a] = append(granted[a], st.Resource...)
			if a == "s3:ListBucket" {
				want := []string{prefix + "/*"}
				if got := st.Condition["StringLike"]["s3:prefix"]; len(got) != 1 || got[0] != want[0] {
					t.Errorf("s3:ListBucket condition s3:prefix %v, want %v", got, want)
				}
			}
		}
	}
	for _, a := range []string{"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} {
		want := "arn:aws:s3:::" + bucket + "/" + prefix + "/*"
		if a == "s3:ListBucket" {
			want = "arn:aws:s3:::" + bucket
		}
		if r := granted[a]; len(r) != 1 || r[0] != want {
			t.Errorf("%s on %v, want exactly %s", a, r, want)
		}
	}
	if pol.Version != "2012-10-17" {
		t.Errorf("Version %q", pol.Version)
	}
}

// deploymentStore returns the bucket and prefix all deployments agree on
// (the defaults when unset).
func deploymentStore(t *testing.T) (bucket, prefix string) {
	t.Helper()
	envs := map[string]map[string]string{"kubernetes": kubernetesSidecarEnv(t)}
	for name, env := range composeSidecars(t, loadCompose(t, "compose.yaml")) {
		envs["compose "+name] = env
	}
	u, err := parseUnit(readRepoFile(t, "deploy/systemd/mmsidecar.service"), true)
	if err != nil {
		t.Fatal(err)
	}
	envs["systemd"] = systemdEnv(t, u)
	pairs := map[string][]string{}
	for name, env := range envs {
		b, p := env["MMSIDECAR_S3_BUCKET"], strings.Trim(env["MMSIDECAR_S3_PREFIX"], "/")
		if b == "" {
			b = "mmsidecar"
		}
		if env["MMSIDECAR_S3_PREFIX"] == "" {
			p = "mmsidecar"
		}
		pairs[b+"/"+p] = append(pairs[b+"/"+p], name)
	}
	if len(pairs) != 1 {
		t.Fatalf("deployments disagree on bucket/prefix: %v", pairs)
	}
	for k := range pairs {
		bucket, prefix, _ = strings.Cut(k, "/")
	}
	p := loadCompose(t, "compose.yaml")
	if b := derefOr(p.Services["minio-init"].Environment["BUCKET"], ""); b != bucket {
		t.Errorf("compose minio-init creates bucket %q, the sidecars use %q", b, bucket)
	}
	return bucket, prefix
}
