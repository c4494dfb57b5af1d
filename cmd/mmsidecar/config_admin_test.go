package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestUnknownVariable: a misspelled variable is a configuration error
// naming the closest valid one (issue 22: MMSIDECAR_S3_ENDPIONT passed
// `check` on the embedded store), for every command that reads the
// configuration.
func TestUnknownVariable(t *testing.T) {
	tests := []struct{ name, want string }{
		{"MMSIDECAR_S3_ENDPIONT", "did you mean MMSIDECAR_S3_ENDPOINT?"},
		{"MMSIDECAR_LEASETTL", "did you mean MMSIDECAR_LEASE_TTL?"},
		{"MMSIDECAR_NODEID", "did you mean MMSIDECAR_NODE_ID?"},
		{"MMSIDECAR_FROBNICATE_EVERYTHING", "is not a variable mmsidecar reads"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1", tc.name, "x:9000"))
			wantConfigError(t, err, tc.name, tc.want)
		})
	}
	t.Run("not for other prefixes", func(t *testing.T) {
		mustLoad(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1", "MMSIDECARS_X", "1", "XMMSIDECAR_Y", "1"))
	})
	queue := t.TempDir()
	for _, cmd := range [][]string{{"check"}, {"status"}, {"run"}, {"config"}, {"health"}, {"drain"}} {
		t.Run(cmd[0], func(t *testing.T) {
			r := runMain(t, map[string]string{"MMSIDECAR_NODE_ID": "n1", "MMSIDECAR_QUEUE_DIR": queue,
				"MMSIDECAR_STORE_DIR": filepath.Join(t.TempDir(), "store"), "MMSIDECAR_S3_ENDPIONT": "127.0.0.1:9"}, cmd...)
			if r.code != exitConfig || !strings.Contains(r.stderr, "MMSIDECAR_S3_ENDPIONT") || !strings.Contains(r.stderr, "MMSIDECAR_S3_ENDPOINT?") {
				t.Errorf("want exit 2 naming the misspelling and the right name:\n%s", r)
			}
		})
	}
}

// TestEndpointURLs: endpoints written as URLs are accepted, their scheme
// sets TLS (issue 22: they were refused with a confusing message).
func TestEndpointURLs(t *testing.T) {
	tests := []struct {
		endpoint, tls string
		wantHost      string
		wantTLS       bool
	}{
		{"http://minio.internal:9000", "", "minio.internal:9000", false},
		{"https://minio.internal:9000", "", "minio.internal:9000", true},
		{"https://minio.internal:9000/", "true", "minio.internal:9000", true},
		{"http://minio.internal:9000", "false", "minio.internal:9000", false},
		{"https://minio.internal", "", "minio.internal:443", true},
		{"http://[::1]:9000", "", "[::1]:9000", false},
		{"minio.internal:9000", "true", "minio.internal:9000", true},
		{"minio.internal:9000", "", "minio.internal:9000", false},
	}
	for _, tc := range tests {
		t.Run(tc.endpoint+" tls="+tc.tls, func(t *testing.T) {
			cfg := mustLoad(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1", "MMSIDECAR_S3_ENDPOINT", tc.endpoint, "MMSIDECAR_S3_TLS", tc.tls,
				"MMSIDECAR_S3_ACCESS_KEY", "a", "MMSIDECAR_S3_SECRET_KEY", "b"))
			if cfg.S3Endpoint != tc.wantHost || cfg.S3TLS != tc.wantTLS {
				t.Errorf("endpoint %q TLS %v, want %q %v", cfg.S3Endpoint, cfg.S3TLS, tc.wantHost, tc.wantTLS)
			}
		})
	}
}

// TestEveryErrorOnce: bad values of several variables are all reported
// in one run, each once, and a rule between a bad value and a good one
// is not reported against a default the user never chose.
func TestEveryErrorOnce(t *testing.T) {
	_, err := load(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1", "MMSIDECAR_LEASE_TTL", "fifteen", "MMSIDECAR_LEASE_MARGIN", "9s",
		"MMSIDECAR_MAX_TRANSFERS", "three", "MMSIDECAR_S3_TLS", "yes please", "MMSIDECAR_MODE", "both", "MMSIDECAR_LOG_LEVEL", "loud"))
	var got []string
	for _, ce := range configErrors(err) {
		got = append(got, ce.Var)
	}
	want := []string{"MMSIDECAR_LEASE_TTL", "MMSIDECAR_LOG_LEVEL", "MMSIDECAR_MAX_TRANSFERS", "MMSIDECAR_MODE", "MMSIDECAR_S3_TLS"}
	if !slices.Equal(got, want) {
		t.Errorf("errors for %v, want each of %v once\n%v", got, want, err)
	}
}

// TestContainerNeedsNodeID: in a container the host name is the
// container's and changes on every recreate, so the default id would
// change with it: the id must be set there (issue 22).
func TestContainerNeedsNodeID(t *testing.T) {
	sign := filepath.Join(t.TempDir(), ".dockerenv")
	saved := containerSigns
	t.Cleanup(func() { containerSigns = saved })
	containerSigns = []string{sign}

	t.Run("no sign", func(t *testing.T) {
		if _, err := load(t, testEnv(t)); err != nil && strings.Contains(err.Error(), "container") {
			t.Errorf("outside a container: %v", err)
		}
	})
	if err := os.WriteFile(sign, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Run("docker", func(t *testing.T) {
		_, err := load(t, testEnv(t))
		wantConfigError(t, err, "MMSIDECAR_NODE_ID", "must be set in a container", sign)
	})
	t.Run("set explicitly", func(t *testing.T) {
		if cfg := mustLoad(t, testEnv(t, "MMSIDECAR_NODE_ID", "mailman-0")); cfg.NodeID != "mailman-0" {
			t.Errorf("node id %q", cfg.NodeID)
		}
	})
	containerSigns = nil
	t.Run("kubernetes", func(t *testing.T) {
		_, err := load(t, testEnv(t, "KUBERNETES_SERVICE_HOST", "10.0.0.1"))
		wantConfigError(t, err, "MMSIDECAR_NODE_ID", "must be set in a container", "KUBERNETES_SERVICE_HOST")
	})
}

// TestConfigCommand: `mmsidecar config` prints every variable with its
// value in effect, its source, its default and its meaning, secrets
// redacted.
func TestConfigCommand(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "sk")
	if err := os.WriteFile(keyFile, []byte("do-not-print-me\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	queue := t.TempDir()
	env := map[string]string{"MMSIDECAR_NODE_ID": "n1", "MMSIDECAR_QUEUE_DIR": queue, "MMSIDECAR_S3_ENDPOINT": "https://minio:9000",
		"MMSIDECAR_S3_ACCESS_KEY": "AKID", "MMSIDECAR_S3_SECRET_KEY_FILE": keyFile, "MMSIDECAR_LEASE_TTL": "30s"}
	r := runMain(t, env, "config", "-json")
	if r.code != 0 {
		t.Fatalf("config -json:\n%s", r)
	}
	if strings.Contains(r.stdout+r.stderr, "do-not-print-me") || strings.Contains(r.stdout, "AKID") {
		t.Fatalf("a secret is shown:\n%s", r)
	}
	var entries []configEntry
	if err := json.Unmarshal([]byte(r.stdout), &entries); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, r.stdout)
	}
	got := map[string]configEntry{}
	for _, e := range entries {
		got[e.Name] = e
		if e.Meaning == "" {
			t.Errorf("%s has no meaning", e.Name)
		}
	}
	if len(entries) != len(settings()) {
		t.Errorf("%d variables printed, %d exist", len(entries), len(settings()))
	}
	want := map[string][2]string{ // value, source
		"MMSIDECAR_NODE_ID":            {"n1", "environment"},
		"MMSIDECAR_LEASE_TTL":          {"30s", "environment"},
		"MMSIDECAR_LEASE_GRACE":        {"5s", "default"},
		"MMSIDECAR_STATE_DIR":          {filepath.Join(queue, ".mmsidecar"), "computed"},
		"MMSIDECAR_S3_ENDPOINT":        {"minio:9000", "environment"},
		"MMSIDECAR_S3_TLS":             {"true", "computed"},
		"MMSIDECAR_S3_ACCESS_KEY":      {redacted, "environment"},
		"MMSIDECAR_S3_SECRET_KEY":      {redacted, "file (MMSIDECAR_S3_SECRET_KEY_FILE)"},
		"MMSIDECAR_S3_CA_FILE":         {"", "unset"},
		"MMSIDECAR_ADMIN_TOKEN_FILE":   {"", "unset"},
		"MMSIDECAR_S3_SECRET_KEY_FILE": {keyFile, "environment"},
	}
	for name, w := range want {
		if e := got[name]; e.Value != w[0] || e.Source != w[1] {
			t.Errorf("%s = %q [%s], want %q [%s]", name, e.Value, e.Source, w[0], w[1])
		}
	}
	if e := got["MMSIDECAR_LEASE_GRACE"]; e.Default != "5s" {
		t.Errorf("default of MMSIDECAR_LEASE_GRACE %q", e.Default)
	}

	r = runMain(t, env, "config")
	for _, s := range []string{"MMSIDECAR_LEASE_TTL = 30s  [environment]", "default: 15s", "renews its lease every TTL/3", "MMSIDECAR_S3_CA_FILE = (not set)  [unset]"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("config lacks %q:\n%s", s, r)
		}
	}
	env["MMSIDECAR_LEASE_GRACE"] = "soon"
	r = runMain(t, env, "config")
	if r.code != exitConfig || !strings.Contains(r.stdout, "MMSIDECAR_LEASE_TTL = 30s") || !strings.Contains(r.stderr, `MMSIDECAR_LEASE_GRACE="soon"`) {
		t.Errorf("with a bad value config prints the variables, then the error, exit 2:\n%s", r)
	}
}

// TestCommandHelp: every command has its own help, through `help CMD`
// and `CMD -h`; --version is the version (issue 22: `help run` printed the
// top-level usage, `run -h` pointed at a file the image lacks, and
// --version was an unknown command).
func TestCommandHelp(t *testing.T) {
	for _, c := range commands() {
		for _, args := range [][]string{{"help", c.name}, {c.name, "-h"}, {c.name, "--help"}} {
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				r := runMain(t, nil, args...)
				if r.code != exitOK || !strings.HasPrefix(r.stderr, "usage: mmsidecar "+c.name) {
					t.Fatalf("want its own usage, exit 0:\n%s", r)
				}
				if (c.name != "config" && strings.Contains(r.stderr, ".env.example")) || !strings.Contains(r.stderr, "mmsidecar config") {
					t.Errorf("help must point at `mmsidecar config`, not at .env.example (not in the image):\n%s", r)
				}
			})
		}
	}
	for _, arg := range []string{"--version", "-version", "-v"} {
		t.Run(arg, func(t *testing.T) {
			r := runMain(t, nil, arg)
			if r.code != exitOK || !strings.HasPrefix(r.stdout, "mmsidecar ") {
				t.Errorf("%s:\n%s", arg, r)
			}
		})
	}
	t.Run("help of an unknown command", func(t *testing.T) {
		if r := runMain(t, nil, "help", "frobnicate"); r.code != exitConfig || !strings.Contains(r.stderr, `unknown command "frobnicate"`) {
			t.Errorf("help frobnicate:\n%s", r)
		}
	})
}
