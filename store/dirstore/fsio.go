package dirstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/mmsidecar/mmsidecar/store"
)

// installAttempts bounds the retries of install when a concurrent delete
// removes an (empty) parent directory between mkdir and rename.
const installAttempts = 100

// install moves the fsynced temp file tmp into key's place, without
// replacing an existing object when noReplace is set, and makes the
// result durable. The caller holds the key's stripe lock.
func (s *Store) install(key, tmp string, noReplace bool) error {
	rel := relDir(key)
	dst := s.path(key)
	var err error
	for range installAttempts {
		if err = s.mkdirs(rel); errors.Is(err, fs.ErrNotExist) {
			continue // a parent was pruned between two mkdirs
		} else if err != nil {
			return opError("put", key, err)
		}
		if noReplace {
			err = renameNoReplace(tmp, dst)
		} else {
			err = os.Rename(tmp, dst)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	switch {
	case errors.Is(err, fs.ErrExist):
		return precondition(key, "PreconditionFailed", "key exists")
	case errors.Is(err, fs.ErrNotExist):
		// Every attempt lost to a concurrent prune: worth retrying later.
		return &store.OpError{Op: "put", Key: key, Kind: store.KindTransient, Code: "contention", Err: err}
	case err != nil:
		return opError("put", key, err)
	}
	if err := s.syncUp(rel); err != nil {
		return opError("put", key, err)
	}
	return nil
}

// renameNoReplace renames src to dst unless dst exists (fs.ErrExist).
func renameNoReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if err == unix.EINVAL || err == unix.ENOSYS {
		// The filesystem lacks RENAME_NOREPLACE: link(2) fails on an
		// existing name just as atomically; the temp name is removed by
		// the caller.
		return os.Link(src, dst)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
	}
	return nil
}

// mkdirs creates the directories of rel below the objects root.
func (s *Store) mkdirs(rel string) error {
	if rel == "" {
		return nil
	}
	dir := s.objects
	for _, part := range splitPath(rel) {
		dir = filepath.Join(dir, part)
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	return nil
}

// syncUp fsyncs the directory rel and every ancestor up to the objects
// root, so that a new entry and the directories leading to it survive a
// crash even if another process created those directories and has not
// synced them yet. fsync of an unchanged directory is cheap.
func (s *Store) syncUp(rel string) error {
	for {
		if err := syncDir(filepath.Join(s.objects, rel)); err != nil {
			return err
		}
		if rel == "" {
			return nil
		}
		rel = filepath.Dir(rel)
		if rel == "." {
			rel = ""
		}
	}
}

// syncRemoved fsyncs the directory rel after an unlink in it. When a
// concurrent delete has already pruned it, the nearest existing ancestor
// is synced instead, which makes the removal of the whole branch durable.
func (s *Store) syncRemoved(rel string) error {
	for {
		err := syncDir(filepath.Join(s.objects, rel))
		if !errors.Is(err, fs.ErrNotExist) || rel == "" {
			return err
		}
		rel = filepath.Dir(rel)
		if rel == "." {
			rel = ""
		}
	}
}

// pruneDirs removes rel and its ancestors below the objects root while
// they are empty. Errors (not empty, already gone) end it quietly: an
// empty directory left behind costs nothing but a directory read.
func (s *Store) pruneDirs(rel string) {
	for rel != "" && rel != "." {
		if err := unix.Rmdir(filepath.Join(s.objects, rel)); err != nil {
			return
		}
		rel = filepath.Dir(rel)
	}
}

func splitPath(rel string) []string {
	var parts []string
	for rel != "" && rel != "." {
		parts = append(parts, filepath.Base(rel))
		rel = filepath.Dir(rel)
	}
	for i, j := 0, len(parts)-1; i < j; i, j = i+1, j-1 {
		parts[i], parts[j] = parts[j], parts[i]
	}
	return parts
}

// syncDir fsyncs a directory.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	return nil
}

// opError classifies a filesystem error: a missing file is not found, a
// corrupt object is permanent, resource shortages and I/O errors are
// transient (an operator can free space or replace a disk), and
// everything else (permissions, read-only filesystem) is permanent.
func opError(op, key string, err error) *store.OpError {
	oe := &store.OpError{Op: op, Key: key, Kind: store.KindPermanent, Code: "io", Err: err}
	var errno unix.Errno
	switch {
	case errors.Is(err, fs.ErrNotExist):
		oe.Kind, oe.Code = store.KindNotFound, "NoSuchKey"
	case errors.Is(err, errCorrupt):
		oe.Code = "corrupt"
	case errors.As(err, &errno):
		oe.Code = unix.ErrnoName(errno)
		if oe.Code == "" {
			oe.Code = "errno_" + fmt.Sprint(int(errno))
		}
		switch errno {
		case unix.ENOSPC, unix.EDQUOT, unix.EIO, unix.EAGAIN, unix.EINTR,
			unix.EMFILE, unix.ENFILE, unix.ENOMEM, unix.EBUSY, unix.ETIMEDOUT:
			oe.Kind = store.KindTransient
		}
	}
	return oe
}
