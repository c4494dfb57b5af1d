//go:build e2e

// Package e2e runs real Mailman 3 core nodes (Debian's mailman3, 3.3.8)
// for end-to-end tests: several nodes with their own queue directories and
// one shared SQLite list database, an SMTP sink that records every
// delivery, and LMTP injection.
//
// Run it as root with the build tag and the switch:
//
//	MMSIDECAR_E2E=1 go test -tags e2e -race -v ./e2e/
//
// Without MMSIDECAR_E2E=1 the tests skip; with it, a missing prerequisite
// fails them. MMSIDECAR_E2E_KEEP=1 keeps the temp directory.
//
// Pieces, bottom up:
//   - SMTPSink: go-smtp server on 127.0.0.1:0; Tally counts deliveries per
//     (Message-ID, recipient).
//   - InjectLMTP / DialLMTP: post to a node's LMTP runner.
//   - Mailman: one node (config, dirs, master process, runners): Start,
//     Stop, Kill, Pause/Resume of runners, PIDs, QueueCounts, CLI.
//   - CLI: the mailman command as user list (create, addmembers, shell).
//   - Process: any other child (a node's mmsidecar), optionally as list.
//   - Cluster / Node: nodes + sink + one configured list; Node.Sidecar.
//   - BuildSidecar / Sidecar: the real mmsidecar binary per node (run,
//     status -json, drain; /readyz, /healthz, /metrics, /status), started
//     through ClusterConfig.BeforeMailman so that each node's Mailman
//     starts only once its sidecar is ready (the documented order).
//   - Auditor: polls every queue directory during a test for files that
//     break SPEC G4 (a name that crashes a runner; an entry that is not a
//     regular list:list 0660 file). Report: the per-scenario table.
//
// TestSidecarCluster (sidecar_test.go) is issue 4's end-to-end proof:
// steady state with bad neighbours, failover by SIGKILL with a backlog,
// restart of the killed node, and drain, on one MinIO
// (storetest.Shared). It writes its table to $MMSIDECAR_E2E_REPORT.
//
// Mailman 3.3.8 facts the harness relies on (checked here):
//   - -C replaces /etc/mailman3/mailman.cfg; the paths section must set
//     bin_dir, or the master execs a runner that does not exist.
//   - sleep_time is per runner section ([runner.master] is only a
//     template); it accepts "0.2s" but not "200ms".
//   - Runner tracebacks go to the master's stderr (master.out), not to
//     mailman.log; "<name> runner started." in mailman.log marks readiness.
//   - A killed master leaves locks/master.lck; restarting needs --force.
//   - Two nodes sharing one database race on rows Mailman creates lazily
//     (the list's ListArchiver rows, a new sender's address): set the list
//     up through one CLI call first (CLI.ConfigureTestList).
package e2e
