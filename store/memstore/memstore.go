// Package memstore is an in-memory store.Store with S3's semantics
// (conditional create, compare-and-swap on the MD5 ETag, unconditional
// delete, strongly consistent ordered list), for fast unit tests.
package memstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

// Store is an in-memory store.Store. The zero value is not usable; call New.
type Store struct {
	mu      sync.Mutex
	objects map[string]object
}

// object is one stored body and when it was written.
type object struct {
	data     []byte
	modified time.Time
}

// New returns an empty in-memory store.
func New() *Store { return &Store{objects: make(map[string]object)} }

func notFound(op, key string) error {
	return &store.OpError{Op: op, Key: key, Kind: store.KindNotFound, Code: "NoSuchKey", Err: errors.New("no such key")}
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	if err := ctx.Err(); err != nil {
		return nil, store.Info{}, &store.OpError{Op: "get", Key: key, Kind: store.KindTransient, Code: "canceled", Err: err}
	}
	s.mu.Lock()
	o, ok := s.objects[key]
	s.mu.Unlock()
	if !ok {
		return nil, store.Info{}, notFound("get", key)
	}
	return io.NopCloser(bytes.NewReader(o.data)), info(key, o), nil
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	if err := ctx.Err(); err != nil {
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindTransient, Code: "canceled", Err: err}
	}
	data, err := io.ReadAll(io.LimitReader(body, size+1))
	if err != nil {
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindTransient, Code: "read_body", Err: err}
	}
	if int64(len(data)) != size {
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindPermanent, Code: "size_mismatch", Err: errors.New("body length differs from size")}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old, exists := s.objects[key]
	switch {
	case cond.IfAbsent && exists:
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindPrecondition, Code: "PreconditionFailed", Err: errors.New("key exists")}
	case cond.IfMatch != "" && !exists:
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindPrecondition, Code: "NoSuchKey", Err: errors.New("key does not exist")}
	case cond.IfMatch != "" && store.ETagOf(old.data) != cond.IfMatch:
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindPrecondition, Code: "PreconditionFailed", Err: errors.New("etag differs")}
	}
	o := object{data: data, modified: time.Now()}
	s.objects[key] = o
	return info(key, o), nil
}

// Stat implements store.Store.
func (s *Store) Stat(ctx context.Context, key string) (store.Info, error) {
	s.mu.Lock()
	o, ok := s.objects[key]
	s.mu.Unlock()
	if !ok {
		return store.Info{}, notFound("stat", key)
	}
	return info(key, o), nil
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	s.mu.Lock()
	var infos []store.Info
	for k, v := range s.objects {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, info(k, v))
		}
	}
	s.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, in := range infos {
		if err := ctx.Err(); err != nil {
			return &store.OpError{Op: "list", Key: prefix, Kind: store.KindTransient, Code: "canceled", Err: err}
		}
		if err := fn(in); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	s.mu.Lock()
	delete(s.objects, key)
	s.mu.Unlock()
	return nil
}

// DeleteMany implements store.Store.
func (s *Store) DeleteMany(ctx context.Context, keys []string) error {
	s.mu.Lock()
	for _, k := range keys {
		delete(s.objects, k)
	}
	s.mu.Unlock()
	return nil
}

func info(key string, o object) store.Info {
	return store.Info{Key: key, ETag: store.ETagOf(o.data), Size: int64(len(o.data)), Modified: o.modified}
}
