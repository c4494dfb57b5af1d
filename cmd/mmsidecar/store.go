package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/dirstore"
	"github.com/mmsidecar/mmsidecar/store/memstore"
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

// openStoreReadOnly is openStore for commands that only read (status):
// the embedded store is opened without creating or locking anything, and
// one that does not exist yet reads as empty.
func openStoreReadOnly(cfg *Config) (store.Store, error) {
	if cfg.S3Endpoint != "" {
		return openStore(cfg)
	}
	st, err := dirstore.OpenReadOnly(cfg.StoreDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return memstore.New(), nil
	case err != nil:
		return nil, fmt.Errorf("open directory store: %w", err)
	}
	return st, nil
}

// embeddedStoreOwner says whether `check` may write into the embedded
// store: "" when it may (it exists and belongs to this user), otherwise
// why not. missing reports a store that does not exist yet.
func embeddedStoreOwner(cfg *Config) (why string, missing bool) {
	var st syscall.Stat_t
	err := syscall.Stat(cfg.StoreDir, &st)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "does not exist yet: `mmsidecar run` creates it (check creates nothing)", true
	case err != nil:
		return "", false // openStore reports it
	case int(st.Uid) != os.Geteuid():
		return fmt.Sprintf("is %s, and check would leave files of %s in it that the sidecar could not use: run check as the directory's owner (e.g. sudo -u OWNER mmsidecar check)",
			ownerOf(cfg.StoreDir), runningAs()), false
	}
	return "", false
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
