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
// Environment:
//
//	MMSIDECAR_CHAOS=1       run it (scripts/test.sh sets it); otherwise the test skips
//	MMSIDECAR_CHAOS_LONG=1  add the 10,000-entry takeover
//	MMSIDECAR_CHAOS_RATE    injection rate per node, entries/s (default 50)
//	MMSIDECAR_CHAOS_WORK    time an entry spends in flight per hop (default 30ms)
//	MMSIDECAR_CHAOS_RACE=1  build the sidecar with -race
//	MMSIDECAR_CHAOS_KEEP    directory that receives every node's logs and ledger
//	MMSIDECAR_CHAOS_REPORT  report file (default ~/.cache/mmsidecar/chaos-report.txt)
package chaos
