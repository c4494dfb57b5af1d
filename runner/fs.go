package runner

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// FileStat is what the mirror needs to know about a file: its type, size
// and identity. Ino, Size and Mtime tell a file rewritten in place (as
// Mailman's recovery does) from one that was only renamed.
type FileStat struct {
	// Mode is the file's type and permission bits.
	Mode fs.FileMode
	// Size is the length in bytes.
	Size int64
	// Dev is the filesystem's device number; Ino the inode number.
	Dev, Ino uint64
	// Mtime is the last change of the contents.
	Mtime time.Time
	// Ctime is the inode's last change: for a queue file, the rename that
	// put it in place.
	Ctime time.Time
}

// Regular reports whether the file is a regular file.
func (s FileStat) Regular() bool { return s.Mode.IsRegular() }

// File is an open file that the mirror streams into the store.
type File interface {
	io.Reader
	io.ReaderAt
	io.Closer
	// Stat describes the open file.
	Stat() (FileStat, error)
}

// FS is the part of the local filesystem the mirror uses. OSFS is the real
// one; a simulator can provide its own.
type FS interface {
	// ReadDir returns the names in dir, in no particular order.
	ReadDir(dir string) ([]string, error)
	// Lstat describes path without following a symlink.
	Lstat(path string) (FileStat, error)
	// Open opens path for reading.
	Open(path string) (File, error)
	// Rename renames oldpath to newpath (replacing newpath).
	Rename(oldpath, newpath string) error
	// Remove removes a file.
	Remove(path string) error
	// MkdirAll creates dir and its parents.
	MkdirAll(dir string, perm fs.FileMode) error
	// Chown changes owner and group; -1 leaves one as is.
	Chown(path string, uid, gid int) error
	// Chmod changes the permission bits.
	Chmod(path string, mode fs.FileMode) error
	// WriteTemp creates dir/name exclusively, writes data, fsyncs it, sets
	// its owner (uid, gid; -1 leaves as is) and mode, and closes it. On
	// error the file is removed.
	WriteTemp(dir, name string, data []byte, uid, gid int, mode fs.FileMode) error
	// SyncDir fsyncs a directory, making renames in it durable.
	SyncDir(dir string) error
}

// OSFS is FS on the operating system's filesystem.
type OSFS struct{}

var _ FS = OSFS{}

// ReadDir implements FS without sorting or stat'ing the names.
func (OSFS) ReadDir(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// Lstat implements FS.
func (OSFS) Lstat(path string) (FileStat, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return FileStat{}, err
	}
	return statOf(fi), nil
}

// Open implements FS. It does not follow a symlink (errNotRegular) and
// does not block on a fifo.
func (OSFS) Open(path string) (File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, errNotRegular
		}
		return nil, err
	}
	return osFile{f}, nil
}

// Rename implements FS.
func (OSFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

// Remove implements FS.
func (OSFS) Remove(path string) error { return os.Remove(path) }

// MkdirAll implements FS.
func (OSFS) MkdirAll(dir string, perm fs.FileMode) error { return os.MkdirAll(dir, perm) }

// Chown implements FS; it does nothing when uid and gid are both -1.
func (OSFS) Chown(path string, uid, gid int) error {
	if uid < 0 && gid < 0 {
		return nil
	}
	return os.Chown(path, uid, gid)
}

// Chmod implements FS.
func (OSFS) Chmod(path string, mode fs.FileMode) error { return os.Chmod(path, mode) }

// WriteTemp implements FS.
func (OSFS) WriteTemp(dir, name string, data []byte, uid, gid int, mode fs.FileMode) (err error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	if uid >= 0 || gid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			return fmt.Errorf("chown %s: %w", name, err)
		}
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", name, err)
	}
	return f.Close()
}

// SyncDir implements FS.
func (OSFS) SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

type osFile struct{ *os.File }

// Stat describes the open file.
func (f osFile) Stat() (FileStat, error) {
	fi, err := f.File.Stat()
	if err != nil {
		return FileStat{}, err
	}
	return statOf(fi), nil
}

func statOf(fi fs.FileInfo) FileStat {
	st := FileStat{Mode: fi.Mode(), Size: fi.Size(), Mtime: fi.ModTime(), Ctime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.Dev, st.Ino = uint64(sys.Dev), sys.Ino
		st.Ctime = time.Unix(int64(sys.Ctim.Sec), int64(sys.Ctim.Nsec))
	}
	return st
}

// errNotRegular is the error for a name that is not a regular file; it
// counts as missing.
var errNotRegular = fmt.Errorf("not a regular file: %w", fs.ErrNotExist)

// isNotExist reports a missing file, including a missing parent directory.
func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}
