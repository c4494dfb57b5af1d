// Package storetest is the contract every store.Store implementation must
// meet, as one test suite (Run, RunConditional), and a harness that runs
// real stores for tests: any S3 endpoint the environment names
// (SharedS3, MMSIDECAR_TEST_S3_*), one MinIO server (StartMinIO, Shared)
// or a distributed MinIO over TLS with a throwaway CA (StartCluster,
// NewCA), and SeaweedFS as one process (StartSeaweedFS) or distributed
// (StartSeaweedCluster) behind the same TCP balancer.
//
// One rule the suite cannot check but every key layout must keep: no key
// may also be the "directory" of another (objects "a" and "a/b"). MinIO
// stores both, but its recursive listing silently leaves out every key
// below "a".
package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

// Racers is how many goroutines race in the conditional-write tests.
const Racers = 16

// EnvRounds overrides the number of rounds of the racing tests (default
// 25), e.g. for a longer soak against a new store.
const EnvRounds = "MMSIDECAR_STORETEST_ROUNDS"

// callTimeout bounds every store call of the suite.
const callTimeout = 2 * time.Minute

// contractCase is one subtest of the contract.
type contractCase struct {
	name string
	fn   func(t *testing.T, s store.Store)
	// conditional marks the cases about conditional writes.
	conditional bool
}

// contract is the whole suite, in order.
var contract = []contractCase{
	{"RoundTrip", testRoundTrip, false},
	{"ETagIsBodyMD5", testETagIsBodyMD5, false},
	{"Modified", testModified, false},
	{"Missing", testMissing, false},
	{"IfAbsentOnExisting", testIfAbsentOnExisting, true},
	{"IfMatchStale", testIfMatchStale, true},
	{"IfMatchMissing", testIfMatchMissing, true},
	{"IfMatchCurrent", testIfMatchCurrent, true},
	{"RacingCreators", testRacingCreators, true},
	{"RacingCAS", testRacingCAS, true},
	{"LargeBodies", testLargeBodies, false},
	{"ListAfterWrite", testListAfterWrite, false},
	{"ListPrefix", testListPrefix, false},
	{"ListOrder", testListOrder, false},
	{"ListStopsOnError", testListStopsOnError, false},
	{"ListManyAndDeleteMany", testListManyAndDeleteMany, false},
	{"Delete", testDelete, false},
	{"ErrorClassification", testErrorClassification, false},
}

// Run runs the contract suite. open returns a fresh, empty store for each
// subtest.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	runCases(t, open, func(contractCase) bool { return true })
}

// RunConditional runs the contract's cases about conditional writes only
// (creates over existing keys, stale and current CAS, racing creators and
// CAS writers): the part of the contract a degraded store is most likely
// to break, at a fraction of the whole suite's cost.
func RunConditional(t *testing.T, open func(t *testing.T) store.Store) {
	runCases(t, open, func(c contractCase) bool { return c.conditional })
}

func runCases(t *testing.T, open func(t *testing.T) store.Store, keep func(contractCase) bool) {
	for _, tc := range contract {
		if !keep(tc) {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			if keys := listKeys(t, s, ""); len(keys) != 0 {
				t.Fatalf("open returned a store holding %q", keys)
			}
			tc.fn(t, s)
		})
	}
}

// rounds is the number of rounds of the racing tests.
func rounds(t *testing.T) int {
	if v := os.Getenv(EnvRounds); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive integer", EnvRounds, v)
		}
		return n
	}
	return 25
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// unique returns a body no other write of the suite uses.
func unique(tag string) []byte {
	return []byte(tag + " " + rand.Text())
}

func mustPut(t *testing.T, s store.Store, key string, body []byte, cond store.Condition) store.Info {
	t.Helper()
	info, err := store.PutBytes(ctxFor(t), s, key, body, cond)
	if err != nil {
		t.Fatalf("put %s %+v: %v", key, cond, err)
	}
	return info
}

func mustGet(t *testing.T, s store.Store, key string) ([]byte, store.Info) {
	t.Helper()
	data, info, err := store.GetBytes(ctxFor(t), s, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return data, info
}

// wantBody checks that key holds exactly body.
func wantBody(t *testing.T, s store.Store, key string, body []byte) store.Info {
	t.Helper()
	got, info := mustGet(t, s, key)
	if !bytes.Equal(got, body) {
		t.Fatalf("get %s: %d bytes %.40q, want %d bytes %.40q", key, len(got), got, len(body), body)
	}
	if info.ETag != store.ETagOf(body) || info.Size != int64(len(body)) {
		t.Fatalf("get %s: info %+v, want etag %s size %d", key, info, store.ETagOf(body), len(body))
	}
	return info
}

// wantKind checks err's sentinel, kind and code, and that it names key.
func wantKind(t *testing.T, err error, kind store.Kind, key string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", kind)
	}
	if got := store.KindOf(err); got != kind {
		t.Fatalf("KindOf(%v) = %v, want %v", err, got, kind)
	}
	sentinel := map[store.Kind]error{store.KindNotFound: store.ErrNotFound,
		store.KindPrecondition: store.ErrPrecondition, store.KindTransient: store.ErrTransient}[kind]
	if sentinel != nil && !errors.Is(err, sentinel) {
		t.Fatalf("errors.Is(%v, %v) = false", err, sentinel)
	}
	if store.CodeOf(err) == "" {
		t.Fatalf("CodeOf(%v) is empty", err)
	}
	var oe *store.OpError
	if !errors.As(err, &oe) {
		t.Fatalf("%v (%T) is not a *store.OpError", err, err)
	}
	if key != "" && oe.Key != key {
		t.Fatalf("error %v names key %q, want %q", err, oe.Key, key)
	}
}
