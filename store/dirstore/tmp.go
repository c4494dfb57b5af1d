package dirstore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Temp files. Every open Store owns a directory tmp/<id>/ and holds an
// flock on tmp/<id>/lock for as long as it is open; its temp files live
// there and are renamed (or linked) into the objects tree, so a temp file
// is never visible as an object. A process that dies leaves its directory
// behind with the lock released; the next Open removes it. Creating an
// instance directory and sweeping dead ones both happen under tmp.lock, so
// a sweeper never sees a live directory before its owner holds its lock.

const instanceLock = "lock"

// tmpDir is one Store's private temp directory.
type tmpDir struct {
	path string
	lock *os.File
}

// newTmpDir sweeps dead instance directories under tmpRoot and creates
// this instance's own, locked. It reports how many it swept.
func newTmpDir(root, tmpRoot string) (*tmpDir, int, error) {
	global, err := os.OpenFile(filepath.Join(root, "tmp.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("open tmp lock: %w", err)
	}
	defer global.Close()
	if err := flock(int(global.Fd()), unix.LOCK_EX); err != nil {
		return nil, 0, fmt.Errorf("lock tmp: %w", err)
	}
	defer flock(int(global.Fd()), unix.LOCK_UN)

	swept, err := sweepTmp(tmpRoot)
	if err != nil {
		return nil, 0, err
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, 0, fmt.Errorf("instance id: %w", err)
	}
	path := filepath.Join(tmpRoot, hex.EncodeToString(id[:]))
	if err := os.Mkdir(path, 0o700); err != nil {
		return nil, 0, fmt.Errorf("create temp dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(path, instanceLock), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		err = flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	}
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		os.RemoveAll(path)
		return nil, 0, fmt.Errorf("lock temp dir: %w", err)
	}
	return &tmpDir{path: path, lock: lock}, swept, nil
}

// sweepTmp removes the temp directories of instances that are gone: those
// whose lock file can be locked (or is missing). The caller holds tmp.lock.
func sweepTmp(tmpRoot string) (int, error) {
	names, err := readDirNames(tmpRoot)
	if err != nil {
		return 0, fmt.Errorf("read temp dir: %w", err)
	}
	swept := 0
	for _, name := range names {
		dir := filepath.Join(tmpRoot, name)
		live, err := instanceLive(dir)
		if err != nil {
			return swept, err
		}
		if live {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			return swept, fmt.Errorf("remove dead temp dir: %w", err)
		}
		swept++
	}
	return swept, nil
}

// instanceLive reports whether a Store still holds dir's lock.
func instanceLive(dir string) (bool, error) {
	f, err := os.OpenFile(filepath.Join(dir, instanceLock), os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open temp dir lock: %w", err)
	}
	defer f.Close()
	err = flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("probe temp dir lock: %w", err)
	}
	// Closing f releases the lock.
	return false, nil
}

// close releases the instance and removes its directory.
func (t *tmpDir) close() error {
	err := os.RemoveAll(t.path)
	t.lock.Close()
	return err
}

// readDirNames returns the names in dir, unsorted.
func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}
