package storetest

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/memstore"
)

func TestWeedPort(t *testing.T) {
	seen := map[int]bool{}
	for range 20 {
		p, err := WeedPort()
		if err != nil {
			t.Fatal(err)
		}
		if p+10000 > 65535 || p < 1024 {
			t.Fatalf("WeedPort = %d: its gRPC port %d is out of range", p, p+10000)
		}
		if seen[p] || seen[p+10000] {
			t.Fatalf("WeedPort = %d handed out twice (or as another's gRPC port)", p)
		}
		seen[p], seen[p+10000] = true, true
	}
}

func TestFindWeed(t *testing.T) {
	t.Run("explicit binary missing", func(t *testing.T) {
		t.Setenv(EnvWeedBin, filepath.Join(t.TempDir(), "no-weed"))
		if _, err := FindWeed(); err == nil || !strings.Contains(err.Error(), EnvWeedBin) {
			t.Fatalf("FindWeed: %v, want an error naming %s", err, EnvWeedBin)
		}
	})
	t.Run("nowhere", func(t *testing.T) {
		t.Setenv(EnvWeedBin, "")
		t.Setenv("HOME", t.TempDir())
		t.Setenv("PATH", t.TempDir())
		_, err := FindWeed()
		for _, want := range []string{EnvWeedBin, SeaweedFSVersion, "scripts/test.sh"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("FindWeed: %v, want an error mentioning %q", err, want)
			}
		}
	})
}

// countingStore counts the calls that reach it.
type countingStore struct {
	store.Store
	n int
}

func (c *countingStore) Stat(ctx context.Context, key string) (store.Info, error) {
	c.n++
	return c.Store.Stat(ctx, key)
}

func TestSpreadTakesTurns(t *testing.T) {
	a, b := &countingStore{Store: memstore.New()}, &countingStore{Store: memstore.New()}
	s := Spread(a, b)
	for range 10 {
		s.Stat(t.Context(), "k")
	}
	if a.n != 5 || b.n != 5 {
		t.Fatalf("calls %d and %d, want 5 each", a.n, b.n)
	}
}
