// Package store is a small object-store interface with conditional writes,
// and the helpers shared by its implementations (S3, a local directory, and
// memory). It knows nothing of Mailman, leases or claims.
package store

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"
)

// Info describes one stored object.
type Info struct {
	// Key is the object's full key.
	Key string
	// ETag is the object's entity tag without quotes. For a single-part
	// write it is the hex MD5 of the body on every implementation, so two
	// identical bodies share an ETag: coordination objects must differ.
	ETag string
	// Size is the body length in bytes.
	Size int64
	// Modified is when the object was last written, by the store's clock
	// (to the second on S3); zero where the store does not say, as in the
	// answer to a Put.
	Modified time.Time
}

// Condition says when a Put may take effect. The zero value is an
// unconditional write.
type Condition struct {
	// IfAbsent makes the write succeed only if the key does not exist
	// (If-None-Match: *).
	IfAbsent bool
	// IfMatch makes the write succeed only if the key exists with this ETag.
	IfMatch string
}

// IsZero reports whether c is an unconditional write.
func (c Condition) IsZero() bool { return !c.IfAbsent && c.IfMatch == "" }

// Store is an object store with conditional writes. Implementations are
// safe for concurrent use.
type Store interface {
	// Get opens the object's body. The caller closes it.
	Get(ctx context.Context, key string) (io.ReadCloser, Info, error)
	// Put writes size bytes from body under key if cond holds. A failed
	// condition (including IfMatch on a missing key) is ErrPrecondition.
	// When a retried conditional write finds its own earlier attempt
	// committed, Put reports success. An implementation may still be
	// reading body for a moment after Put returns (an HTTP client that got
	// an early answer): never reuse or change the bytes behind it.
	Put(ctx context.Context, key string, body io.Reader, size int64, cond Condition) (Info, error)
	// Stat returns the object's metadata.
	Stat(ctx context.Context, key string) (Info, error)
	// List calls fn for every object whose key starts with prefix, in
	// lexicographic key order. An error from fn stops the listing and is
	// returned.
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// Delete removes the object unconditionally. A missing key is not an
	// error.
	Delete(ctx context.Context, key string) error
	// DeleteMany removes several objects unconditionally, in as few
	// requests as the backend allows. Missing keys are not errors.
	DeleteMany(ctx context.Context, keys []string) error
}

// ETagOf returns the ETag a single-part write of body gets: its hex MD5.
func ETagOf(body []byte) string {
	sum := md5.Sum(body)
	return hex.EncodeToString(sum[:])
}

// GetBytes reads a whole object into memory.
func GetBytes(ctx context.Context, s Store, key string) ([]byte, Info, error) {
	rc, info, err := s.Get(ctx, key)
	if err != nil {
		return nil, Info{}, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return nil, Info{}, &OpError{Op: "get", Key: key, Kind: KindTransient, Code: "read_body", Err: err}
	}
	return data, info, nil
}

// PutBytes writes body under key if cond holds.
func PutBytes(ctx context.Context, s Store, key string, body []byte, cond Condition) (Info, error) {
	return s.Put(ctx, key, bytes.NewReader(body), int64(len(body)), cond)
}

// Kind classifies a store error.
type Kind int

// The kinds of store error.
const (
	// KindPermanent is an error that retrying will not fix (bad
	// credentials, missing bucket, malformed request).
	KindPermanent Kind = iota
	// KindNotFound means the key does not exist.
	KindNotFound
	// KindPrecondition means a conditional write lost: re-read and decide.
	KindPrecondition
	// KindTransient is an error worth retrying (network, timeout, 5xx,
	// throttling).
	KindTransient
)

// String names the kind for logs and metric labels.
func (k Kind) String() string {
	switch k {
	case KindNotFound:
		return "not_found"
	case KindPrecondition:
		return "precondition_failed"
	case KindTransient:
		return "transient"
	default:
		return "permanent"
	}
}

// Sentinel errors: test with errors.Is.
var (
	// ErrNotFound matches errors for a key that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrPrecondition matches a conditional write that lost.
	ErrPrecondition = errors.New("precondition failed")
	// ErrTransient matches errors worth retrying.
	ErrTransient = errors.New("transient store error")
)

// OpError is the error every implementation returns for a failed call.
type OpError struct {
	// Op is the operation: get, put, stat, list, delete.
	Op string
	// Key is the key or prefix involved.
	Key string
	// Kind classifies the failure.
	Kind Kind
	// Code is a short backend code for metrics, e.g. "NoSuchKey" or
	// "timeout".
	Code string
	// Err is the underlying error.
	Err error
}

// Error formats the error as "op key: cause".
func (e *OpError) Error() string {
	return fmt.Sprintf("%s %s: %v", e.Op, e.Key, e.Err)
}

// Unwrap returns the underlying error.
func (e *OpError) Unwrap() error { return e.Err }

// Is matches the sentinel errors by kind.
func (e *OpError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Kind == KindNotFound
	case ErrPrecondition:
		return e.Kind == KindPrecondition
	case ErrTransient:
		return e.Kind == KindTransient
	}
	return false
}

// KindOf classifies any error: an OpError's kind, the context errors as
// transient, anything else as permanent.
func KindOf(err error) Kind {
	var oe *OpError
	switch {
	case err == nil:
		return KindPermanent
	case errors.As(err, &oe):
		return oe.Kind
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return KindTransient
	}
	return KindPermanent
}

// CodeOf returns a short code for metric labels: the OpError's code, or
// the kind's name.
func CodeOf(err error) string {
	var oe *OpError
	if errors.As(err, &oe) && oe.Code != "" {
		return oe.Code
	}
	return KindOf(err).String()
}

// CodeMissing is the Code of a conditional write that failed because its
// If-Match named a key that is not there (KindPrecondition), and of a
// read of a missing key.
const CodeMissing = "NoSuchKey"

// Missing reports whether err says that the key is not there: a read
// that found nothing, or a write whose If-Match found no key.
func Missing(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrPrecondition) && CodeOf(err) == CodeMissing
}
