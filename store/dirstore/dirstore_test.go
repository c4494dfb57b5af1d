package dirstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

func TestMain(m *testing.M) {
	if root := os.Getenv(childEnv); root != "" {
		os.Exit(childMain(root))
	}
	os.Exit(m.Run())
}

func openTest(t *testing.T, root string) *Store {
	t.Helper()
	s, err := Open(root)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustPut(t *testing.T, s store.Store, key, body string, cond store.Condition) store.Info {
	t.Helper()
	info, err := store.PutBytes(context.Background(), s, key, []byte(body), cond)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return info
}

func wantKind(t *testing.T, err error, kind store.Kind, code string) {
	t.Helper()
	var oe *store.OpError
	if !errors.As(err, &oe) {
		t.Fatalf("error %v (%T) is not a *store.OpError", err, err)
	}
	if oe.Kind != kind || (code != "" && oe.Code != code) {
		t.Fatalf("error %v: kind %v code %q, want %v %q", err, oe.Kind, oe.Code, kind, code)
	}
}

func listKeys(t *testing.T, s store.Store, prefix string) []string {
	t.Helper()
	keys := []string{}
	err := s.List(context.Background(), prefix, func(in store.Info) error {
		keys = append(keys, in.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	return keys
}

func TestPutGetStat(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	for _, body := range []string{"", "hello", string(bytes.Repeat([]byte{0, 1, 2, 0xff}, 100000))} {
		t.Run(fmt.Sprintf("len%d", len(body)), func(t *testing.T) {
			key := fmt.Sprintf("q/n/in/%d.pck", len(body))
			info := mustPut(t, s, key, body, store.Condition{})
			want := store.Info{Key: key, ETag: store.ETagOf([]byte(body)), Size: int64(len(body))}
			if info != want {
				t.Fatalf("put info %+v, want %+v", info, want)
			}
			got, ginfo, err := store.GetBytes(ctx, s, key)
			want.Modified = ginfo.Modified // checked by the contract
			if err != nil || string(got) != body || ginfo != want {
				t.Fatalf("get: %d bytes, %+v, %v", len(got), ginfo, err)
			}
			if sinfo, err := s.Stat(ctx, key); err != nil || sinfo != want {
				t.Fatalf("stat: %+v, %v", sinfo, err)
			}
		})
	}
}

func TestConditions(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	a := mustPut(t, s, "k", "a", store.Condition{IfAbsent: true})

	_, err := store.PutBytes(ctx, s, "k", []byte("b"), store.Condition{IfAbsent: true})
	wantKind(t, err, store.KindPrecondition, "PreconditionFailed")
	_, err = store.PutBytes(ctx, s, "missing", []byte("b"), store.Condition{IfMatch: a.ETag})
	wantKind(t, err, store.KindPrecondition, "NoSuchKey")
	_, err = store.PutBytes(ctx, s, "k", []byte("b"), store.Condition{IfMatch: store.ETagOf([]byte("x"))})
	wantKind(t, err, store.KindPrecondition, "PreconditionFailed")
	if _, err := s.Stat(ctx, "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("failed IfMatch created the key: %v", err)
	}

	b := mustPut(t, s, "k", "b", store.Condition{IfMatch: a.ETag})
	// The old ETag is stale now.
	_, err = store.PutBytes(ctx, s, "k", []byte("c"), store.Condition{IfMatch: a.ETag})
	wantKind(t, err, store.KindPrecondition, "PreconditionFailed")
	// Identical bytes keep the ETag, as on S3 (ABA).
	if again := mustPut(t, s, "k", "b", store.Condition{IfMatch: b.ETag}); again.ETag != b.ETag {
		t.Fatalf("same body, etag %s != %s", again.ETag, b.ETag)
	}
	data, _, err := store.GetBytes(ctx, s, "k")
	if err != nil || string(data) != "b" {
		t.Fatalf("get: %q %v", data, err)
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	tests := []struct {
		name string
		err  func() error
		kind store.Kind
		code string
	}{
		{"get missing", func() error { _, _, err := s.Get(ctx, "nope"); return err }, store.KindNotFound, "NoSuchKey"},
		{"stat missing", func() error { _, err := s.Stat(ctx, "a/nope"); return err }, store.KindNotFound, "NoSuchKey"},
		{"get invalid", func() error { _, _, err := s.Get(ctx, "a//b"); return err }, store.KindPermanent, "InvalidKey"},
		{"put invalid", func() error { _, err := store.PutBytes(ctx, s, "../x", nil, store.Condition{}); return err }, store.KindPermanent, "InvalidKey"},
		{"delete invalid", func() error { return s.Delete(ctx, "a/./b") }, store.KindPermanent, "InvalidKey"},
		{"stat nul", func() error { _, err := s.Stat(ctx, "a\x00"); return err }, store.KindPermanent, "InvalidKey"},
		{"short body", func() error {
			_, err := s.Put(ctx, "k", bytes.NewReader([]byte("abc")), 4, store.Condition{})
			return err
		}, store.KindPermanent, "size_mismatch"},
		{"long body", func() error {
			_, err := s.Put(ctx, "k", bytes.NewReader([]byte("abcde")), 4, store.Condition{})
			return err
		}, store.KindPermanent, "size_mismatch"},
		{"body read error", func() error {
			_, err := s.Put(ctx, "k", io.MultiReader(bytes.NewReader([]byte("ab")), errReader{}), 4, store.Condition{})
			return err
		}, store.KindTransient, "read_body"},
		{"canceled", func() error { _, err := store.PutBytes(canceled, s, "k", nil, store.Condition{}); return err }, store.KindTransient, "canceled"},
		{"canceled list", func() error {
			mustPut(t, s, "l/x", "x", store.Condition{})
			return s.List(canceled, "l/", func(store.Info) error { return nil })
		}, store.KindTransient, "canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { wantKind(t, tt.err(), tt.kind, tt.code) })
	}
	if _, err := s.Stat(ctx, "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a failed put left an object: %v", err)
	}
	if err := s.Delete(ctx, "nope/nope"); err != nil {
		t.Fatalf("delete missing: %v", err)
	}
	if err := s.DeleteMany(ctx, []string{"x", "y/z"}); err != nil {
		t.Fatalf("delete many missing: %v", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestListOrderAndPrefixes(t *testing.T) {
	s := openTest(t, t.TempDir())
	keys := []string{
		"a", "a!", "a/b", "a/b/c", "a/b!", "a/b0", "a/b/c/d", "a0", "a.b",
		"b", "a/a", "a-", "a/b/c!", "a/bc", "a/b.c", "A", "ab/c", "a/b/c0",
	}
	for i, k := range keys {
		mustPut(t, s, k, fmt.Sprint(i), store.Condition{})
	}
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	for _, prefix := range []string{"", "a", "a/", "a/b", "a/b/", "a/b/c", "ab", "b", "c", "a//", "/", "a/b/c/d/", "a\x00"} {
		t.Run(fmt.Sprintf("%q", prefix), func(t *testing.T) {
			want := []string{}
			for _, k := range sorted {
				if len(k) >= len(prefix) && k[:len(prefix)] == prefix {
					want = append(want, k)
				}
			}
			if got := listKeys(t, s, prefix); !slices.Equal(got, want) {
				t.Fatalf("list %q\n got %q\nwant %q", prefix, got, want)
			}
		})
	}
}

func TestListCallback(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, t.TempDir())
	for _, k := range []string{"p/1", "p/2", "p/3/x", "p/4"} {
		mustPut(t, s, k, k, store.Condition{})
	}
	stop := errors.New("stop")
	var seen []string
	err := s.List(ctx, "p/", func(in store.Info) error {
		seen = append(seen, in.Key)
		if in.ETag != store.ETagOf([]byte(in.Key)) || in.Size != int64(len(in.Key)) {
			t.Errorf("info %+v", in)
		}
		if len(seen) == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || !slices.Equal(seen, []string{"p/1", "p/2"}) {
		t.Fatalf("list stopped with %v after %q", err, seen)
	}
	// Deleting from the callback is allowed (no lock is held).
	err = s.List(ctx, "p/", func(in store.Info) error { return s.Delete(ctx, in.Key) })
	if err != nil {
		t.Fatalf("list+delete: %v", err)
	}
	if got := listKeys(t, s, ""); len(got) != 0 {
		t.Fatalf("left %q", got)
	}
}

func TestCoexistAndPrune(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := openTest(t, root)
	mustPut(t, s, "a/b", "short", store.Condition{IfAbsent: true})
	mustPut(t, s, "a/b/c/d", "long", store.Condition{IfAbsent: true})
	if err := s.Delete(ctx, "a/b/c/d"); err != nil {
		t.Fatal(err)
	}
	// The emptied directories are gone, the shorter key is intact.
	if _, err := os.Stat(filepath.Join(root, "objects", "d.a", "d.b")); !os.IsNotExist(err) {
		t.Fatalf("empty dir d.a/d.b kept: %v", err)
	}
	if data, _, err := store.GetBytes(ctx, s, "a/b"); err != nil || string(data) != "short" {
		t.Fatalf("a/b: %q %v", data, err)
	}
	if err := s.Delete(ctx, "a/b"); err != nil {
		t.Fatal(err)
	}
	if names, err := readDirNames(filepath.Join(root, "objects")); err != nil || len(names) != 0 {
		t.Fatalf("objects dir not empty: %q %v", names, err)
	}
}

func TestReopenAndClose(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "x/y", "kept", store.Condition{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = s.Stat(ctx, "x/y")
	wantKind(t, err, store.KindPermanent, "closed")
	s2 := openTest(t, root)
	if data, _, err := store.GetBytes(ctx, s2, "x/y"); err != nil || string(data) != "kept" {
		t.Fatalf("after reopen: %q %v", data, err)
	}
}

func TestOpenRefusesForeignDir(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, formatName), []byte("something else\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(root); err == nil {
		s.Close()
		t.Fatal("opened a directory with a foreign format marker")
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(file); err == nil {
		s.Close()
		t.Fatal("opened a regular file as a store")
	}
}

// TestGoroutineRaces races writers in one process, half through a second
// Store on the same directory (separate lock descriptors).
func TestGoroutineRaces(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	stores := []*Store{openTest(t, root), openTest(t, root)}
	const writers, rounds = 8, 20
	race := func(key string, round int, cond store.Condition) (winner int, body string) {
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, writers)
		for w := range writers {
			wg.Go(func() {
				<-start
				_, errs[w] = store.PutBytes(ctx, stores[w%2], key, []byte(fmt.Sprintf("%s round %d writer %d", key, round, w)), cond)
			})
		}
		close(start)
		wg.Wait()
		winner = -1
		for w, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("%s: writers %d and %d both won", key, winner, w)
			case err == nil:
				winner = w
			case !errors.Is(err, store.ErrPrecondition):
				t.Fatalf("%s: writer %d: %v", key, w, err)
			}
		}
		if winner < 0 {
			t.Fatalf("%s: no winner", key)
		}
		return winner, fmt.Sprintf("%s round %d writer %d", key, round, winner)
	}
	for r := range rounds {
		key := fmt.Sprintf("race/create/%d", r)
		_, body := race(key, r, store.Condition{IfAbsent: true})
		if data, _, _ := store.GetBytes(ctx, stores[0], key); string(data) != body {
			t.Fatalf("%s holds %q, winner wrote %q", key, data, body)
		}
	}
	info := mustPut(t, stores[0], "race/cas", "start", store.Condition{})
	for r := range rounds {
		_, body := race("race/cas", r, store.Condition{IfMatch: info.ETag})
		var err error
		if info, err = stores[1].Stat(ctx, "race/cas"); err != nil || info.ETag != store.ETagOf([]byte(body)) {
			t.Fatalf("cas: %+v %v, winner wrote %q", info, err, body)
		}
	}
}

// TestContract runs the shared store contract suite against a fresh
// directory store per subtest.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openTest(t, t.TempDir()) })
}

// TestPutWhileDeletesPruneDirs puts and deletes keys in one directory
// from several goroutines: a delete that removes the emptied directory
// must never make a concurrent put fail.
func TestPutWhileDeletesPruneDirs(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	stores := []*Store{openTest(t, root), openTest(t, root)}
	const workers, iterations = 4, 150
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			s := stores[w%2]
			for i := range iterations {
				key := fmt.Sprintf("deep/dir/w%d", w)
				if _, err := store.PutBytes(ctx, s, key, []byte(fmt.Sprint(i)), store.Condition{IfAbsent: true}); err != nil {
					errs <- fmt.Errorf("worker %d iteration %d: %w", w, i, err)
					return
				}
				if err := s.Delete(ctx, key); err != nil {
					errs <- fmt.Errorf("worker %d delete: %w", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if keys := listKeys(t, stores[0], ""); len(keys) != 0 {
		t.Fatalf("left %q", keys)
	}
}
