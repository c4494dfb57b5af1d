// Package s3store is a store.Store on an S3-compatible object store
// (MinIO by default) through minio-go. It keeps the rules conditional
// writes need on S3: a conditional write is always one single-part PUT
// carrying a unique nonce, and an ambiguous answer is settled by reading
// the object back. Every call is bounded in time, and every error is a
// *store.OpError with a kind and a short code.
package s3store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/url"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/mmsidecar/mmsidecar/store"
)

// Defaults for the zero values of Config.
const (
	// DefaultRequestTimeout bounds a call that makes no progress.
	DefaultRequestTimeout = 10 * time.Second
	// DefaultMaxRetries is the number of attempts minio-go makes for one
	// request before the caller sees the error.
	DefaultMaxRetries = 3
	// DefaultRegion is the region signed into requests when none is set;
	// it spares a bucket-location lookup before the first request.
	DefaultRegion = "us-east-1"
)

// deleteBatch is the most keys one multi-object delete request may carry.
const deleteBatch = 1000

// Config says how to reach the store.
type Config struct {
	// Endpoint is host:port, or a URL whose scheme must agree with TLS.
	Endpoint string
	// Bucket holds every object of this store.
	Bucket string
	// Region is signed into requests; empty means DefaultRegion.
	Region string
	// AccessKey and SecretKey are the static credentials.
	AccessKey, SecretKey string
	// TLS makes the client speak HTTPS.
	TLS bool
	// CAFile is a PEM bundle trusted in addition to the system roots.
	// It requires TLS.
	CAFile string
	// RequestTimeout is the longest a call may go without progress: the
	// whole call for one without a body, the longest stall of a body
	// transfer otherwise. Zero means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// MaxRetries is the number of attempts minio-go makes for one request
	// (1 means no retry). Zero means DefaultMaxRetries. Callers retry with
	// their own backoff on top.
	MaxRetries int
}

// Store is a store.Store on one bucket of an S3-compatible store.
type Store struct {
	client  *minio.Client
	core    minio.Core
	bucket  string
	timeout time.Duration
}

var _ store.Store = (*Store)(nil)

// New checks cfg and returns a store. It does not contact the server.
func New(cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3 config: bucket is empty")
	}
	host, err := endpointHost(&cfg)
	if err != nil {
		return nil, err
	}
	if cfg.CAFile != "" && !cfg.TLS {
		return nil, fmt.Errorf("s3 config: %s is set but %s is off", envCAFile, envTLS)
	}
	if cfg.RequestTimeout < 0 || cfg.MaxRetries < 0 {
		return nil, errors.New("s3 config: negative request timeout or retries")
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = DefaultMaxRetries
	}
	if cfg.Region == "" {
		cfg.Region = DefaultRegion
	}
	tr, err := newTransport(cfg)
	if err != nil {
		return nil, fmt.Errorf("s3 config: %w", err)
	}
	client, err := minio.New(host, &minio.Options{
		Creds:      credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure:     cfg.TLS,
		Transport:  tr,
		Region:     cfg.Region,
		MaxRetries: cfg.MaxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	return &Store{client: client, core: minio.Core{Client: client}, bucket: cfg.Bucket, timeout: cfg.RequestTimeout}, nil
}

// endpointHost returns the host:port of cfg.Endpoint, taking TLS from a
// URL scheme when there is one.
func endpointHost(cfg *Config) (string, error) {
	ep := cfg.Endpoint
	if ep == "" {
		return "", errors.New("s3 config: endpoint is empty")
	}
	if !strings.Contains(ep, "://") {
		return strings.TrimSuffix(ep, "/"), nil
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", fmt.Errorf("s3 config: endpoint: %w", err)
	}
	if u.Path != "" && u.Path != "/" {
		return "", fmt.Errorf("s3 config: endpoint %q has a path; give host:port", ep)
	}
	switch u.Scheme {
	case "https":
		cfg.TLS = true
	case "http":
		if cfg.TLS {
			return "", fmt.Errorf("s3 config: endpoint %q is http:// but %s is on", ep, envTLS)
		}
	default:
		return "", fmt.Errorf("s3 config: endpoint %q: scheme must be http or https", ep)
	}
	return u.Host, nil
}

// Bucket returns the bucket the store writes to.
func (s *Store) Bucket() string { return s.bucket }

// CreateBucket creates the bucket if it does not exist yet. It is meant for
// tests and development setups; production buckets are provisioned.
func (s *Store) CreateBucket(ctx context.Context) error {
	w := newWatchdog(ctx, s.timeout)
	defer w.stop()
	err := s.client.MakeBucket(w.ctx, s.bucket, minio.MakeBucketOptions{})
	if err == nil {
		return nil
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		switch er.Code {
		case "BucketAlreadyOwnedByYou":
			return nil
		case "BucketAlreadyExists":
			ok, xerr := s.client.BucketExists(w.ctx, s.bucket)
			if xerr == nil && ok {
				return nil
			}
		}
	}
	return classify("create_bucket", s.bucket, err, w)
}

// Get implements store.Store. Each Read of the body may wait on the
// server for at most the request timeout.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, store.Info, error) {
	w := newWatchdog(ctx, s.timeout)
	rc, oi, _, err := s.core.GetObject(w.ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		e := classify("get", key, err, w)
		w.stop()
		return nil, store.Info{}, e
	}
	w.pause()
	return &getBody{rc: rc, w: w, key: key}, infoOf(key, oi), nil
}

// Stat implements store.Store.
func (s *Store) Stat(ctx context.Context, key string) (store.Info, error) {
	oi, err := s.stat(ctx, key)
	if err != nil {
		return store.Info{}, err
	}
	return infoOf(key, oi), nil
}

// stat is a HEAD request returning minio-go's full object info.
func (s *Store) stat(ctx context.Context, key string) (minio.ObjectInfo, error) {
	w := newWatchdog(ctx, s.timeout)
	defer w.stop()
	oi, err := s.client.StatObject(w.ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return minio.ObjectInfo{}, classify("stat", key, err, w)
	}
	return oi, nil
}

// List implements store.Store. Pages of up to 1000 keys are fetched as fn
// consumes them; only the wait for a page counts against the timeout.
func (s *Store) List(ctx context.Context, prefix string, fn func(store.Info) error) error {
	w := newWatchdog(ctx, s.timeout)
	defer w.stop()
	fetchOwner := false
	objects := s.client.ListObjectsIter(w.ctx, s.bucket, minio.ListObjectsOptions{
		Prefix:     prefix,
		Recursive:  true,
		FetchOwner: &fetchOwner,
	})
	next, stop := iter.Pull(objects)
	defer stop()
	for {
		w.kick()
		oi, ok := next()
		w.pause()
		if !ok {
			break
		}
		if oi.Err != nil {
			return classify("list", prefix, oi.Err, w)
		}
		if err := fn(infoOf(oi.Key, oi)); err != nil {
			return err
		}
	}
	// minio-go ends the sequence silently when its context ends.
	if err := w.ctx.Err(); err != nil {
		return classify("list", prefix, err, w)
	}
	return nil
}

// Delete implements store.Store. Deletes are unconditional: MinIO ignores
// If-Match on DELETE.
func (s *Store) Delete(ctx context.Context, key string) error {
	w := newWatchdog(ctx, s.timeout)
	defer w.stop()
	err := s.client.RemoveObject(w.ctx, s.bucket, key, minio.RemoveObjectOptions{})
	if err != nil {
		oe := classify("delete", key, err, w)
		if oe.Kind == store.KindNotFound {
			return nil
		}
		return oe
	}
	return nil
}

// DeleteMany implements store.Store with multi-object delete requests of up
// to 1000 keys each, each bounded by the request timeout.
func (s *Store) DeleteMany(ctx context.Context, keys []string) error {
	for start := 0; start < len(keys); start += deleteBatch {
		end := min(start+deleteBatch, len(keys))
		if err := s.deleteBatch(ctx, keys[start:end]); err != nil {
			return err
		}
	}
	return nil
}

// deleteBatch removes up to deleteBatch keys in one request.
func (s *Store) deleteBatch(ctx context.Context, keys []string) error {
	w := newWatchdog(ctx, s.timeout)
	defer w.stop()
	objects := func(yield func(minio.ObjectInfo) bool) {
		for _, k := range keys {
			if !yield(minio.ObjectInfo{Key: k}) {
				return
			}
		}
	}
	results, err := s.client.RemoveObjectsWithIter(w.ctx, s.bucket, objects, minio.RemoveObjectsOptions{})
	if err != nil {
		return classify("delete_many", keys[0], err, w)
	}
	var first *store.OpError
	failed := 0
	for r := range results {
		if r.Err == nil {
			continue
		}
		oe := classify("delete_many", r.ObjectName, r.Err, w)
		if oe.Kind == store.KindNotFound {
			continue
		}
		failed++
		if first == nil {
			first = oe
		}
	}
	if first == nil {
		if err := w.ctx.Err(); err != nil {
			return classify("delete_many", keys[0], err, w)
		}
		return nil
	}
	if failed > 1 {
		first.Err = fmt.Errorf("%d of %d keys not deleted, first: %w", failed, len(keys), first.Err)
	}
	return first
}

// infoOf converts minio-go's object info.
func infoOf(key string, oi minio.ObjectInfo) store.Info {
	return store.Info{Key: key, ETag: strings.Trim(oi.ETag, `"`), Size: oi.Size, Modified: oi.LastModified}
}
