package s3store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/minio/minio-go/v7"

	"github.com/mmsidecar/mmsidecar/store"
)

// NonceMeta is the user-metadata name of the nonce every conditional write
// carries (sent as X-Amz-Meta-Mmsidecar-Nonce). A conditional write whose
// answer was ambiguous is ours if the stored object carries our nonce.
const NonceMeta = "Mmsidecar-Nonce"

// singlePartMax is the largest unconditional write sent as one PUT, so its
// ETag is the body's MD5. Larger unconditional writes stream as multipart
// uploads. Conditional writes are always one PUT, whatever their size:
// minio-go drops the condition on multipart uploads.
const singlePartMax = 64 << 20

// Put implements store.Store. A conditional write is one PUT with
// If-None-Match or If-Match and a fresh nonce. When the answer is a 412, or
// the request failed in a way that may hide a commit, the object is read
// back: carrying our nonce, the write is ours and Put succeeds.
func (s *Store) Put(ctx context.Context, key string, body io.Reader, size int64, cond store.Condition) (store.Info, error) {
	if cond.IsZero() {
		return s.putUnconditional(ctx, key, body, size)
	}
	if size < 0 {
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindPermanent, Code: "size_unknown",
			Err: errors.New("a conditional write needs the body size")}
	}
	nonce := rand.Text()
	opts := minio.PutObjectOptions{
		ContentType:      "application/octet-stream",
		UserMetadata:     map[string]string{NonceMeta: nonce},
		DisableMultipart: true,
	}
	if cond.IfAbsent {
		opts.SetMatchETagExcept("*")
	}
	if cond.IfMatch != "" {
		opts.SetMatchETag(strings.Trim(cond.IfMatch, `"`))
	}
	info, oe := s.put(ctx, key, body, size, opts)
	if oe == nil {
		return info, nil
	}
	if !mayHaveCommitted(ctx, oe) {
		return store.Info{}, oe
	}
	mine, info, err := s.isMine(ctx, key, nonce)
	if mine {
		return info, nil
	}
	if oe.Kind == store.KindPrecondition && err != nil && store.KindOf(err) != store.KindNotFound {
		// The condition failed, but the read-back did not answer: whether
		// an earlier attempt of ours committed is unknown.
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindTransient, Code: "unresolved",
			Err: fmt.Errorf("condition failed and the read-back failed: %w", errors.Join(oe.Err, err))}
	}
	return store.Info{}, oe
}

// oneShotMax is the largest body sent as one PUT signed with its SHA-256,
// computed here first. minio-go would otherwise sign a plain-HTTP PUT in
// chunks as it streams (aws-chunked): for the small bodies of queue
// entries that costs more CPU than the hash and the copy into memory.
// Larger bodies stream.
const oneShotMax = 1 << 20

// put sends one PUT with a watchdog that restarts as the body moves.
func (s *Store) put(ctx context.Context, key string, body io.Reader, size int64, opts minio.PutObjectOptions) (store.Info, *store.OpError) {
	w := newWatchdog(ctx, s.timeout)
	defer w.stop()
	var ui minio.UploadInfo
	var err error
	if size >= 0 && size <= oneShotMax {
		buf := make([]byte, size)
		if _, rerr := io.ReadFull(body, buf); rerr != nil {
			return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindTransient, Code: "read_body", Err: rerr}
		}
		// The signed SHA-256 is the integrity check (the server verifies
		// the body against it); a Content-MD5 as well would only cost a
		// second pass over the body.
		sha := sha256.Sum256(buf)
		rd, _ := watchBody(bytes.NewReader(buf), size, w)
		opts.DisableContentSha256 = true // the SHA-256 given is signed instead
		ui, err = s.core.PutObject(w.ctx, s.bucket, key, rd, size,
			"", hex.EncodeToString(sha[:]), opts)
	} else {
		rd, werr := watchBody(body, size, w)
		if werr != nil {
			return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindPermanent, Code: "body_seek", Err: werr}
		}
		ui, err = s.client.PutObject(w.ctx, s.bucket, key, rd, size, opts)
	}
	if err != nil {
		oe := classify("put", key, err, w)
		var er minio.ErrorResponse
		if errors.As(err, &er) && (er.Code == "NoSuchKey" || er.StatusCode == http.StatusNotFound && er.Code == "") {
			// If-Match on a missing key: the condition failed.
			oe.Kind = store.KindPrecondition
		}
		return store.Info{}, oe
	}
	return store.Info{Key: key, ETag: strings.Trim(ui.ETag, `"`), Size: ui.Size}, nil
}

// putUnconditional writes without a condition; large bodies stream as a
// multipart upload.
func (s *Store) putUnconditional(ctx context.Context, key string, body io.Reader, size int64) (store.Info, error) {
	opts := minio.PutObjectOptions{
		ContentType: "application/octet-stream",
		PartSize:    singlePartMax,
		NumThreads:  2,
	}
	info, oe := s.put(ctx, key, body, size, opts)
	if oe != nil {
		return store.Info{}, oe
	}
	return info, nil
}

// mayHaveCommitted reports whether a failed conditional write could have
// taken effect: a 412 (an earlier attempt of ours may have made the
// condition false), or a transient failure after the request went out.
// A timeout is not read back: the server is not answering, and the caller
// must not wait twice.
func mayHaveCommitted(ctx context.Context, oe *store.OpError) bool {
	if ctx.Err() != nil {
		return false
	}
	switch oe.Kind {
	case store.KindPrecondition:
		// 404 on If-Match: the key is gone; 409: another writer won.
		return oe.Code == "PreconditionFailed"
	case store.KindTransient:
		switch oe.Code {
		case "timeout", "canceled", "connection_refused", "dns":
			return false
		}
		return true
	}
	return false
}

// isMine reads the object back and reports whether it carries nonce, with
// its info when it does.
func (s *Store) isMine(ctx context.Context, key, nonce string) (bool, store.Info, error) {
	oi, err := s.stat(ctx, key)
	if err != nil {
		return false, store.Info{}, err
	}
	for k, v := range oi.UserMetadata {
		if strings.EqualFold(k, NonceMeta) || strings.EqualFold(k, "X-Amz-Meta-"+NonceMeta) {
			if v == nonce {
				return true, infoOf(key, oi), nil
			}
			return false, store.Info{}, nil
		}
	}
	return false, store.Info{}, nil
}
