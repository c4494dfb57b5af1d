package storetest

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
)

// Environment variables that name the S3 endpoint the engine-neutral
// suites run against (the store contract, the safety probe, `mmsidecar
// check`, the runner's integration test): any S3-compatible store.
// scripts/test.sh points them at its MinIO, then at its SeaweedFS.
const (
	EnvEndpoint  = "MMSIDECAR_TEST_S3_ENDPOINT"
	EnvAccessKey = "MMSIDECAR_TEST_S3_ACCESS_KEY"
	EnvSecretKey = "MMSIDECAR_TEST_S3_SECRET_KEY"
	// EnvCAFile, when set, makes the endpoint HTTPS trusting that CA.
	EnvCAFile = "MMSIDECAR_TEST_S3_CA_FILE"
	// EnvName names the engine behind the endpoint, for messages and
	// reports ("minio", "seaweedfs"); default "s3".
	EnvName = "MMSIDECAR_TEST_S3_NAME"
)

// S3 is an S3 endpoint tests make buckets on, whatever its engine: the
// one the environment names (SharedS3), or the front door of a server
// the harness runs (a SeaweedFS, a MinIO).
type S3 struct {
	// Name is the engine, for messages: "minio", "seaweedfs", "s3".
	Name string
	// Endpoint is host:port of the S3 API.
	Endpoint string
	// AccessKey and SecretKey are the credentials.
	AccessKey, SecretKey string
	// CAFile, when set, makes the endpoint HTTPS trusting that CA.
	CAFile string
}

// Config returns an s3store configuration for bucket on the endpoint.
func (e *S3) Config(bucket string) s3store.Config {
	return s3store.Config{
		Endpoint:  e.Endpoint,
		Bucket:    bucket,
		AccessKey: e.AccessKey,
		SecretKey: e.SecretKey,
		TLS:       e.CAFile != "",
		CAFile:    e.CAFile,
	}
}

// NewBucket creates a bucket no other test uses, waits until it takes a
// write (a new SeaweedFS bucket refuses writes with "No writable volumes"
// until its volumes have grown), and empties and removes it when the test
// ends. The bucket is empty when NewBucket returns.
func (e *S3) NewBucket(t testing.TB) string {
	t.Helper()
	bucket := bucketName(t)
	cfg := e.Config(bucket)
	createBucket(t, cfg)
	if err := WaitBucketWritable(cfg, readyTimeout); err != nil {
		t.Fatalf("new bucket %s on %s (%s): %v", bucket, e.Name, e.Endpoint, err)
	}
	t.Cleanup(func() {
		if err := removeBucket(cfg); err != nil {
			t.Logf("remove bucket %s on %s: %v", bucket, e.Name, err)
		}
	})
	return bucket
}

// Store returns an s3store on a new bucket of the endpoint.
func (e *S3) Store(t testing.TB) store.Store {
	t.Helper()
	s, err := s3store.New(e.Config(e.NewBucket(t)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var sharedS3 struct {
	once sync.Once
	e    *S3
	err  error
}

// SharedS3 returns the endpoint the engine-neutral suites run against:
// the one MMSIDECAR_TEST_S3_* names (any engine, ready once it answers a
// plain S3 request), else the shared MinIO (Shared). Tests get a fresh
// bucket each with NewBucket or Store.
func SharedS3(t testing.TB) *S3 {
	t.Helper()
	skipIfOff(t)
	ep := os.Getenv(EnvEndpoint)
	if ep == "" {
		m := Shared(t)
		return &S3{Name: "minio", Endpoint: m.Endpoint, AccessKey: m.AccessKey, SecretKey: m.SecretKey, CAFile: m.caFile}
	}
	sharedS3.once.Do(func() {
		e := &S3{Name: os.Getenv(EnvName), Endpoint: ep, AccessKey: os.Getenv(EnvAccessKey),
			SecretKey: os.Getenv(EnvSecretKey), CAFile: os.Getenv(EnvCAFile)}
		if e.Name == "" {
			e.Name = "s3"
		}
		if e.AccessKey == "" || e.SecretKey == "" {
			sharedS3.err = fmt.Errorf("%s is set but %s or %s is empty", EnvEndpoint, EnvAccessKey, EnvSecretKey)
			return
		}
		if err := waitS3Ready(e, nil, readyTimeout); err != nil {
			sharedS3.err = fmt.Errorf("%s at %s=%s: %w", e.Name, EnvEndpoint, ep, err)
			return
		}
		sharedS3.e = e
	})
	if sharedS3.err != nil {
		t.Fatal(sharedS3.err)
	}
	return sharedS3.e
}

// client is a minio-go client of the endpoint, for the harness's own
// bucket-level requests.
func (e *S3) client() (*minio.Client, error) {
	tr, err := clientTransport(e.CAFile)
	if err != nil {
		return nil, err
	}
	return minio.New(e.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(e.AccessKey, e.SecretKey, ""),
		Region:    s3store.DefaultRegion,
		Secure:    e.CAFile != "",
		Transport: tr,
	})
}

// refusedCodes are S3 answers that no amount of waiting changes: the
// credentials are wrong.
var refusedCodes = map[string]bool{"InvalidAccessKeyId": true, "SignatureDoesNotMatch": true, "AccessDenied": true}

// waitS3Ready waits until the endpoint answers a plain S3 request (a
// signed ListBuckets) with success, exited closes, or the deadline
// passes. It is how the harness knows any engine serves: no
// engine-specific health call.
func waitS3Ready(e *S3, exited <-chan struct{}, timeout time.Duration) error {
	c, err := e.client()
	if err != nil {
		return err
	}
	return pollReady(exited, timeout, 100*time.Millisecond, func(ctx context.Context) (error, error) {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		_, err := c.ListBuckets(rctx)
		if err != nil && refusedCodes[minio.ToErrorResponse(err).Code] {
			return fmt.Errorf("list buckets: %w", err), nil
		}
		return nil, err
	})
}

// warmupKey is the object WaitBucketWritable writes and deletes.
const warmupKey = "mmsidecar-storetest-warmup"

// WaitBucketWritable writes one object into cfg's bucket and deletes it,
// retrying transient refusals until timeout: a new SeaweedFS bucket
// answers "No writable volumes" until its volumes have grown.
func WaitBucketWritable(cfg s3store.Config, timeout time.Duration) error {
	s, err := s3store.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	body := []byte("warm-up " + rand.Text())
	for {
		_, err = store.PutBytes(ctx, s, warmupKey, body, store.Condition{})
		if err == nil {
			err = s.Delete(ctx, warmupKey)
		}
		if err == nil {
			return nil
		}
		if store.KindOf(err) != store.KindTransient {
			return fmt.Errorf("first write: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("first write still refused after %s: %w", timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// removeBucket empties cfg's bucket and removes it, with plain S3
// requests (any engine), so a shared server's data stays small. A bucket
// already gone is no error.
func removeBucket(cfg s3store.Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := s3store.New(cfg)
	if err != nil {
		return err
	}
	var keys []string
	err = s.List(ctx, "", func(in store.Info) error { keys = append(keys, in.Key); return nil })
	if err == nil && len(keys) > 0 {
		err = s.DeleteMany(ctx, keys)
	}
	if err != nil {
		if store.KindOf(err) == store.KindNotFound {
			return nil
		}
		return err
	}
	e := S3{Endpoint: cfg.Endpoint, AccessKey: cfg.AccessKey, SecretKey: cfg.SecretKey, CAFile: cfg.CAFile}
	c, err := e.client()
	if err != nil {
		return err
	}
	err = c.RemoveBucket(ctx, cfg.Bucket)
	if err != nil && minio.ToErrorResponse(err).Code == "NoSuchBucket" {
		return nil
	}
	return err
}

// bucketName returns a bucket name no other test uses, derived from the
// test's name.
func bucketName(t testing.TB) string {
	name := strings.Trim(bucketUnsafe.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 36 {
		name = strings.Trim(name[len(name)-36:], "-")
	}
	return "t-" + name + "-" + strings.ToLower(rand.Text()[:12])
}

// createBucket creates cfg's bucket, retrying while the server is still
// starting, and fails t when it cannot.
func createBucket(t testing.TB, cfg s3store.Config) {
	t.Helper()
	s, err := s3store.New(cfg)
	if err != nil {
		t.Fatalf("s3store for bucket %s: %v", cfg.Bucket, err)
	}
	// A server that has just started may still refuse requests briefly.
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for {
		err = s.CreateBucket(ctx)
		if err == nil || store.KindOf(err) != store.KindTransient || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatalf("create bucket %s on %s: %v", cfg.Bucket, cfg.Endpoint, err)
	}
}
