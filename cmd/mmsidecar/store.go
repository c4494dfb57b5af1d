package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/dirstore"
	"github.com/mmsidecar/mmsidecar/store/s3store"
)

// openStore builds the configured store: the embedded directory store in
// StoreDir when S3Endpoint is empty, the S3 store otherwise. Neither
// contacts a server. A store directory on a network filesystem is a
// *ConfigError. Release the store with closeStore.
func openStore(cfg *Config) (store.Store, error) {
	if cfg.S3Endpoint == "" {
		st, err := dirstore.Open(cfg.StoreDir)
		if errors.Is(err, dirstore.ErrNetworkFS) {
			return nil, newConfigError("MMSIDECAR_STORE_DIR", cfg.StoreDir, "%v", err)
		}
		if err != nil {
			return nil, fmt.Errorf("open directory store: %w", err)
		}
		return st, nil
	}
	st, err := s3store.New(s3store.Config{
		Endpoint:       cfg.S3Endpoint,
		Bucket:         cfg.S3Bucket,
		Region:         cfg.S3Region,
		AccessKey:      cfg.S3AccessKey.Reveal(),
		SecretKey:      cfg.S3SecretKey.Reveal(),
		TLS:            cfg.S3TLS,
		CAFile:         cfg.S3CAFile,
		RequestTimeout: cfg.S3RequestTimeout,
	})
	if err != nil {
		return nil, newConfigError("MMSIDECAR_S3_ENDPOINT", cfg.S3Endpoint, "%v", err)
	}
	return st, nil
}

// closeStore releases a store that holds resources (the directory store's
// lock files and temp directory); other stores need nothing.
func closeStore(st store.Store) error {
	if c, ok := st.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// storeDescription names the configured store for people: the S3
// endpoint, bucket and prefix, or the store directory.
func storeDescription(cfg *Config) string {
	if cfg.S3Endpoint == "" {
		return fmt.Sprintf("directory store %s (prefix %q)", cfg.StoreDir, cfg.S3Prefix)
	}
	scheme := "http"
	if cfg.S3TLS {
		scheme = "https"
	}
	return fmt.Sprintf("s3 %s://%s/%s (prefix %q)", scheme, cfg.S3Endpoint, cfg.S3Bucket, cfg.S3Prefix)
}
