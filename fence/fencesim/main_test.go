package fencesim

import (
	"fmt"
	"os"
	"testing"
)

// TestMain runs the simulator only when MMSIDECAR_SIM=1. Its regression
// seeds currently reproduce protocol bugs that are not fixed yet, so the
// default test run (and CI) leaves it out, and says so.
func TestMain(m *testing.M) {
	if os.Getenv("MMSIDECAR_SIM") != "1" {
		fmt.Println("fencesim: the deterministic simulator is off; run it with MMSIDECAR_SIM=1 go test ./fence/fencesim (its regression seeds reproduce open protocol bugs)")
		os.Exit(0)
	}
	os.Exit(m.Run())
}
