package s3store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"

	"github.com/minio/minio-go/v7"

	"github.com/mmsidecar/mmsidecar/store"
)

// Environment variable names quoted in configuration error messages, so an
// operator knows which setting to fix.
const (
	envTLS    = "MMSIDECAR_S3_TLS"
	envCAFile = "MMSIDECAR_S3_CA_FILE"
)

// transientCodes are S3 and MinIO error codes worth retrying, for responses
// that carry a code but no HTTP status (multi-object delete entries).
var transientCodes = map[string]bool{
	"InternalError":                      true,
	"ServiceUnavailable":                 true,
	"SlowDown":                           true,
	"SlowDownRead":                       true,
	"SlowDownWrite":                      true,
	"RequestTimeout":                     true,
	"Throttling":                         true,
	"ThrottlingException":                true,
	"RequestLimitExceeded":               true,
	"RequestThrottled":                   true,
	"TooManyRequests":                    true,
	"ServerBusy":                         true,
	"XMinioServerNotInitialized":         true,
	"XMinioIAMNotInitialized":            true,
	"XMinioBucketMetadataNotInitialized": true,
	"XMinioBackendDown":                  true,
	"OperationAborted":                   true,
}

// classify turns any error from minio-go or the network into a
// *store.OpError. w, when not nil, is the watchdog of the call, so a
// timeout it caused is told apart from the caller's cancellation.
func classify(op, key string, err error, w *watchdog) *store.OpError {
	var oe *store.OpError
	if errors.As(err, &oe) {
		return oe
	}
	kind, code, cause := classifyCause(err, w)
	return &store.OpError{Op: op, Key: key, Kind: kind, Code: code, Err: cause}
}

// classifyCause returns the kind, the metric code and the error to report
// (the original, or a wrapper that says which setting to fix).
func classifyCause(err error, w *watchdog) (store.Kind, string, error) {
	if w != nil && w.timedOut() {
		return store.KindTransient, "timeout", fmt.Errorf("no answer within %s: %w", w.limit, err)
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) {
		return classifyResponse(er, err)
	}
	if k, code, cause, ok := classifyTLS(err); ok {
		return k, code, cause
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return store.KindTransient, "timeout", err
	case errors.Is(err, context.Canceled):
		return store.KindTransient, "canceled", err
	case errors.Is(err, syscall.ECONNREFUSED):
		return store.KindTransient, "connection_refused", err
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return store.KindTransient, "connection_reset", err
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return store.KindTransient, "connection_closed", err
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if dnsErr.IsNotFound {
			return store.KindPermanent, "dns_not_found", err
		}
		return store.KindTransient, "dns", err
	}
	var ne net.Error
	if errors.As(err, &ne) {
		if ne.Timeout() {
			return store.KindTransient, "timeout", err
		}
		return store.KindTransient, "network", err
	}
	return store.KindPermanent, "client", err
}

// classifyResponse classifies an S3 error answer.
func classifyResponse(er minio.ErrorResponse, err error) (store.Kind, string, error) {
	code := er.Code
	if code == "" || strings.ContainsRune(code, ' ') {
		// A body-less answer: minio-go puts the HTTP status line here.
		code = "http_" + strconv.Itoa(er.StatusCode)
	}
	switch {
	case er.Code == "NoSuchKey" || (er.StatusCode == http.StatusNotFound && er.Code == ""):
		return store.KindNotFound, "NoSuchKey", err
	case er.Code == "PreconditionFailed" || er.StatusCode == http.StatusPreconditionFailed:
		return store.KindPrecondition, "PreconditionFailed", err
	case er.Code == "ConditionalRequestConflict":
		return store.KindPrecondition, code, err
	case er.StatusCode == http.StatusBadRequest && strings.Contains(er.Message+" "+er.Code, "HTTP request to an HTTPS server"):
		// MinIO's answer to plain HTTP on its TLS port.
		return store.KindPermanent, "tls_required", fmt.Errorf(
			"the server speaks TLS on this port: set %s=true (and %s if its CA is not a system one): %w", envTLS, envCAFile, err)
	case transientCodes[er.Code],
		er.StatusCode >= 500,
		er.StatusCode == http.StatusTooManyRequests,
		er.StatusCode == http.StatusRequestTimeout:
		return store.KindTransient, code, err
	}
	return store.KindPermanent, code, err
}

// classifyTLS recognises a TLS client talking to a plain-HTTP server and a
// certificate the client does not trust. Both are configuration errors:
// retrying will not help, so they are permanent and say what to fix.
func classifyTLS(err error) (store.Kind, string, error, bool) {
	var rh tls.RecordHeaderError
	if errors.Is(err, http.ErrSchemeMismatch) || errors.As(err, &rh) ||
		strings.Contains(err.Error(), "first record does not look like a TLS handshake") {
		return store.KindPermanent, "tls_plain_http", fmt.Errorf(
			"the server does not speak TLS: it looks like plain HTTP; unset %s or point the endpoint at the TLS port: %w",
			envTLS, err), true
	}
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	var hn x509.HostnameError
	var cv *tls.CertificateVerificationError
	if errors.As(err, &ua) || errors.As(err, &ci) || errors.As(err, &hn) || errors.As(err, &cv) {
		return store.KindPermanent, "tls_verify", fmt.Errorf(
			"the server's TLS certificate is not trusted; set %s to the CA bundle that signed it (and check the endpoint's host name): %w",
			envCAFile, err), true
	}
	if strings.Contains(err.Error(), "remote error: tls: ") {
		return store.KindPermanent, "tls", fmt.Errorf(
			"the server refused the TLS handshake; check %s and %s: %w", envTLS, envCAFile, err), true
	}
	return 0, "", nil, false
}
