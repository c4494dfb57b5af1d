// Package mailman holds the Mailman 3 plugin that makes Mailman's own
// runners honour the sidecar's runner gate (mailman_mmsidecar, Python, see
// README.md and docs/gate.md), its benchmark (bench_gate.py), and the Go
// test that runs the plugin's Python tests with Debian's python3-pytest,
// so that `go test ./...` and scripts/test.sh run them too.
package mailman
