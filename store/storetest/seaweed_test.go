package storetest

import (
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
)

// seaweedRounds is the racing tests' rounds on the SeaweedFS cluster
// unless MMSIDECAR_STORETEST_ROUNDS says otherwise: a contended round of
// 16 writers through two gateways takes up to 13 s there (docs/stores.md), so
// the whole contract at 25 rounds would take over ten minutes.
const seaweedRounds = 3

// TestSeaweedFSCluster runs the store contract on a distributed
// SeaweedFS (one master, three volume servers with replication 001, two
// filers, two S3 gateways), every call through one of the two gateways in
// turn (Spread): racing conditional creates and CAS writers go through
// both gateways at once and must have one winner per round, and every
// write is read back through the other gateway. It then kills one volume
// server and runs the conditional cases again.
func TestSeaweedFSCluster(t *testing.T) {
	began := time.Now()
	sw := StartSeaweedCluster(t, SeaweedLayout{})
	t.Logf("SeaweedFS cluster (1 master, 3 volume servers, 2 filers, 2 gateways) took writes %s after the start",
		time.Since(began).Round(time.Millisecond))
	if os.Getenv(EnvRounds) == "" {
		t.Setenv(EnvRounds, strconv.Itoa(seaweedRounds))
	}
	open := func(t *testing.T) store.Store {
		bucket := sw.NewBucket(t)
		return Spread(gatewayStore(t, sw, 0, bucket), gatewayStore(t, sw, 1, bucket))
	}
	t.Run("contract through both gateways", func(t *testing.T) { Run(t, open) })
	t.Run("one volume server killed", func(t *testing.T) {
		sw.Volumes[2].Kill()
		defer sw.Volumes[2].Start()
		RunConditional(t, open)
	})
}

// contendedTimeout is the request timeout of the cluster test's stores:
// 16 conditional writers on one key through two gateways take up to 13 s
// for the last answer, past the sidecar's default 10 s
// (MMSIDECAR_S3_REQUEST_TIMEOUT); the test measures that latency and the
// answers, so it waits for them.
const contendedTimeout = time.Minute

// gatewayStore is an s3store on bucket through gateway i alone.
func gatewayStore(t *testing.T, sw *SeaweedFS, i int, bucket string) store.Store {
	t.Helper()
	cfg := sw.Gateway(i).Config(bucket)
	cfg.RequestTimeout = contendedTimeout
	s, err := s3store.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
