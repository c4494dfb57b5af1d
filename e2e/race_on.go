//go:build e2e && race

package e2e

// raceBuild is true when the test binary has the race detector; the
// sidecar under test is then built with it too.
const raceBuild = true
