// Package dirstore is the embedded default store: a store.Store on a local
// directory with S3's semantics (conditional create, compare-and-swap on
// the MD5 ETag, unconditional delete, list in key order), correct between
// several processes sharing the directory on one host.
//
// Layout under the root directory:
//
//	FORMAT          format marker
//	objects/        one file per object (see keys.go for the encoding)
//	locks/00..3f    stripe lock files (flock), one stripe per key hash
//	tmp/<id>/       each open Store's temp files; dead ones are swept
//	tmp.lock        serialises creating and sweeping tmp/<id>/
//
// An object file is a 39-byte header ("mmds1\n", the 32 hex digit ETag,
// "\n") followed by the body, so Stat and List read the ETag without
// hashing the body. A write streams the body into a temp file, fsyncs it,
// then under the key's stripe lock checks the condition, renames the file
// into place (RENAME_NOREPLACE for a conditional create) and fsyncs the
// directories up to the objects root before acknowledging.
package dirstore

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"

	"github.com/mmsidecar/mmsidecar/store"
)

const (
	formatName    = "FORMAT"
	formatContent = "mmsidecar dirstore 1\n"
	magic         = "mmds1\n"
	headerLen     = len(magic) + 32 + 1
)

// Store is a store.Store on a local directory. Several Stores, in one
// process or several, may share a directory.
type Store struct {
	root    string
	objects string
	locks   *stripeLocks
	tmp     *tmpDir
	seq     atomic.Uint64
	closed  atomic.Bool
	// readOnly: opened by OpenReadOnly, without locks or a temp directory.
	readOnly bool
}

var _ store.Store = (*Store)(nil)

// Open opens (creating if needed) the directory store at root. It refuses
// a root on NFS or CIFS/SMB (see ErrNetworkFS) and removes temp files left
// by processes that died mid-write.
func Open(root string) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store dir: %w", err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("create store dir: %w", err)
	}
	if err := checkLocalFS(abs); err != nil {
		return nil, err
	}
	for _, d := range []string{"objects", "locks", "tmp"} {
		if err := os.Mkdir(filepath.Join(abs, d), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create store dir: %w", err)
		}
	}
	if err := checkFormat(abs); err != nil {
		return nil, err
	}
	if err := syncDir(abs); err != nil {
		return nil, fmt.Errorf("sync store dir: %w", err)
	}
	locks, err := openLocks(filepath.Join(abs, "locks"))
	if err != nil {
		return nil, err
	}
	tmp, _, err := newTmpDir(abs, filepath.Join(abs, "tmp"))
	if err != nil {
		locks.close()
		return nil, err
	}
	return &Store{root: abs, objects: filepath.Join(abs, "objects"), locks: locks, tmp: tmp}, nil
}

// checkFormat writes the format marker if it is missing and refuses a
// directory whose marker names another format.
func checkFormat(root string) error {
	path := filepath.Join(root, formatName)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := writeFormat(root, path); err != nil {
			return fmt.Errorf("write format marker: %w", err)
		}
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return fmt.Errorf("read format marker: %w", err)
	}
	if string(data) != formatContent {
		return fmt.Errorf("%s: not a directory store of this version (format marker %q)", root, bytes.TrimSpace(data))
	}
	return nil
}

// writeFormat creates the format marker atomically; losing the race to
// another process is fine.
func writeFormat(root, path string) error {
	tmp, err := os.CreateTemp(root, formatName+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(formatContent)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp.Name(), path)
	}
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	return err
}

// OpenReadOnly opens the directory store at root for reading only: it
// creates nothing, takes no lock and sweeps nothing, so that a command
// run as another user (root, say) leaves nothing behind that the
// sidecar's own user cannot use. Writes fail with a permanent error. A
// root that does not exist is an error that matches fs.ErrNotExist.
func OpenReadOnly(root string) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store dir: %w", err)
	}
	if _, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("store dir: %w", err)
	}
	data, err := os.ReadFile(filepath.Join(abs, formatName))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Never written to: an empty store.
	case err != nil:
		return nil, fmt.Errorf("read format marker: %w", err)
	case string(data) != formatContent:
		return nil, fmt.Errorf("%s: not a directory store of this version (format marker %q)", abs, bytes.TrimSpace(data))
	}
	return &Store{root: abs, objects: filepath.Join(abs, "objects"), readOnly: true}, nil
}

// errReadOnly is the error of a write to a read-only Store.
func errReadOnly(op, key string) error {
	return &store.OpError{Op: op, Key: key, Kind: store.KindPermanent, Code: "read_only", Err: errors.New("store opened read-only")}
}

// Root returns the store's absolute root directory.
func (s *Store) Root() string { return s.root }

// Close releases the Store's locks and removes its temp directory. The
// Store must not be used afterwards; the directory stays.
func (s *Store) Close() error {
	if s.closed.Swap(true) || s.readOnly {
		return nil
	}
	s.locks.close()
	return s.tmp.close()
}

// begin validates a call's key and context.
func (s *Store) begin(ctx context.Context, op, key string) error {
	if s.closed.Load() {
		return &store.OpError{Op: op, Key: key, Kind: store.KindPermanent, Code: "closed", Err: errors.New("store closed")}
	}
	if err := validateKey(key); err != nil {
		return &store.OpError{Op: op, Key: key, Kind: store.KindPermanent, Code: "InvalidKey", Err: err}
	}
	if err := ctx.Err(); err != nil {
		return &store.OpError{Op: op, Key: key, Kind: store.KindTransient, Code: "canceled", Err: err}
	}
	return nil
}

func (s *Store) path(key string) string { return filepath.Join(s.objects, relPath(key)) }

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	if err := s.begin(ctx, "get", key); err != nil {
		return nil, store.Info{}, err
	}
	f, info, err := openObject(s.path(key), key)
	if err != nil {
		return nil, store.Info{}, opError("get", key, err)
	}
	// The open file keeps this version's bytes even if a later write
	// renames another file into place.
	return bodyReader{io.NewSectionReader(f, int64(headerLen), info.Size), f}, info, nil
}

// bodyReader reads an object's body (not its header) from the open file.
type bodyReader struct {
	*io.SectionReader
	f *os.File
}

// Close closes the object file.
func (b bodyReader) Close() error { return b.f.Close() }

// Stat implements store.Store.
func (s *Store) Stat(ctx context.Context, key string) (store.Info, error) {
	if err := s.begin(ctx, "stat", key); err != nil {
		return store.Info{}, err
	}
	info, err := statObject(s.path(key), key)
	if err != nil {
		return store.Info{}, opError("stat", key, err)
	}
	return info, nil
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	if err := s.begin(ctx, "put", key); err != nil {
		return store.Info{}, err
	}
	if s.readOnly {
		return store.Info{}, errReadOnly("put", key)
	}
	tmp, etag, err := s.writeTemp(body, size)
	if tmp != "" {
		defer os.Remove(tmp)
	}
	if err != nil {
		var oe *store.OpError
		if errors.As(err, &oe) {
			oe.Op, oe.Key = "put", key
			return store.Info{}, oe
		}
		oe = opError("put", key, err)
		if oe.Kind == store.KindNotFound {
			// The temp directory vanished (removed under a live store):
			// not a statement about the key.
			oe.Kind, oe.Code = store.KindPermanent, "temp_missing"
		}
		return store.Info{}, oe
	}
	if err := ctx.Err(); err != nil {
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindTransient, Code: "canceled", Err: err}
	}
	unlock, err := s.locks.lock(key)
	if err != nil {
		return store.Info{}, opError("put", key, err)
	}
	defer unlock()
	if err := s.checkCondition(key, cond); err != nil {
		return store.Info{}, err
	}
	if err := s.install(key, tmp, cond.IfAbsent); err != nil {
		return store.Info{}, err
	}
	return store.Info{Key: key, ETag: etag, Size: size}, nil
}

// checkCondition tests cond against the key's current object. The caller
// holds the key's stripe lock.
func (s *Store) checkCondition(key string, cond store.Condition) error {
	if cond.IsZero() {
		return nil
	}
	cur, err := statObject(s.path(key), key)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return opError("put", key, err)
	}
	switch {
	case cond.IfAbsent && exists:
		return precondition(key, "PreconditionFailed", "key exists")
	case cond.IfMatch != "" && !exists:
		return precondition(key, "NoSuchKey", "key does not exist")
	case cond.IfMatch != "" && cur.ETag != cond.IfMatch:
		return precondition(key, "PreconditionFailed", "etag differs")
	}
	return nil
}

func precondition(key, code, msg string) error {
	return &store.OpError{Op: "put", Key: key, Kind: store.KindPrecondition, Code: code, Err: errors.New(msg)}
}

// writeTemp streams size bytes of body into a new, fsynced temp file with
// the object header, and returns its path (also on error, when created)
// and the body's ETag.
func (s *Store) writeTemp(body io.Reader, size int64) (path, etag string, err error) {
	path = filepath.Join(s.tmp.path, strconv.FormatUint(s.seq.Add(1), 10)+".tmp")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", "", fmt.Errorf("create temp file: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close temp file: %w", cerr)
		}
	}()
	if _, err := f.Write(make([]byte, headerLen)); err != nil {
		return path, "", fmt.Errorf("write temp file: %w", err)
	}
	h := md5.New()
	src := &readErrRecorder{r: io.LimitReader(body, max(size, 0)+1)}
	n, err := io.CopyBuffer(io.MultiWriter(f, h), src, make([]byte, 256<<10))
	switch {
	case src.err != nil:
		return path, "", &store.OpError{Kind: store.KindTransient, Code: "read_body", Err: src.err}
	case err != nil:
		return path, "", fmt.Errorf("write temp file: %w", err)
	case n != size:
		return path, "", &store.OpError{Kind: store.KindPermanent, Code: "size_mismatch",
			Err: fmt.Errorf("body length differs from size %d", size)}
	}
	etag = hex.EncodeToString(h.Sum(nil))
	if _, err := f.WriteAt(header(etag), 0); err != nil {
		return path, "", fmt.Errorf("write temp file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return path, "", fmt.Errorf("sync temp file: %w", err)
	}
	return path, etag, nil
}

// readErrRecorder remembers the error of its reader, to tell a failing
// body apart from a failing disk.
type readErrRecorder struct {
	r   io.Reader
	err error
}

func (r *readErrRecorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

func header(etag string) []byte {
	return []byte(magic + etag + "\n")
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	return s.deleteKeys(ctx, "delete", []string{key})
}

// DeleteMany implements store.Store. It validates every key first, then
// removes the objects one by one, each under its stripe lock, and fsyncs
// each affected directory once before returning.
func (s *Store) DeleteMany(ctx context.Context, keys []string) error {
	return s.deleteKeys(ctx, "delete", keys)
}

func (s *Store) deleteKeys(ctx context.Context, op string, keys []string) error {
	for _, key := range keys {
		if err := s.begin(ctx, op, key); err != nil {
			return err
		}
		if s.readOnly {
			return errReadOnly(op, key)
		}
	}
	dirs := map[string]bool{}
	var firstErr error
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			firstErr = &store.OpError{Op: op, Key: key, Kind: store.KindTransient, Code: "canceled", Err: err}
			break
		}
		unlock, err := s.locks.lock(key)
		if err != nil {
			firstErr = opError(op, key, err)
			break
		}
		err = os.Remove(s.path(key))
		unlock()
		if err == nil {
			dirs[relDir(key)] = true
		} else if !errors.Is(err, fs.ErrNotExist) {
			firstErr = opError(op, key, err)
			break
		}
	}
	// Make what was removed durable, also when a later key failed.
	for dir := range dirs {
		if err := s.syncRemoved(dir); err != nil && firstErr == nil {
			firstErr = opError(op, dir, err)
		}
	}
	for dir := range dirs {
		s.pruneDirs(dir)
	}
	return firstErr
}

// openObject opens an object file and reads its header.
func openObject(path, key string) (*os.File, store.Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, store.Info{}, err
	}
	info, err := readInfo(f, key)
	if err != nil {
		f.Close()
		return nil, store.Info{}, err
	}
	return f, info, nil
}

// statObject returns an object file's Info.
func statObject(path, key string) (store.Info, error) {
	f, info, err := openObject(path, key)
	if err != nil {
		return store.Info{}, err
	}
	f.Close()
	return info, nil
}

// errCorrupt marks an object file without a valid header.
var errCorrupt = errors.New("corrupt object file")

func readInfo(f *os.File, key string) (store.Info, error) {
	var hdr [headerLen]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		if errors.Is(err, io.EOF) {
			return store.Info{}, fmt.Errorf("%w: short header", errCorrupt)
		}
		return store.Info{}, err
	}
	etag := string(hdr[len(magic) : headerLen-1])
	if string(hdr[:len(magic)]) != magic || hdr[headerLen-1] != '\n' {
		return store.Info{}, fmt.Errorf("%w: bad header", errCorrupt)
	}
	if _, err := hex.DecodeString(etag); err != nil {
		return store.Info{}, fmt.Errorf("%w: bad etag", errCorrupt)
	}
	st, err := f.Stat()
	if err != nil {
		return store.Info{}, err
	}
	return store.Info{Key: key, ETag: etag, Size: st.Size() - int64(headerLen), Modified: st.ModTime()}, nil
}
