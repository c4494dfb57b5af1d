//go:build !race

package fencesim

// defaultSeeds is TestSim's budget: at least 5,000 seeds per CI run.
const defaultSeeds = 5000
