package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLoadConfigTimingRules(t *testing.T) {
	tests := []struct {
		name              string
		ttl, grace, margn string
		wantVar           string
		fragments         []string
	}{
		{"ttl too short", "200ms", "50ms", "50ms", "MMSIDECAR_LEASE_TTL", []string{`"200ms"`, "at least 300ms"}},
		{"zero margin", "15s", "5s", "0s", "MMSIDECAR_LEASE_MARGIN", []string{`"0s"`, "greater than zero"}},
		{"negative margin", "15s", "5s", "-1s", "MMSIDECAR_LEASE_MARGIN", []string{`"-1s"`, "greater than zero"}},
		{"margin half ttl", "15s", "8s", "7.5s", "MMSIDECAR_LEASE_MARGIN", []string{`"7.5s"`, "less than half", "15s", "TTL/3"}},
		{"margin over half", "10s", "9s", "8s", "MMSIDECAR_LEASE_MARGIN", []string{`"8s"`, "less than half", "10s"}},
		{"grace below margin", "15s", "2s", "3s", "MMSIDECAR_LEASE_GRACE", []string{`"2s"`, "at least MMSIDECAR_LEASE_MARGIN (3s)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1",
				"MMSIDECAR_LEASE_TTL", tt.ttl, "MMSIDECAR_LEASE_GRACE", tt.grace, "MMSIDECAR_LEASE_MARGIN", tt.margn))
			wantConfigError(t, err, tt.wantVar, tt.fragments...)
		})
	}
	t.Run("fast but valid", func(t *testing.T) {
		cfg := mustLoad(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1",
			"MMSIDECAR_LEASE_TTL", "300ms", "MMSIDECAR_LEASE_GRACE", "100ms", "MMSIDECAR_LEASE_MARGIN", "100ms"))
		if cfg.LeaseTTL != 300*time.Millisecond {
			t.Errorf("ttl %s", cfg.LeaseTTL)
		}
	})
}

func TestStateDirOnOtherFilesystem(t *testing.T) {
	queueDir := t.TempDir()
	other, err := os.MkdirTemp("/dev/shm", "mmsidecar-state-")
	if err != nil {
		t.Fatalf("this test needs a second filesystem at /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	a, errA := deviceOf(queueDir)
	b, errB := deviceOf(other)
	if errA != nil || errB != nil || a == b {
		t.Fatalf("this test needs /dev/shm on another filesystem than %s (devices %d, %d; %v %v)", queueDir, a, b, errA, errB)
	}
	env := map[string]string{"MMSIDECAR_NODE_ID": "n1", "MMSIDECAR_QUEUE_DIR": queueDir, "MMSIDECAR_STATE_DIR": other}
	_, err = load(t, env)
	wantConfigError(t, err, "MMSIDECAR_STATE_DIR", other, "same filesystem", "rename")

	env["MMSIDECAR_MODE"] = "mirror"
	if _, err := load(t, env); err != nil {
		t.Errorf("mirror mode needs no quarantine, yet: %v", err)
	}
}

func TestFileOwnerNames(t *testing.T) {
	tests := []struct {
		owner            string
		wantUID, wantGID int
	}{
		{"root", 0, 0},
		{"root:root", 0, 0},
		{"0", 0, 0},
		{"0:5", 0, 5},
		{"root:7", 0, 7},
		{"4000000:4000001", 4000000, 4000001},
	}
	for _, tt := range tests {
		t.Run(tt.owner, func(t *testing.T) {
			cfg := mustLoad(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1", "MMSIDECAR_FILE_OWNER", tt.owner))
			if cfg.FileUID != tt.wantUID || cfg.FileGID != tt.wantGID {
				t.Errorf("got %d:%d, want %d:%d", cfg.FileUID, cfg.FileGID, tt.wantUID, tt.wantGID)
			}
		})
	}
}

func TestSecretsNeverShown(t *testing.T) {
	const ak, sk = "AKIA-visible-nowhere", "sk-visible-nowhere"
	cfg := mustLoad(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1", "MMSIDECAR_S3_ENDPOINT", "127.0.0.1:9000",
		"MMSIDECAR_S3_ACCESS_KEY", ak, "MMSIDECAR_S3_SECRET_KEY", sk))
	var logs strings.Builder
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("cfg", "cfg", cfg, "sk", cfg.S3SecretKey)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("cfg", "cfg", *cfg, "sk", cfg.S3SecretKey)
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{
		"%v":   fmt.Sprintf("%v", cfg),
		"%+v":  fmt.Sprintf("%+v", *cfg),
		"%#v":  fmt.Sprintf("%#v", *cfg),
		"%s":   fmt.Sprintf("%s", cfg.S3SecretKey),
		"json": string(js),
		"slog": logs.String(),
	}
	for name, out := range outputs {
		if strings.Contains(out, ak) || strings.Contains(out, sk) {
			t.Errorf("%s shows a secret: %s", name, out)
		}
		if !strings.Contains(out, redacted) {
			t.Errorf("%s does not mark the secret as redacted: %s", name, out)
		}
	}
	for _, name := range []string{"MMSIDECAR_S3_SECRET_KEY", "MMSIDECAR_S3_ACCESS_KEY"} {
		e := &ConfigError{Var: name, Value: "plain-text-secret", Reason: "bad"}
		if strings.Contains(e.Error(), "plain-text-secret") {
			t.Errorf("ConfigError for %s shows its value: %s", name, e)
		}
		if e := newConfigError(name, "plain-text-secret", "bad"); e.Value != redacted {
			t.Errorf("newConfigError keeps the secret in Value: %q", e.Value)
		}
	}
	if e := newConfigError("MMSIDECAR_S3_SECRET_KEY_FILE", "/run/secrets/sk", "bad"); !strings.Contains(e.Error(), "/run/secrets/sk") {
		t.Errorf("a secret file's path is not secret: %s", e)
	}
}

func TestQueueNames(t *testing.T) {
	env := testEnv(t, "MMSIDECAR_NODE_ID", "n1")
	dir := env["MMSIDECAR_QUEUE_DIR"]
	for _, d := range []string{"out", "in", "bad name", "-x"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "virgin"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := mustLoad(t, env) // creates .mmsidecar
	got, err := cfg.QueueNames()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"in", "out"}; !slices.Equal(got, want) {
		t.Errorf("QueueNames() = %v, want %v", got, want)
	}
	env["MMSIDECAR_QUEUES"] = "virgin,archive"
	cfg = mustLoad(t, env)
	if got, _ := cfg.QueueNames(); !slices.Equal(got, []string{"virgin", "archive"}) {
		t.Errorf("explicit QueueNames() = %v", got)
	}
}

// TestEnvExample checks that .env.example is what the settings table
// generates (so it documents exactly the variables Config reads, with
// their real defaults), and that its uncommented values load as they are.
func TestEnvExample(t *testing.T) {
	data, err := os.ReadFile("../../.env.example")
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	if err := writeEnvExample(&want); err != nil {
		t.Fatal(err)
	}
	if string(data) != want.String() {
		got, exp := strings.Split(string(data), "\n"), strings.Split(want.String(), "\n")
		for i := range max(len(got), len(exp)) {
			g, e := "", ""
			if i < len(got) {
				g = got[i]
			}
			if i < len(exp) {
				e = exp[i]
			}
			if g != e {
				t.Fatalf(".env.example:%d is %q, the table makes %q: regenerate it with `go run ./cmd/mmsidecar config -env-example > .env.example`", i+1, g, e)
			}
		}
	}
	line := regexp.MustCompile(`^(# )?(MMSIDECAR_[A-Z0-9_]+)=(.*)$`)
	env := map[string]string{}
	seen := map[string]bool{}
	for _, text := range strings.Split(string(data), "\n") {
		if m := line.FindStringSubmatch(text); m != nil {
			seen[m[2]] = true
			if m[1] == "" {
				env[m[2]] = m[3]
			}
		}
	}
	for _, s := range settings() {
		if !seen[s.Name] {
			t.Errorf("%s is missing from .env.example", s.Name)
		}
	}
	env["MMSIDECAR_QUEUE_DIR"] = t.TempDir()
	env["MMSIDECAR_NODE_ID"] = "n1"
	if _, err := load(t, env); err != nil {
		t.Errorf(".env.example's values do not load: %v", err)
	}
	if n := len(settings()); n < 32 {
		t.Errorf("only %d variables: %v", n, settings())
	}
}

// TestSettingsMatchConfig: every variable Config reads is in the settings
// table, with a meaning, and every table entry is a Config variable.
func TestSettingsMatchConfig(t *testing.T) {
	defer func() {
		if r := recover(); r != nil {
			t.Fatal(r)
		}
	}()
	for _, s := range settings() {
		if len(s.Doc) < 10 {
			t.Errorf("%s has no meaning", s.Name)
		}
	}
}
