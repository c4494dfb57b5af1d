package dirstore

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/mmsidecar/mmsidecar/store"
)

// List implements store.Store. It walks the objects tree depth first, one
// sorted directory at a time, so memory grows with the largest directory
// and the depth, not with the number of objects. An object written or
// deleted during the walk may or may not be seen; every object present
// for the whole walk is.
func (s *Store) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	if s.closed.Load() {
		return &store.OpError{Op: "list", Key: prefix, Kind: store.KindPermanent, Code: "closed", Err: errors.New("store closed")}
	}
	dir, base, partial, ok := listStart(prefix)
	if !ok {
		// No valid key starts with this prefix.
		return nil
	}
	return s.walk(ctx, prefix, filepath.Join(s.objects, dir), base, partial, fn)
}

// listStart splits a list prefix into the directory where its keys live
// (relative to the objects root), the key prefix of that directory, and
// the partial last segment that entries there must start with. ok is
// false when no valid key can have the prefix.
func listStart(prefix string) (dir, base, partial string, ok bool) {
	if strings.IndexByte(prefix, 0) >= 0 {
		return "", "", "", false
	}
	i := strings.LastIndexByte(prefix, '/')
	if i < 0 {
		return "", "", prefix, true
	}
	var parts []string
	for seg := range strings.SplitSeq(prefix[:i], "/") {
		if validateSegment(seg) != nil {
			return "", "", "", false
		}
		parts = append(parts, dirTag+seg)
	}
	return filepath.Join(parts...), prefix[:i+1], prefix[i+1:], true
}

// walk calls fn for the objects below dir, whose keys start with base,
// restricted to entries whose segment starts with partial.
func (s *Store) walk(ctx context.Context, prefix, dir, base, partial string, fn func(store.Info) error) error {
	names, err := readDirNames(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return opError("list", prefix, err)
	}
	names = slices.DeleteFunc(names, func(name string) bool {
		if _, ok := entryKind(name); !ok {
			return true
		}
		seg := name[len(objTag):]
		return !strings.HasPrefix(seg, partial) || validateSegment(seg) != nil
	})
	slices.SortFunc(names, compareNames)
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return &store.OpError{Op: "list", Key: prefix, Kind: store.KindTransient, Code: "canceled", Err: err}
		}
		isDir, _ := entryKind(name)
		key := base + name[len(objTag):]
		path := filepath.Join(dir, name)
		if isDir {
			if err := s.walk(ctx, prefix, path, key+"/", "", fn); err != nil {
				return err
			}
			continue
		}
		info, err := statObject(path, key)
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since the directory was read
		}
		if err != nil {
			return opError("list", prefix, err)
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}
