package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// testEnv returns a minimal valid environment: a fresh queue directory.
func testEnv(t *testing.T, kv ...string) map[string]string {
	t.Helper()
	env := map[string]string{"MMSIDECAR_QUEUE_DIR": t.TempDir()}
	for i := 0; i+1 < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	return env
}

func load(t *testing.T, env map[string]string) (*Config, error) {
	t.Helper()
	return LoadConfig(context.Background(), env)
}

func mustLoad(t *testing.T, env map[string]string) *Config {
	t.Helper()
	cfg, err := load(t, env)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	return cfg
}

// configErrors returns every *ConfigError in err, joined or not.
func configErrors(err error) []*ConfigError {
	var out []*ConfigError
	var walk func(error)
	walk = func(e error) {
		var ce *ConfigError
		if errors.As(e, &ce) && ce == e {
			out = append(out, ce)
			return
		}
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		if u := errors.Unwrap(e); u != nil {
			walk(u)
		}
	}
	walk(err)
	return out
}

// wantConfigError asserts that err holds a ConfigError for name whose
// message contains every fragment.
func wantConfigError(t *testing.T, err error, name string, fragments ...string) *ConfigError {
	t.Helper()
	if err == nil {
		t.Fatalf("LoadConfig succeeded, want an error for %s", name)
	}
	for _, ce := range configErrors(err) {
		if ce.Var != name {
			continue
		}
		msg := ce.Error()
		for _, f := range fragments {
			if !strings.Contains(msg, f) {
				t.Errorf("error %q does not contain %q", msg, f)
			}
		}
		return ce
	}
	t.Fatalf("error %q has no ConfigError for %s", err, name)
	return nil
}

func TestLoadConfigDefaults(t *testing.T) {
	env := testEnv(t)
	queueDir := env["MMSIDECAR_QUEUE_DIR"]
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	if !fence.ValidName(host) {
		_, err := load(t, env)
		wantConfigError(t, err, "MMSIDECAR_NODE_ID", host)
		env["MMSIDECAR_NODE_ID"] = "n1"
		host = "n1"
	}
	cfg := mustLoad(t, env)
	var st syscall.Stat_t
	if err := syscall.Stat(queueDir, &st); err != nil {
		t.Fatal(err)
	}
	want := Config{
		NodeID:              host,
		QueueDir:            queueDir,
		StateDir:            filepath.Join(queueDir, ".mmsidecar"),
		Mode:                ModeCluster,
		FileUID:             int(st.Uid),
		FileGID:             int(st.Gid),
		S3Bucket:            "mmsidecar",
		S3Prefix:            "mmsidecar",
		S3Region:            "us-east-1",
		S3RequestTimeout:    10 * time.Second,
		StoreDir:            "/var/lib/mmsidecar/store",
		LeaseTTL:            15 * time.Second,
		LeaseGrace:          5 * time.Second,
		LeaseMargin:         3 * time.Second,
		RescanInterval:      60 * time.Second,
		DeleteBatchDelay:    100 * time.Millisecond,
		ShutdownTimeout:     10 * time.Second,
		DrainTimeout:        10 * time.Minute,
		MaxTransfers:        3,
		UploadConcurrency:   16,
		TakeoverConcurrency: 16,
		ListenAddr:          "127.0.0.1:9464",
		LogLevel:            "info",
		LogFormat:           "text",
	}
	cfg.meta = nil
	if !reflect.DeepEqual(*cfg, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", *cfg, want)
	}
	if _, err := os.Stat(cfg.StateDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadConfig created the state dir (only run may: issue 22): %v", err)
	}
	if _, err := os.Stat(cfg.StoreDir); err == nil && cfg.StoreDir != "/var/lib/mmsidecar/store" {
		t.Errorf("LoadConfig created the store dir")
	}
}

// selfSignedPEM writes a CA certificate and returns its path.
func selfSignedPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mmsidecar test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadConfigEveryVariable(t *testing.T) {
	queueDir := t.TempDir()
	stateDir := filepath.Join(queueDir, "state", "nested")
	ca := selfSignedPEM(t)
	uid, gid := os.Getuid(), os.Getgid()
	env := map[string]string{
		"MMSIDECAR_NODE_ID":              "node-7.example",
		"MMSIDECAR_QUEUE_DIR":            queueDir,
		"MMSIDECAR_QUEUES":               "in, out ,bounces",
		"MMSIDECAR_STATE_DIR":            stateDir,
		"MMSIDECAR_MODE":                 "mirror",
		"MMSIDECAR_FILE_OWNER":           fmt.Sprintf("%d:%d", uid+1000, gid+2000),
		"MMSIDECAR_S3_ENDPOINT":          "minio.internal:9000",
		"MMSIDECAR_S3_BUCKET":            "mail.queues-1",
		"MMSIDECAR_S3_PREFIX":            "site/a",
		"MMSIDECAR_S3_REGION":            "eu-west-3",
		"MMSIDECAR_S3_ACCESS_KEY":        "AKIDEXAMPLE",
		"MMSIDECAR_S3_SECRET_KEY":        "s3cr3t/with+chars",
		"MMSIDECAR_S3_TLS":               "true",
		"MMSIDECAR_S3_CA_FILE":           ca,
		"MMSIDECAR_S3_REQUEST_TIMEOUT":   "2500ms",
		"MMSIDECAR_STORE_DIR":            "/srv/store",
		"MMSIDECAR_LEASE_TTL":            "30s",
		"MMSIDECAR_LEASE_GRACE":          "8s",
		"MMSIDECAR_LEASE_MARGIN":         "4s",
		"MMSIDECAR_RESCAN_INTERVAL":      "2m",
		"MMSIDECAR_DELETE_BATCH_DELAY":   "0s",
		"MMSIDECAR_SHUTDOWN_TIMEOUT":     "45s",
		"MMSIDECAR_DRAIN_TIMEOUT":        "1h",
		"MMSIDECAR_MAX_TRANSFERS":        "5",
		"MMSIDECAR_UPLOAD_CONCURRENCY":   "256",
		"MMSIDECAR_TAKEOVER_CONCURRENCY": "64",
		"MMSIDECAR_ALLOW_UNSAFE_STORE":   "true",
		"MMSIDECAR_RUNNER_GATE":          "true",
		"MMSIDECAR_LISTEN_ADDR":          "[::1]:0",
		"MMSIDECAR_LOG_LEVEL":            "debug",
		"MMSIDECAR_LOG_FORMAT":           "json",
	}
	// Every variable but the _FILE forms (tested separately, since they
	// exclude their plain forms) must be exercised here.
	for _, v := range settings() {
		if _, ok := env[v.Name]; !ok && !strings.HasSuffix(v.Name, "_FILE") {
			t.Errorf("test does not set %s", v.Name)
		}
	}
	cfg := mustLoad(t, env)
	want := Config{
		NodeID:              "node-7.example",
		QueueDir:            queueDir,
		Queues:              []string{"in", "out", "bounces"},
		StateDir:            stateDir,
		Mode:                ModeMirror,
		FileOwner:           env["MMSIDECAR_FILE_OWNER"],
		FileUID:             uid + 1000,
		FileGID:             gid + 2000,
		S3Endpoint:          "minio.internal:9000",
		S3Bucket:            "mail.queues-1",
		S3Prefix:            "site/a",
		S3Region:            "eu-west-3",
		S3AccessKey:         "AKIDEXAMPLE",
		S3SecretKey:         "s3cr3t/with+chars",
		S3TLS:               true,
		S3CAFile:            ca,
		S3RequestTimeout:    2500 * time.Millisecond,
		StoreDir:            "/srv/store",
		LeaseTTL:            30 * time.Second,
		LeaseGrace:          8 * time.Second,
		LeaseMargin:         4 * time.Second,
		RescanInterval:      2 * time.Minute,
		DeleteBatchDelay:    0,
		ShutdownTimeout:     45 * time.Second,
		DrainTimeout:        time.Hour,
		MaxTransfers:        5,
		UploadConcurrency:   256,
		TakeoverConcurrency: 64,
		AllowUnsafeStore:    true,
		RunnerGate:          true,
		ListenAddr:          "[::1]:0",
		LogLevel:            "debug",
		LogFormat:           "json",
	}
	cfg.meta = nil
	if !reflect.DeepEqual(*cfg, want) {
		t.Errorf("parsed:\n got %#v\nwant %#v", *cfg, want)
	}
	if _, err := os.Stat(stateDir); err == nil {
		t.Errorf("mirror mode created the state dir %s", stateDir)
	}
}

func TestLoadConfigEmptyMeansDefault(t *testing.T) {
	cfg := mustLoad(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1", "MMSIDECAR_LEASE_TTL", "", "MMSIDECAR_MODE", "", "MMSIDECAR_S3_BUCKET", ""))
	if cfg.LeaseTTL != 15*time.Second || cfg.Mode != ModeCluster || cfg.S3Bucket != "mmsidecar" {
		t.Errorf("empty values did not take the defaults: ttl=%s mode=%s bucket=%s", cfg.LeaseTTL, cfg.Mode, cfg.S3Bucket)
	}
}

func TestLoadConfigSecretFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ak := write("ak", "FILEACCESS\n")
	sk := write("sk", "file secret with spaces \r\n")
	empty := write("empty", "\n")
	base := func(kv ...string) map[string]string {
		return testEnv(t, append([]string{"MMSIDECAR_NODE_ID", "n1", "MMSIDECAR_S3_ENDPOINT", "127.0.0.1:9000"}, kv...)...)
	}

	t.Run("files", func(t *testing.T) {
		cfg := mustLoad(t, base("MMSIDECAR_S3_ACCESS_KEY_FILE", ak, "MMSIDECAR_S3_SECRET_KEY_FILE", sk))
		if got := cfg.S3AccessKey.Reveal(); got != "FILEACCESS" {
			t.Errorf("access key %q", got)
		}
		if got := cfg.S3SecretKey.Reveal(); got != "file secret with spaces " {
			t.Errorf("secret key %q", got)
		}
	})
	t.Run("file and plain mixed", func(t *testing.T) {
		cfg := mustLoad(t, base("MMSIDECAR_S3_ACCESS_KEY", "PLAIN", "MMSIDECAR_S3_SECRET_KEY_FILE", sk))
		if cfg.S3AccessKey.Reveal() != "PLAIN" || cfg.S3SecretKey.Reveal() != "file secret with spaces " {
			t.Errorf("got %q %q", cfg.S3AccessKey.Reveal(), cfg.S3SecretKey.Reveal())
		}
	})
	t.Run("both set", func(t *testing.T) {
		_, err := load(t, base("MMSIDECAR_S3_ACCESS_KEY", "AK", "MMSIDECAR_S3_SECRET_KEY", "topsecretvalue", "MMSIDECAR_S3_SECRET_KEY_FILE", sk))
		ce := wantConfigError(t, err, "MMSIDECAR_S3_SECRET_KEY", "MMSIDECAR_S3_SECRET_KEY_FILE", "set only one", redacted)
		if strings.Contains(err.Error(), "topsecretvalue") || ce.Value != redacted {
			t.Errorf("secret echoed: %q (Value %q)", err, ce.Value)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		missing := filepath.Join(dir, "nope")
		_, err := load(t, base("MMSIDECAR_S3_ACCESS_KEY_FILE", missing, "MMSIDECAR_S3_SECRET_KEY", "x"))
		wantConfigError(t, err, "MMSIDECAR_S3_ACCESS_KEY_FILE", missing, "cannot read")
	})
	t.Run("empty file", func(t *testing.T) {
		_, err := load(t, base("MMSIDECAR_S3_ACCESS_KEY", "x", "MMSIDECAR_S3_SECRET_KEY_FILE", empty))
		wantConfigError(t, err, "MMSIDECAR_S3_SECRET_KEY_FILE", empty, "empty")
	})
	t.Run("endpoint without credentials", func(t *testing.T) {
		_, err := load(t, base())
		ce := wantConfigError(t, err, "MMSIDECAR_S3_ACCESS_KEY", "MMSIDECAR_S3_ACCESS_KEY is not set", "MMSIDECAR_S3_ACCESS_KEY_FILE")
		wantConfigError(t, err, "MMSIDECAR_S3_SECRET_KEY", "MMSIDECAR_S3_SECRET_KEY is not set")
		// An unset key is not a secret to hide (issue 22).
		if strings.Contains(err.Error(), redacted) || ce.Value != "" {
			t.Errorf("an unset key shown as %q: %v", redacted, err)
		}
	})
	t.Run("unreadable file is one error", func(t *testing.T) {
		missing := filepath.Join(dir, "nope")
		_, err := load(t, base("MMSIDECAR_S3_ACCESS_KEY_FILE", missing, "MMSIDECAR_S3_SECRET_KEY_FILE", missing))
		errs := configErrors(err)
		if len(errs) != 2 || errs[0].Var != "MMSIDECAR_S3_ACCESS_KEY_FILE" || errs[1].Var != "MMSIDECAR_S3_SECRET_KEY_FILE" {
			t.Errorf("errors %v, want exactly one per unreadable file", err)
		}
	})
}

func TestLoadConfigBadValues(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		kv        []string
		wantVar   string
		fragments []string
	}{
		{"duration syntax", []string{"MMSIDECAR_LEASE_TTL", "15 seconds"}, "MMSIDECAR_LEASE_TTL", []string{`"15 seconds"`, "duration"}},
		{"bool syntax", []string{"MMSIDECAR_S3_TLS", "yes please"}, "MMSIDECAR_S3_TLS", []string{`"yes please"`, "true or false"}},
		{"int syntax", []string{"MMSIDECAR_MAX_TRANSFERS", "three"}, "MMSIDECAR_MAX_TRANSFERS", []string{`"three"`, "whole number"}},
		{"max transfers zero", []string{"MMSIDECAR_MAX_TRANSFERS", "0"}, "MMSIDECAR_MAX_TRANSFERS", []string{`"0"`, "at least 1"}},
		{"concurrency high", []string{"MMSIDECAR_UPLOAD_CONCURRENCY", "257"}, "MMSIDECAR_UPLOAD_CONCURRENCY", []string{`"257"`, "between 1 and 256"}},
		{"concurrency zero", []string{"MMSIDECAR_UPLOAD_CONCURRENCY", "0"}, "MMSIDECAR_UPLOAD_CONCURRENCY", []string{`"0"`}},
		{"takeover concurrency high", []string{"MMSIDECAR_TAKEOVER_CONCURRENCY", "300"}, "MMSIDECAR_TAKEOVER_CONCURRENCY", []string{`"300"`, "between 1 and 256"}},
		{"mode", []string{"MMSIDECAR_MODE", "both"}, "MMSIDECAR_MODE", []string{`"both"`, "cluster", "mirror"}},
		{"node id", []string{"MMSIDECAR_NODE_ID", "a/b"}, "MMSIDECAR_NODE_ID", []string{`"a/b"`}},
		{"node id dot", []string{"MMSIDECAR_NODE_ID", ".."}, "MMSIDECAR_NODE_ID", []string{`".."`}},
		{"queue name", []string{"MMSIDECAR_QUEUES", "in,../etc"}, "MMSIDECAR_QUEUES", []string{`"in,../etc"`, `"../etc"`}},
		{"queue twice", []string{"MMSIDECAR_QUEUES", "in,out,in"}, "MMSIDECAR_QUEUES", []string{"twice"}},
		{"queue dir missing", []string{"MMSIDECAR_QUEUE_DIR", missing}, "MMSIDECAR_QUEUE_DIR", []string{missing, "existing"}},
		{"queue dir file", []string{"MMSIDECAR_QUEUE_DIR", notDir}, "MMSIDECAR_QUEUE_DIR", []string{notDir, "not a directory"}},
		{"unknown user", []string{"MMSIDECAR_FILE_OWNER", "no-such-user-xyz"}, "MMSIDECAR_FILE_OWNER", []string{"no-such-user-xyz", "unknown user"}},
		{"unknown group", []string{"MMSIDECAR_FILE_OWNER", "0:no-such-group-xyz"}, "MMSIDECAR_FILE_OWNER", []string{"unknown group"}},
		{"uid without passwd entry", []string{"MMSIDECAR_FILE_OWNER", "4000000"}, "MMSIDECAR_FILE_OWNER", []string{"uid:gid"}},
		{"endpoint url with a path", []string{"MMSIDECAR_S3_ENDPOINT", "http://minio:9000/mmsidecar", "MMSIDECAR_S3_ACCESS_KEY", "a", "MMSIDECAR_S3_SECRET_KEY", "b"}, "MMSIDECAR_S3_ENDPOINT", []string{"http://minio:9000/mmsidecar", "MMSIDECAR_S3_BUCKET"}},
		{"endpoint scheme", []string{"MMSIDECAR_S3_ENDPOINT", "s3://minio:9000", "MMSIDECAR_S3_ACCESS_KEY", "a", "MMSIDECAR_S3_SECRET_KEY", "b"}, "MMSIDECAR_S3_ENDPOINT", []string{"s3://minio:9000", "https://"}},
		{"https endpoint with TLS off", []string{"MMSIDECAR_S3_ENDPOINT", "https://minio:9000", "MMSIDECAR_S3_TLS", "false", "MMSIDECAR_S3_ACCESS_KEY", "a", "MMSIDECAR_S3_SECRET_KEY", "b"}, "MMSIDECAR_S3_TLS", []string{"https://minio:9000", "contradicts"}},
		{"http endpoint with TLS on", []string{"MMSIDECAR_S3_ENDPOINT", "http://minio:9000", "MMSIDECAR_S3_TLS", "true", "MMSIDECAR_S3_ACCESS_KEY", "a", "MMSIDECAR_S3_SECRET_KEY", "b"}, "MMSIDECAR_S3_TLS", []string{"http://minio:9000", "contradicts"}},
		{"bucket", []string{"MMSIDECAR_S3_ENDPOINT", "m:9000", "MMSIDECAR_S3_BUCKET", "Bad_Bucket", "MMSIDECAR_S3_ACCESS_KEY", "a", "MMSIDECAR_S3_SECRET_KEY", "b"}, "MMSIDECAR_S3_BUCKET", []string{"Bad_Bucket"}},
		{"prefix", []string{"MMSIDECAR_S3_PREFIX", "a//b"}, "MMSIDECAR_S3_PREFIX", []string{`"a//b"`}},
		{"prefix dotdot", []string{"MMSIDECAR_S3_PREFIX", "a/../b"}, "MMSIDECAR_S3_PREFIX", []string{`"a/../b"`}},
		{"ca without tls", []string{"MMSIDECAR_S3_ENDPOINT", "m:9000", "MMSIDECAR_S3_CA_FILE", "/etc/ssl/ca.pem", "MMSIDECAR_S3_ACCESS_KEY", "a", "MMSIDECAR_S3_SECRET_KEY", "b"}, "MMSIDECAR_S3_CA_FILE", []string{"plain HTTP"}},
		{"ca not pem", []string{"MMSIDECAR_S3_ENDPOINT", "m:9000", "MMSIDECAR_S3_TLS", "true", "MMSIDECAR_S3_CA_FILE", notDir, "MMSIDECAR_S3_ACCESS_KEY", "a", "MMSIDECAR_S3_SECRET_KEY", "b"}, "MMSIDECAR_S3_CA_FILE", []string{"no PEM"}},
		{"request timeout", []string{"MMSIDECAR_S3_ENDPOINT", "m:9000", "MMSIDECAR_S3_REQUEST_TIMEOUT", "0s", "MMSIDECAR_S3_ACCESS_KEY", "a", "MMSIDECAR_S3_SECRET_KEY", "b"}, "MMSIDECAR_S3_REQUEST_TIMEOUT", []string{"greater than zero"}},
		{"listen addr", []string{"MMSIDECAR_LISTEN_ADDR", "localhost"}, "MMSIDECAR_LISTEN_ADDR", []string{`"localhost"`, "host:port"}},
		{"listen port", []string{"MMSIDECAR_LISTEN_ADDR", "127.0.0.1:99999"}, "MMSIDECAR_LISTEN_ADDR", []string{"99999"}},
		{"log level", []string{"MMSIDECAR_LOG_LEVEL", "loud"}, "MMSIDECAR_LOG_LEVEL", []string{`"loud"`, "debug, info, warn or error"}},
		{"log format", []string{"MMSIDECAR_LOG_FORMAT", "xml"}, "MMSIDECAR_LOG_FORMAT", []string{`"xml"`, "text or json"}},
		{"rescan zero", []string{"MMSIDECAR_RESCAN_INTERVAL", "0s"}, "MMSIDECAR_RESCAN_INTERVAL", []string{"greater than zero"}},
		{"shutdown negative", []string{"MMSIDECAR_SHUTDOWN_TIMEOUT", "-1s"}, "MMSIDECAR_SHUTDOWN_TIMEOUT", []string{`"-1s"`}},
		{"drain zero", []string{"MMSIDECAR_DRAIN_TIMEOUT", "0s"}, "MMSIDECAR_DRAIN_TIMEOUT", []string{`"0s"`}},
		{"delete delay negative", []string{"MMSIDECAR_DELETE_BATCH_DELAY", "-5ms"}, "MMSIDECAR_DELETE_BATCH_DELAY", []string{`"-5ms"`, "negative"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := testEnv(t, append([]string{"MMSIDECAR_NODE_ID", "n1"}, tt.kv...)...)
			_, err := load(t, env)
			ce := wantConfigError(t, err, tt.wantVar, tt.fragments...)
			if !strings.HasPrefix(ce.Error(), tt.wantVar+"=") {
				t.Errorf("message %q does not start with the variable", ce.Error())
			}
		})
	}
}

func TestLoadConfigCollectsEveryError(t *testing.T) {
	_, err := load(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1", "MMSIDECAR_MODE", "x", "MMSIDECAR_LOG_FORMAT", "xml", "MMSIDECAR_MAX_TRANSFERS", "0"))
	var got []string
	for _, ce := range configErrors(err) {
		got = append(got, ce.Var)
	}
	slices.Sort(got)
	want := []string{"MMSIDECAR_LOG_FORMAT", "MMSIDECAR_MAX_TRANSFERS", "MMSIDECAR_MODE"}
	if !slices.Equal(got, want) {
		t.Errorf("errors for %v, want %v (err %v)", got, want, err)
	}
}
