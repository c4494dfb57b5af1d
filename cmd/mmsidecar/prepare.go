package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mmsidecar/mmsidecar/runner"
)

// prepareDirs is run's pre-flight on the local disk, before anything is
// created or the store is reached. It refuses (a *ConfigError, exit 2:
// restarting would not help) a state directory that belongs to another
// node id, and a state or embedded-store directory that the user the
// sidecar runs as cannot write, naming the directory and the command that
// fixes it; then it creates the state directory. Only run calls it: the
// other commands create nothing (issue 22: a `status` run as root created
// the state directory, and the daemon then failed to start as list).
func prepareDirs(cfg *Config) error {
	var errs []error
	if err := checkDiskOwner(cfg.StateDir, cfg.NodeID); err != nil {
		errs = append(errs, err)
	}
	if err := checkWritable("MMSIDECAR_STATE_DIR", cfg.StateDir, true); err != nil {
		errs = append(errs, err)
	}
	if cfg.S3Endpoint == "" {
		if err := checkWritable("MMSIDECAR_STORE_DIR", cfg.StoreDir, false); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errJoin(errs)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return newConfigError("MMSIDECAR_STATE_DIR", cfg.StateDir, "cannot create it: %v", err)
	}
	return nil
}

// checkDiskOwner refuses a state directory whose node-id marker or epoch
// record names another node: the queue files on this disk are that node's
// in the store, and starting under a new id would leave them to be taken
// over by chance while they are still here (issue 22).
func checkDiskOwner(stateDir, node string) error {
	owner := ""
	if data, err := os.ReadFile(filepath.Join(stateDir, markerName)); err == nil {
		owner = strings.TrimSpace(string(data))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return newConfigError("MMSIDECAR_STATE_DIR", stateDir, "read the disk's node id: %v", err)
	}
	if owner == "" {
		if n, ok := runner.EpochRecordNode(stateDir); ok {
			owner = n
		}
	}
	if owner == "" || owner == node {
		return nil
	}
	return newConfigError("MMSIDECAR_NODE_ID", node,
		"this disk belongs to node %q (%s says so): its queue entries are that node's in the store, and a sidecar under another id would leave them to be taken over while they are still here. "+
			"To keep the disk, set MMSIDECAR_NODE_ID=%s. To hand it to %s on purpose: start the sidecar as %s, run `mmsidecar drain` (its backlog goes to the live peers), stop it, "+
			"then remove %s and %s and start as %s (docs/operations.md, \"Renaming a node\")",
		owner, filepath.Join(stateDir, markerName), owner, node, owner,
		filepath.Join(stateDir, markerName), filepath.Join(stateDir, "epoch"), node)
}

// checkWritable checks that the user this process runs as can write dir
// and, with deep, every directory under it (the state directory's hold
// area is renamed into and out of); a missing dir must be creatable in
// its nearest existing parent. The error names the directory at fault,
// its owner, and the chown that fixes it.
func checkWritable(varName, dir string, deep bool) error {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		parent := dir
		for {
			parent = filepath.Dir(parent)
			if _, err := os.Stat(parent); err == nil || parent == filepath.Dir(parent) {
				break
			}
		}
		if unix.Access(parent, unix.W_OK|unix.X_OK) != nil {
			return newConfigError(varName, dir, "does not exist, and %s, which runs the sidecar, cannot create it in %s (%s). Create it: install -d -m 0750 -o %s -g %s %s",
				runningAs(), parent, ownerOf(parent), userName(), groupName(), dir)
		}
		return nil
	}
	var bad string
	walk := func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir && !d.IsDir() {
			return nil
		}
		if unix.Access(p, unix.W_OK|unix.X_OK) != nil {
			bad = p
			return fs.SkipAll
		}
		if !deep {
			return fs.SkipDir
		}
		return nil
	}
	if err := filepath.WalkDir(dir, walk); err != nil && bad == "" {
		return newConfigError(varName, dir, "cannot read it: %v. Run: chown -R %s:%s %s", err, userName(), groupName(), dir)
	}
	if bad == "" {
		return nil
	}
	return newConfigError(varName, dir, "%s is %s, so %s, which runs the sidecar, cannot write it (a command run as another user, such as root, probably created it). Run: chown -R %s:%s %s",
		bad, ownerOf(bad), runningAs(), userName(), groupName(), dir)
}

// ownerOf describes path's owner, group and mode.
func ownerOf(path string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "unreadable"
	}
	u, g := strconv.Itoa(int(st.Uid)), strconv.Itoa(int(st.Gid))
	if pu, err := user.LookupId(u); err == nil {
		u = pu.Username
	}
	if pg, err := user.LookupGroupId(g); err == nil {
		g = pg.Name
	}
	return fmt.Sprintf("owned by %s:%s with mode %04o", u, g, st.Mode&0o7777)
}

// runningAs describes the user this process runs as.
func runningAs() string {
	return fmt.Sprintf("user %s (uid %d)", userName(), os.Geteuid())
}

func userName() string {
	id := strconv.Itoa(os.Geteuid())
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return id
}

func groupName() string {
	id := strconv.Itoa(os.Getegid())
	if g, err := user.LookupGroupId(id); err == nil {
		return g.Name
	}
	return id
}
