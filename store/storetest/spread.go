package storetest

import (
	"context"
	"io"
	"sync/atomic"

	"github.com/mmsidecar/mmsidecar/store"
)

// Spread returns a store that sends each call to the next of stores in
// turn: one bucket reached through several S3 gateways of one cluster.
// The contract run on it races conditional writes through every gateway
// at once and reads each write back through another one.
func Spread(stores ...store.Store) store.Store {
	return &spread{stores: stores}
}

type spread struct {
	stores []store.Store
	next   atomic.Uint64
}

func (s *spread) pick() store.Store {
	return s.stores[(s.next.Add(1)-1)%uint64(len(s.stores))]
}

func (s *spread) Get(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	return s.pick().Get(ctx, key)
}

func (s *spread) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	return s.pick().Put(ctx, key, body, size, cond)
}

func (s *spread) Stat(ctx context.Context, key string) (store.Info, error) {
	return s.pick().Stat(ctx, key)
}

func (s *spread) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	return s.pick().List(ctx, prefix, fn)
}

func (s *spread) Delete(ctx context.Context, key string) error { return s.pick().Delete(ctx, key) }

func (s *spread) DeleteMany(ctx context.Context, keys []string) error {
	return s.pick().DeleteMany(ctx, keys)
}
