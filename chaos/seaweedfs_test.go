package chaos

import (
	"sync"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// envSeaweedFS=off skips TestChaosSeaweedFS (loudly); full runs its
// 2,000-message form.
const envSeaweedFS = "MMSIDECAR_CHAOS_SEAWEEDFS"

// seaweedRequestTimeout is the sidecars' MMSIDECAR_S3_REQUEST_TIMEOUT on
// the distributed SeaweedFS. With the default 10 s they never become
// ready there: the start-up probe races 16 conditional writers on one
// key, SeaweedFS answers the last of them after 10-13 s through two
// gateways, so every probe ends NOT VERIFIED and is retried (measured:
// none of three sidecars ready after 3 minutes). docs/stores.md states
// it as a setting that layout needs; the bench measures what the
// contention costs with the defaults.
const seaweedRequestTimeout = "MMSIDECAR_S3_REQUEST_TIMEOUT=30s"

// newSeaweedScenario is newClusterScenario on SeaweedFS, reporting how
// long the three sidecars, started at once, took to be ready (their
// start-up probes race at the same time).
func newSeaweedScenario(t *testing.T, sw *storetest.SeaweedFS, name string, f clusterForm) *scenario {
	began := time.Now()
	s := newClusterScenario(t, sw, name, f, leaseTiming{}, seaweedRequestTimeout)
	report.addf(t, "%s: three sidecars started at once, all ready %s later (%s)", name, ms(time.Since(began)), seaweedRequestTimeout)
	return s
}

// TestChaosSeaweedFS plays the node kill and a store outage against a
// distributed SeaweedFS (storetest.StartSeaweedCluster: one master,
// three volume servers with replication 001, two filers, two S3 gateways
// behind a balancer), with the verdicts of the MinIO scenarios:
//
//	sw1-kill-node      1-kill-node: nothing lost, nothing run twice but
//	                   the victim's entries in flight
//	sw2-filers-down    4-store-outage where both filers are stopped (the
//	                   gateways stay up and fail every request)
//
// It runs in the short form of the MinIO cluster scenarios (300 messages,
// a 15 s outage, at the cluster load) unless MMSIDECAR_CHAOS_SEAWEEDFS is
// full (2,000 messages, 30 s) or off.
func TestChaosSeaweedFS(t *testing.T) {
	form := requireClusterChaos(t, envSeaweedFS, "SeaweedFS")
	began := time.Now()
	sw := storetest.StartSeaweedCluster(t, storetest.SeaweedLayout{})
	report.addf(t, "SeaweedFS cluster: 1 master, 3 volume servers (replication 001), 2 filers, 2 S3 gateways; writable %s after the start",
		time.Since(began).Round(time.Millisecond))
	playScenarios(t, sw, form, []scenarioCase[*storetest.SeaweedFS]{
		{"sw1-kill-node", testSeaweedKillNode},
		{"sw2-filers-down", testSeaweedFilersDown},
	})
	rate, work := clusterLoad()
	report.addf(t, "chaos package: TestChaosSeaweedFS (%s form: %d messages a scenario at %v/s per node, %v a hop, %v outage) took %s",
		form.name, form.entries, rate, work, form.outage, time.Since(began).Round(time.Second))
}

// testSeaweedKillNode is 1-kill-node on SeaweedFS, after `mmsidecar
// check` on a node's configuration (through the balancer, so its racing
// writers go through both gateways): it must find the store safe.
func testSeaweedKillNode(t *testing.T, sw *storetest.SeaweedFS, f clusterForm) {
	s := newSeaweedScenario(t, sw, "sw1-kill-node", f)
	out, took, err := runSidecarCheck(s.ctx, s.c.node("a"))
	if err != nil {
		t.Errorf("mmsidecar check on the SeaweedFS cluster failed after %s: %v\n%s", ms(took), err, out)
	} else {
		report.addf(t, "%s: `mmsidecar check` through both gateways: store is safe, in %s", s.name, ms(took))
	}
	playKillNode(s, f.minBacklog)
}

// testSeaweedFilersDown is 4-store-outage on SeaweedFS where the outage
// is both filers stopped at once (SIGTERM) and started again: the S3 gateways
// keep answering, with errors. Every node must fence, let the workers
// process what is born meanwhile, take nothing over, and come back.
func testSeaweedFilersDown(t *testing.T, sw *storetest.SeaweedFS, f clusterForm) {
	s := newSeaweedScenario(t, sw, "sw2-filers-down", f)
	s.minQuarantine = f.minQuarantine
	t.Cleanup(func() {
		for _, fl := range sw.Filers {
			if fl.PID() == 0 {
				fl.Start() // the next scenario needs them
			}
		}
	})
	s.injectAll()
	runOutage(t, s, storeOutage{
		what:   "both SeaweedFS filers",
		length: f.outage,
		// Both at once: one after the other, the gateways fail over to
		// the second filer while the first shuts down (3-4 s each), and
		// the nodes' backlog is gone by the time they fence.
		stop: func() {
			var wg sync.WaitGroup
			for _, fl := range sw.Filers {
				wg.Go(fl.Stop)
			}
			wg.Wait()
		},
		start: func() {
			for _, fl := range sw.Filers {
				fl.Start()
			}
		},
	})
}
