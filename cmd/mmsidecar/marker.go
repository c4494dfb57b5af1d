package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// markerName is the file in STATE_DIR that says this disk has been a
// node's: its absence means the queue directories are new (a lost or
// replaced disk), so the node's entries in the store are not "finished"
// but gone from here, and are taken over instead of deleted.
const markerName = "node-id"

// freshDisk reports whether the state directory carries no marker for
// node.
func freshDisk(stateDir, node string) (bool, error) {
	data, err := os.ReadFile(filepath.Join(stateDir, markerName))
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read disk marker: %w", err)
	}
	return strings.TrimSpace(string(data)) != node, nil
}

// markDisk records that this disk belongs to node.
func markDisk(stateDir, node string) error {
	if err := os.MkdirAll(stateDir, 0o750); err != nil {
		return fmt.Errorf("write disk marker: %w", err)
	}
	path := filepath.Join(stateDir, markerName)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(node+"\n"), 0o640); err != nil {
		return fmt.Errorf("write disk marker: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write disk marker: %w", err)
	}
	return nil
}
