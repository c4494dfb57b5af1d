package s3store

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/mmsidecar/mmsidecar/store"
)

func TestClassify(t *testing.T) {
	urlErr := func(err error) error { return &url.Error{Op: "Put", URL: "http://127.0.0.1:1/b/k", Err: err} }
	resp := func(code string, status int) error { return minio.ErrorResponse{Code: code, StatusCode: status} }
	for _, tc := range []struct {
		name    string
		err     error
		kind    store.Kind
		code    string
		message string // a substring the error must contain
	}{
		{"no such key", resp("NoSuchKey", 404), store.KindNotFound, "NoSuchKey", ""},
		{"body-less 404", resp("", 404), store.KindNotFound, "NoSuchKey", ""},
		{"412", resp("PreconditionFailed", 412), store.KindPrecondition, "PreconditionFailed", ""},
		{"409 conditional conflict", resp("ConditionalRequestConflict", 409), store.KindPrecondition, "ConditionalRequestConflict", ""},
		{"slow down", resp("SlowDown", 503), store.KindTransient, "SlowDown", ""},
		{"slow down write, no status", resp("SlowDownWrite", 0), store.KindTransient, "SlowDownWrite", ""},
		{"service unavailable", resp("ServiceUnavailable", 503), store.KindTransient, "ServiceUnavailable", ""},
		{"internal error", resp("InternalError", 500), store.KindTransient, "InternalError", ""},
		{"bare 502", resp("502 Bad Gateway", 502), store.KindTransient, "http_502", ""},
		{"429", resp("", 429), store.KindTransient, "http_429", ""},
		{"server not initialized", resp("XMinioServerNotInitialized", 503), store.KindTransient, "XMinioServerNotInitialized", ""},
		{"access denied", resp("AccessDenied", 403), store.KindPermanent, "AccessDenied", ""},
		{"no such bucket", resp("NoSuchBucket", 404), store.KindPermanent, "NoSuchBucket", ""},
		{"bad key id", resp("InvalidAccessKeyId", 403), store.KindPermanent, "InvalidAccessKeyId", ""},
		{"bad signature", resp("SignatureDoesNotMatch", 403), store.KindPermanent, "SignatureDoesNotMatch", ""},
		{"wrapped response", fmt.Errorf("put: %w", resp("SlowDown", 503)), store.KindTransient, "SlowDown", ""},
		{"connection refused", urlErr(&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}),
			store.KindTransient, "connection_refused", ""},
		{"connection reset", urlErr(&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}),
			store.KindTransient, "connection_reset", ""},
		{"eof", urlErr(io.EOF), store.KindTransient, "connection_closed", ""},
		{"deadline", context.DeadlineExceeded, store.KindTransient, "timeout", ""},
		{"canceled", urlErr(context.Canceled), store.KindTransient, "canceled", ""},
		{"net timeout", urlErr(&net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}), store.KindTransient, "timeout", ""},
		{"dns", urlErr(&net.DNSError{Err: "server misbehaving", Name: "minio"}), store.KindTransient, "dns", ""},
		{"unknown host", urlErr(&net.DNSError{Err: "no such host", Name: "minio", IsNotFound: true}), store.KindPermanent, "dns_not_found", ""},
		{"plain http", urlErr(http.ErrSchemeMismatch), store.KindPermanent, "tls_plain_http", envTLS},
		{"http to the tls port", minio.ErrorResponse{Code: "400 Bad Request", StatusCode: 400, Message: "Client sent an HTTP request to an HTTPS server."},
			store.KindPermanent, "tls_required", envTLS},
		{"unknown authority", urlErr(x509.UnknownAuthorityError{}), store.KindPermanent, "tls_verify", envCAFile},
		{"remote tls alert", urlErr(errors.New("remote error: tls: handshake failure")), store.KindPermanent, "tls", envCAFile},
		{"client misuse", errors.New("object size must be provided"), store.KindPermanent, "client", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oe := classify("put", "k", tc.err, nil)
			if oe.Kind != tc.kind || oe.Code != tc.code || oe.Op != "put" || oe.Key != "k" {
				t.Fatalf("classify(%v) = kind %v code %q, want %v %q", tc.err, oe.Kind, oe.Code, tc.kind, tc.code)
			}
			if !strings.Contains(oe.Error(), tc.message) {
				t.Fatalf("error %q does not mention %q", oe, tc.message)
			}
			if !errors.Is(oe, tc.err) {
				t.Fatalf("error %q does not wrap the original", oe)
			}
		})
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassifyWatchdogTimeout(t *testing.T) {
	w := newWatchdog(context.Background(), time.Millisecond)
	<-w.ctx.Done()
	oe := classify("stat", "k", w.ctx.Err(), w)
	if oe.Kind != store.KindTransient || oe.Code != "timeout" {
		t.Fatalf("got %v %q, want transient timeout", oe.Kind, oe.Code)
	}
	// A caller's own cancellation is not a timeout.
	parent, cancel := context.WithCancel(context.Background())
	w = newWatchdog(parent, time.Hour)
	defer w.stop()
	cancel()
	if oe := classify("stat", "k", w.ctx.Err(), w); oe.Code != "canceled" {
		t.Fatalf("caller cancel classified %q, want canceled", oe.Code)
	}
}

func TestMayHaveCommitted(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		kind store.Kind
		code string
		want bool
	}{
		{"412", live, store.KindPrecondition, "PreconditionFailed", true},
		{"404 on if-match", live, store.KindPrecondition, "NoSuchKey", false},
		{"409", live, store.KindPrecondition, "ConditionalRequestConflict", false},
		{"502", live, store.KindTransient, "http_502", true},
		{"reset", live, store.KindTransient, "connection_reset", true},
		{"refused", live, store.KindTransient, "connection_refused", false},
		{"timeout", live, store.KindTransient, "timeout", false},
		{"permanent", live, store.KindPermanent, "AccessDenied", false},
		{"caller gone", done, store.KindPrecondition, "PreconditionFailed", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mayHaveCommitted(tc.ctx, &store.OpError{Kind: tc.kind, Code: tc.code})
			if got != tc.want {
				t.Fatalf("mayHaveCommitted = %v, want %v", got, tc.want)
			}
		})
	}
}
