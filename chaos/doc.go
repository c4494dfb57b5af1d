// Package chaos holds the multi-process chaos test of the cluster
// protocol (issue 3). It has no API: everything is in its tests.
//
// TestChaos builds the real mmsidecar binary, starts a MinIO of its own
// (scenario 4 stops it) and plays each fault against a fresh cluster and
// bucket: three nodes, each a temp dir of Mailman-shaped queues (in ->
// pipeline -> out), one `mmsidecar run` process and one Mailman-shaped
// worker process (a re-executed test binary) that appends
// "<queue>/<message id> <node> <unix ns> <file base>" to the node's ledger
// for every entry it dequeues. 2,000 messages are injected; the ledgers
// then show what was lost and what ran twice. Scenarios:
//
//	1-kill-node                  SIGKILL sidecar and worker; restart later
//	2-stop-sidecar-briefly       SIGSTOP the sidecar < TTL - margin
//	3-kill-sidecar-restart       SIGKILL the sidecar, restart at once
//	3b-terminate-sidecar-restart SIGTERM the sidecar (upgrade), restart
//	4-store-outage               MinIO stopped for 30 s
//	5-drain                      `mmsidecar drain` under load
//	6a/6b-stop-...-past-ttl      SIGSTOP sidecar / whole node past TTL + grace (measured)
//	7-partition-node             one sidecar cut off from MinIO (measured, G2 checked)
//	takeover-1000/-10000         restore time of a dead node's backlog
//
// TestChaosMinIOCluster plays two scenarios against a distributed MinIO
// (storetest.StartCluster: four servers in one pool, TLS with a test CA):
//
//	c1-kill-node-and-minio-server  1-kill-node, plus one MinIO server SIGKILLed
//	                               during the injection and started after the
//	                               takeover; `mmsidecar check` while it is down
//	c2-minio-quorum-lost           4-store-outage where two of four servers are
//	                               stopped (no write quorum, reads still served)
//
// Its load is half the other scenarios' (25 entries/s per node, 80 ms a
// hop, unless MMSIDECAR_CHAOS_RATE or _WORK are set): four TLS MinIO
// processes on two cores carry less than one server. It runs in a
// shortened form (300 messages a scenario, a 15 s quorum loss; 1.5 to 4
// minutes, what scripts/test.sh and CI run) unless MMSIDECAR_CHAOS_CLUSTER
// is off, and in full (2,000 messages, 30 s; about five minutes) with
// MMSIDECAR_CHAOS_CLUSTER=full. The quorum-loss scenario runs with an 8 s
// lease TTL: MinIO refuses some writes for 10-20 s after its quorum
// returns (docs/minio-cluster.md).
//
// TestChaosSeaweedFS plays two scenarios against a distributed SeaweedFS
// (storetest.StartSeaweedCluster: one master, three volume servers with
// replication 001, two filers, two S3 gateways behind a balancer), in the
// short form and at the load of the MinIO cluster scenarios:
//
//	sw1-kill-node    `mmsidecar check` through both gateways, then
//	                 1-kill-node
//	sw2-filers-down  4-store-outage where both filers are stopped (the
//	                 gateways keep answering, with errors) and started
//
// Environment:
//
//	MMSIDECAR_CHAOS=1       run TestChaos (scripts/test.sh sets it); otherwise it skips
//	MMSIDECAR_CHAOS_CLUSTER=off   skip TestChaosMinIOCluster (loudly)
//	MMSIDECAR_CHAOS_CLUSTER=full  its full form instead of the shortened one
//	MMSIDECAR_CHAOS_SEAWEEDFS=off   skip TestChaosSeaweedFS (loudly)
//	MMSIDECAR_CHAOS_SEAWEEDFS=full  its 2,000-message form
//	MMSIDECAR_CHAOS_LONG=1  add the 10,000-entry takeover
//	MMSIDECAR_CHAOS_RATE    injection rate per node, entries/s (default 50)
//	MMSIDECAR_CHAOS_WORK    time an entry spends in flight per hop (default 30ms)
//	MMSIDECAR_CHAOS_RACE=1  build the sidecar with -race
//	MMSIDECAR_CHAOS_KEEP    directory that receives every node's logs and ledger
//	MMSIDECAR_CHAOS_REPORT  report file (default ~/.cache/mmsidecar/chaos-report.txt)
package chaos
