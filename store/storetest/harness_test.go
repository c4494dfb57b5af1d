package storetest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mmsidecar/mmsidecar/store"
)

func TestFindMinIO(t *testing.T) {
	t.Run("explicit binary missing", func(t *testing.T) {
		t.Setenv(EnvMinIOBin, filepath.Join(t.TempDir(), "no-minio"))
		_, err := findMinIO()
		if err == nil || !strings.Contains(err.Error(), EnvMinIOBin) {
			t.Fatalf("findMinIO: %v, want an error naming %s", err, EnvMinIOBin)
		}
	})
	t.Run("nowhere", func(t *testing.T) {
		t.Setenv(EnvMinIOBin, "")
		t.Setenv("HOME", t.TempDir())
		t.Setenv("PATH", t.TempDir())
		_, err := findMinIO()
		for _, want := range []string{EnvMinIOBin, MinIOVersion, EnvTestMinIO + "=off"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("findMinIO: %v, want an error mentioning %q", err, want)
			}
		}
	})
	t.Run("explicit binary", func(t *testing.T) {
		bin := filepath.Join(t.TempDir(), "minio")
		if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Setenv(EnvMinIOBin, bin)
		if got, err := findMinIO(); err != nil || got != bin {
			t.Fatalf("findMinIO = %q, %v; want %q", got, err, bin)
		}
	})
}

func TestOffSkipsLoudly(t *testing.T) {
	t.Setenv(EnvTestMinIO, "off")
	var sub *testing.T
	t.Run("start", func(t *testing.T) {
		sub = t
		StartMinIO(t)
		t.Error("StartMinIO returned with real-MinIO tests off")
	})
	if !sub.Skipped() {
		t.Fatal("StartMinIO did not skip with MMSIDECAR_TEST_MINIO=off")
	}
}

func TestBrokenBinaryFails(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "minio")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho 'cannot serve' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := newMinIO(bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	err = m.startFresh()
	if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "cannot serve") {
		t.Fatalf("start of a broken binary: %v, want its exit and log", err)
	}
}

// TestLifecycle drives a server of the test's own through kill, restart,
// pause and stop, checking that data survives and the store sees it go.
func TestLifecycle(t *testing.T) {
	m := StartMinIO(t)
	s := m.Store(t)
	ctx := t.Context()
	if _, err := store.PutBytes(ctx, s, "k", []byte("v"), store.Condition{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	pid := m.PID()
	m.Kill()
	if m.PID() != 0 {
		t.Fatal("PID after Kill")
	}
	if _, err := s.Stat(ctx, "k"); !errors.Is(err, store.ErrTransient) {
		t.Fatalf("stat of a killed server: %v, want transient", err)
	}
	m.Start()
	if m.PID() == 0 || m.PID() == pid {
		t.Fatalf("PID after Start %d, before %d", m.PID(), pid)
	}
	if got, _, err := store.GetBytes(ctx, s, "k"); err != nil || string(got) != "v" {
		t.Fatalf("after restart: %q, %v", got, err)
	}
	m.Pause()
	m.Stop() // a paused server must still stop
	m.Start()
	if _, err := s.Stat(ctx, "k"); err != nil {
		t.Fatalf("after stop and start: %v", err)
	}
}

func TestSharedIsShared(t *testing.T) {
	a, b := Shared(t), Shared(t)
	if a != b || a.Endpoint == "" {
		t.Fatalf("Shared returned %p and %p", a, b)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("Stop on the shared server did not panic")
		}
	}()
	a.Stop()
}
