package chaos

import (
	"os"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// envSeaweedFS=off skips TestChaosSeaweedFS (loudly); full runs its
// 2,000-message form.
const envSeaweedFS = "MMSIDECAR_CHAOS_SEAWEEDFS"

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
	form := shortClusterForm
	switch os.Getenv(envSeaweedFS) {
	case "off":
		t.Skipf("SEAWEEDFS CHAOS SCENARIOS ARE OFF (%s=off): they did not run", envSeaweedFS)
	case "full":
		form = fullClusterForm
	}
	if os.Getenv(storetest.EnvTestMinIO) == "off" {
		t.Skipf("REAL-STORE TESTS ARE OFF (%s=off): the SeaweedFS chaos scenarios did not run", storetest.EnvTestMinIO)
	}
	if err := ensureSidecar(); err != nil {
		t.Fatalf("the sidecar binary could not be built: %v", err)
	}
	touchSources()
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
	s := newClusterScenario(t, sw, "sw1-kill-node", f, leaseTiming{})
	out, took, err := runSidecarCheck(s.ctx, s.c.node("a"))
	if err != nil {
		t.Errorf("mmsidecar check on the SeaweedFS cluster failed after %s: %v\n%s", ms(took), err, out)
	} else {
		report.addf(t, "%s: `mmsidecar check` through both gateways: store is safe, in %s", s.name, ms(took))
	}
	playKillNode(s, f.minBacklog)
}

// testSeaweedFilersDown is 4-store-outage on SeaweedFS where the outage
// is both filers stopped (SIGTERM) and started again: the S3 gateways
// keep answering, with errors. Every node must fence, let the workers
// process what is born meanwhile, take nothing over, and come back.
func testSeaweedFilersDown(t *testing.T, sw *storetest.SeaweedFS, f clusterForm) {
	s := newClusterScenario(t, sw, "sw2-filers-down", f, leaseTiming{})
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
		stop: func() {
			for _, fl := range sw.Filers {
				fl.Stop()
			}
		},
		start: func() {
			for _, fl := range sw.Filers {
				fl.Start()
			}
		},
	})
}
