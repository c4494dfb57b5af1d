package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/dirstore"
	"github.com/mmsidecar/mmsidecar/store/memstore"
	"github.com/mmsidecar/mmsidecar/store/probe"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// probeNames are the probes check must report, in order.
var probeNames = []string{probe.NameCreate, probe.NameCAS, probe.NameStale, probe.NameLarge, probe.NameErrors, probe.NameCleanup}

// decodeCheck parses check -json output.
func decodeCheck(t *testing.T, stdout string) (out struct {
	OK     bool      `json:"ok"`
	Config checkStep `json:"config"`
	Store  *checkStep
	Probe  *struct {
		Safe    bool `json:"safe"`
		Results []struct {
			Name string `json:"name"`
			OK   bool   `json:"ok"`
		} `json:"results"`
	} `json:"probe"`
}) {
	t.Helper()
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("check -json output is not JSON: %v\n%s", err, stdout)
	}
	return out
}

func checkEnv(t *testing.T, kv ...string) map[string]string {
	t.Helper()
	env := map[string]string{
		"MMSIDECAR_NODE_ID":   "n1",
		"MMSIDECAR_QUEUE_DIR": t.TempDir(),
		"MMSIDECAR_STORE_DIR": filepath.Join(t.TempDir(), "store"),
	}
	for i := 0; i+1 < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	return env
}

// wantSafeRun asserts a passing `check` and `check -json` on env.
func wantSafeRun(t *testing.T, env map[string]string) {
	t.Helper()
	r := runMain(t, env, "check")
	if r.code != 0 {
		t.Fatalf("check failed:\n%s", r)
	}
	for _, name := range append([]string{stepConfig, stepReachable}, probeNames...) {
		if !strings.Contains(r.stdout, "ok   "+name) {
			t.Errorf("no passing %s line:\n%s", name, r)
		}
	}
	if !strings.Contains(r.stdout, "store is safe") {
		t.Errorf("no verdict:\n%s", r)
	}

	r = runMain(t, env, "check", "-json")
	if r.code != 0 {
		t.Fatalf("check -json failed:\n%s", r)
	}
	out := decodeCheck(t, r.stdout)
	if !out.OK || !out.Config.OK || out.Store == nil || !out.Store.OK || out.Probe == nil || !out.Probe.Safe {
		t.Fatalf("check -json verdict:\n%s", r.stdout)
	}
	var names []string
	for _, res := range out.Probe.Results {
		names = append(names, res.Name)
	}
	if !slices.Equal(names, probeNames) {
		t.Errorf("probes %v, want %v", names, probeNames)
	}
}

func TestCheckEmbeddedStore(t *testing.T) {
	t.Run("created by run", func(t *testing.T) {
		env := checkEnv(t)
		st, err := dirstore.Open(env["MMSIDECAR_STORE_DIR"]) // as `run` leaves it
		if err != nil {
			t.Fatal(err)
		}
		st.Close()
		wantSafeRun(t, env)
	})
	t.Run("not there yet", func(t *testing.T) {
		// check creates nothing: no store directory, no state directory
		// (issue 22); it says the store is not there yet and passes.
		env := checkEnv(t)
		for _, args := range [][]string{{"check"}, {"check", "-json"}} {
			r := runMain(t, env, args...)
			if r.code != 0 || !strings.Contains(r.stdout, "does not exist yet") {
				t.Errorf("%v:\n%s", args, r)
			}
		}
		for _, dir := range []string{env["MMSIDECAR_STORE_DIR"], filepath.Join(env["MMSIDECAR_QUEUE_DIR"], ".mmsidecar")} {
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("check created %s: %v", dir, err)
			}
		}
	})
	t.Run("cluster mode says the store is single-host", func(t *testing.T) {
		env := checkEnv(t)
		r := runMain(t, env, "check")
		if !strings.Contains(r.stdout, "WARN SINGLE-HOST STORE") {
			t.Errorf("no warning for cluster mode on the embedded store:\n%s", r)
		}
		r = runMain(t, env, "check", "-json")
		if !strings.Contains(r.stdout, `"warnings"`) || !strings.Contains(r.stdout, "SINGLE-HOST STORE") {
			t.Errorf("no warning in check -json:\n%s", r)
		}
		env["MMSIDECAR_MODE"] = "mirror"
		if r := runMain(t, env, "check"); strings.Contains(r.stdout, "SINGLE-HOST") {
			t.Errorf("mirror mode on the embedded store is what it is for:\n%s", r)
		}
	})
}

// TestCheckS3Endpoint runs check against the S3 endpoint of the
// environment (MMSIDECAR_TEST_S3_*: any engine; the shared MinIO
// without it).
func TestCheckS3Endpoint(t *testing.T) {
	m := storetest.SharedS3(t)
	bucket := m.NewBucket(t)
	s3 := func(kv ...string) map[string]string {
		return checkEnv(t, append([]string{
			"MMSIDECAR_S3_ENDPOINT", m.Endpoint, "MMSIDECAR_S3_ACCESS_KEY", m.AccessKey,
			"MMSIDECAR_S3_SECRET_KEY", m.SecretKey, "MMSIDECAR_S3_BUCKET", bucket,
		}, kv...)...)
	}
	t.Run("safe", func(t *testing.T) { wantSafeRun(t, s3()) })

	t.Run("missing bucket", func(t *testing.T) {
		r := runMain(t, s3("MMSIDECAR_S3_BUCKET", "no-such-bucket-mmsidecar"), "check")
		if r.code != 1 || !strings.Contains(r.stdout, "FAIL store-reachable") || !strings.Contains(r.stdout, "UNREACHABLE") {
			t.Errorf("missing bucket:\n%s", r)
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		r := runMain(t, s3("MMSIDECAR_S3_SECRET_KEY", "wrong-secret-value"), "check")
		if r.code != 1 || !strings.Contains(r.stdout, "FAIL store-reachable") {
			t.Errorf("wrong secret:\n%s", r)
		}
		if strings.Contains(r.stdout+r.stderr, "wrong-secret-value") || strings.Contains(r.stdout+r.stderr, m.SecretKey) {
			t.Errorf("secret shown:\n%s", r)
		}
	})
}

func TestCheckUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	env := checkEnv(t, "MMSIDECAR_S3_ENDPOINT", addr, "MMSIDECAR_S3_ACCESS_KEY", "a", "MMSIDECAR_S3_SECRET_KEY", "b",
		"MMSIDECAR_S3_REQUEST_TIMEOUT", "1s")
	r := runMain(t, env, "check", "-json")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1\n%s", r.code, r)
	}
	out := decodeCheck(t, r.stdout)
	if out.OK || !out.Config.OK || out.Store == nil || out.Store.OK || out.Probe != nil || !strings.Contains(out.Store.Detail, addr) {
		t.Errorf("verdict:\n%s", r.stdout)
	}
}

func TestCheckConfigErrorJSON(t *testing.T) {
	r := runMain(t, checkEnv(t, "MMSIDECAR_LEASE_GRACE", "1s"), "check", "-json")
	if r.code != 2 {
		t.Fatalf("exit %d, want 2\n%s", r.code, r)
	}
	out := decodeCheck(t, r.stdout)
	if out.OK || out.Config.OK || out.Store != nil || !strings.Contains(out.Config.Detail, `MMSIDECAR_LEASE_GRACE="1s"`) {
		t.Errorf("verdict:\n%s", r.stdout)
	}
}

// blindStore ignores every write condition, like a store that does not
// implement conditional writes.
type blindStore struct{ store.Store }

func (b blindStore) Put(ctx context.Context, key string, body io.Reader, size int64, _ store.Condition) (store.Info, error) {
	return b.Store.Put(ctx, key, body, size, store.Condition{})
}

// healingStore answers every conditional write with MinIO's 503
// SlowDownWrite until healed is set, like a cluster healing after a
// server came back: reads and lists work, conditions are never broken.
type healingStore struct {
	store.Store
	healed *atomic.Bool
}

func (h healingStore) Put(ctx context.Context, key string, body io.Reader, size int64, c store.Condition) (store.Info, error) {
	if c != (store.Condition{}) && !h.healed.Load() {
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindTransient, Code: "SlowDownWrite",
			Err: errors.New("Resource requested is unwritable, please reduce your request rate")}
	}
	return h.Store.Put(ctx, key, body, size, c)
}

// failingList fails every LIST, like a store that is down.
type failingList struct{ store.Store }

func (failingList) List(context.Context, string, func(store.Info) error) error {
	return &store.OpError{Op: "list", Kind: store.KindTransient, Code: "timeout", Err: errors.New("i/o timeout")}
}

func TestCheckVerdicts(t *testing.T) {
	tests := []struct {
		name      string
		st        store.Store
		allow     bool
		wantErr   error
		wantLines []string
	}{
		{"ignores conditions", blindStore{memstore.New()}, false, errStoreUnsafe, []string{"FAIL " + probe.NameCreate, "store is UNSAFE"}},
		{"unsafe but allowed", blindStore{memstore.New()}, true, errStoreUnsafe, []string{"store is UNSAFE", "MMSIDECAR_ALLOW_UNSAFE_STORE=true"}},
		{"down", failingList{memstore.New()}, false, nil, []string{"FAIL " + stepReachable, "i/o timeout", "UNREACHABLE"}},
		{"healing", healingStore{memstore.New(), new(atomic.Bool)}, false, nil, []string{"ERR  " + probe.NameCreate, "SlowDownWrite", "store is NOT VERIFIED"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustLoad(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1"))
			cfg.AllowUnsafeStore = tt.allow
			var text, js bytes.Buffer
			err := check(context.Background(), cfg, tt.st, &text, false)
			switch {
			case err == nil:
				t.Errorf("check passed an unsafe or unreachable store:\n%s", text.String())
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Errorf("check error %v, want %v", err, tt.wantErr)
			}
			for _, l := range tt.wantLines {
				if !strings.Contains(text.String(), l) {
					t.Errorf("output lacks %q:\n%s", l, text.String())
				}
			}
			jerr := check(context.Background(), cfg, tt.st, &js, true)
			if (jerr == nil) != (err == nil) {
				t.Errorf("text and JSON disagree: %v vs %v", err, jerr)
			}
			out := decodeCheck(t, js.String())
			if out.OK != (err == nil) {
				t.Errorf("JSON ok=%v with error %v", out.OK, err)
			}
		})
	}
}

func TestCheckStoreDirUnusable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := runMain(t, checkEnv(t, "MMSIDECAR_STORE_DIR", filepath.Join(file, "store")), "check", "-json")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1\n%s", r.code, r)
	}
	out := decodeCheck(t, r.stdout)
	if out.OK || !out.Config.OK || out.Store == nil || out.Store.OK || !strings.Contains(out.Store.Detail, "open directory store") {
		t.Errorf("verdict:\n%s", r.stdout)
	}
}

// TestStartupProbeWaitsForAHealingStore: a probe that fails only with
// transient store errors is retried until the store heals, not taken for
// an unsafe store; a store that ignores conditions is refused at once.
func TestStartupProbeWaitsForAHealingStore(t *testing.T) {
	cfg := mustLoad(t, testEnv(t, "MMSIDECAR_NODE_ID", "n1"))
	logs := &lockedBuffer{}
	log := newLogger(logs, &Config{LogLevel: "info", LogFormat: "json"})

	t.Run("healing", func(t *testing.T) {
		healed := new(atomic.Bool)
		done := make(chan error, 1)
		go func() { done <- startupProbe(t.Context(), cfg, healingStore{memstore.New(), healed}, log, nil) }()
		deadline := time.After(time.Minute)
		for !strings.Contains(logs.String(), "not with a broken condition; retrying") {
			select {
			case err := <-done:
				t.Fatalf("startupProbe returned %v before the store healed", err)
			case <-deadline:
				t.Fatalf("no retry logged:\n%s", logs.String())
			case <-time.After(20 * time.Millisecond):
			}
		}
		healed.Store(true)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("startupProbe after the store healed: %v", err)
			}
		case <-deadline:
			t.Fatal("startupProbe did not return after the store healed")
		}
	})
	t.Run("ignores conditions", func(t *testing.T) {
		err := startupProbe(t.Context(), cfg, blindStore{memstore.New()}, log, nil)
		if err == nil || !strings.Contains(err.Error(), "store is unsafe") {
			t.Fatalf("startupProbe on a store that ignores conditions: %v, want 'store is unsafe'", err)
		}
	})
}

// lockedBuffer is a bytes.Buffer safe to write from a logger while the
// test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
