package dirstore

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/mmsidecar/mmsidecar/store"
)

// TestOpenReadOnly: a read-only open reads what a writer stored and
// creates nothing: no directory, lock file or temp directory (a command
// run as root must leave nothing the sidecar's user cannot use).
func TestOpenReadOnly(t *testing.T) {
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "store")
	if _, err := OpenReadOnly(root); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read-only open of a missing root: %v, want ErrNotExist", err)
	}
	if _, err := os.Stat(root); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read-only open created the root: %v", err)
	}
	w := openTest(t, root)
	if _, err := store.PutBytes(ctx, w, "a/b", []byte("x"), store.Condition{}); err != nil {
		t.Fatal(err)
	}
	before := tree(t, root)
	r, err := OpenReadOnly(root)
	if err != nil {
		t.Fatal(err)
	}
	data, _, err := store.GetBytes(ctx, r, "a/b")
	if err != nil || string(data) != "x" {
		t.Errorf("get: %q %v", data, err)
	}
	var keys []string
	if err := r.List(ctx, "a/", func(in store.Info) error { keys = append(keys, in.Key); return nil }); err != nil || !slices.Equal(keys, []string{"a/b"}) {
		t.Errorf("list: %v %v", keys, err)
	}
	if _, err := store.PutBytes(ctx, r, "a/c", []byte("y"), store.Condition{}); store.KindOf(err) != store.KindPermanent {
		t.Errorf("put on a read-only store: %v, want a permanent error", err)
	}
	if err := r.Delete(ctx, "a/b"); store.KindOf(err) != store.KindPermanent {
		t.Errorf("delete on a read-only store: %v, want a permanent error", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if after := tree(t, root); !slices.Equal(before, after) {
		t.Errorf("read-only open changed the directory:\n before %v\n after  %v", before, after)
	}
	empty := t.TempDir()
	r, err = OpenReadOnly(empty)
	if err != nil {
		t.Fatalf("read-only open of an empty directory: %v", err)
	}
	if err := r.List(ctx, "", func(store.Info) error { t.Error("listed something"); return nil }); err != nil {
		t.Errorf("list of an empty directory: %v", err)
	}
}

// tree lists every path under root.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		out = append(out, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
