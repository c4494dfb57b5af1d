// Package deploytest checks the deployment files under deploy/ without a
// container engine, a cluster or the network: the Kubernetes manifests are
// decoded strictly into k8s.io/api types, the Compose files are loaded
// and validated by compose-go, the systemd unit is verified by
// systemd-analyze (or parsed here when it is missing), the Dockerfile's
// own `go build` command line is run and its output checked to be a static
// binary, and the environment variables, users, paths, ports, metric names
// and hook scripts are cross-checked against the code and each other.
//
// The package has only tests; run them with
//
//	go test ./deploy/deploytest
package deploytest
