// Package deploytest checks the deployment files under deploy/. Without a
// container engine, a cluster or the network: the Kubernetes manifests are
// decoded strictly into k8s.io/api types, the Compose files are loaded
// and validated by compose-go, the systemd unit is verified by
// systemd-analyze (or parsed here when it is missing), the Dockerfile's
// build stage is run on the host and its binary checked to be static and
// to carry the version and commit it was given, and the environment
// variables, users, paths, ports, metric names and hook scripts are
// cross-checked against the code and each other, and so are the mounts of
// the Mailman plugin (deploy/mailman) and the ConfigMap's copies of it.
//
// TestContainerImage then builds the Dockerfile's final stage with podman
// from that build stage's output (nothing is pulled) and runs the image
// against a real MinIO: as the image's user with a read-only root
// filesystem, its health check, SIGTERM, a drain through `podman exec`,
// and a killed container's backlog restored by its peer. It needs root,
// podman and runc; it is skipped, loudly, without them, unless the test
// MinIO is required (scripts/test.sh installs them and requires it).
//
// The package has only tests; run them with
//
//	go test ./deploy/deploytest
package deploytest
