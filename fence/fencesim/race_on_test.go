//go:build race

package fencesim

// defaultSeeds is TestSim's budget under the race detector, which slows
// the simulator about tenfold; scripts/test.sh runs the full budget
// without it as well.
const defaultSeeds = 500
