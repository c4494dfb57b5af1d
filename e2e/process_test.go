//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestProcessAsList checks the plumbing a sidecar is started with: run as
// the Mailman user with umask 007, stop by SIGTERM, kill the whole group.
func TestProcessAsList(t *testing.T) {
	RequireE2E(t)
	acct, err := LookupAccount("list")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, acct.UID, acct.GID); err != nil {
		t.Fatal(err)
	}
	readLog := func(p *Process, lines int) []string {
		t.Helper()
		var got []string
		err := pollUntil(ctx, 20*time.Millisecond, "probe output", func() (bool, error) {
			raw, err := os.ReadFile(p.LogPath())
			if err != nil {
				return false, err
			}
			got = strings.Fields(string(raw))
			return len(got) >= lines, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}

	t.Run("user, umask and SIGTERM", func(t *testing.T) {
		p, err := StartProcess(ProcessSpec{
			Name:    "probe",
			Path:    "/bin/sh",
			Args:    []string{"-c", `umask; id -un; echo hi > made; echo $PROBE; exec sleep 300`},
			Env:     []string{"PROBE=env-ok"},
			Dir:     dir,
			AsUser:  &acct,
			LogPath: filepath.Join(dir, "probe.log"),
		})
		if err != nil {
			t.Fatal(err)
		}
		got := readLog(p, 3)
		if got[0] != "0007" || got[1] != "list" || got[2] != "env-ok" {
			t.Errorf("umask, user, env = %q, want 0007 list env-ok", got)
		}
		st, err := os.Stat(filepath.Join(dir, "made"))
		if err != nil {
			t.Fatal(err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if int(sys.Uid) != acct.UID || int(sys.Gid) != acct.GID || st.Mode().Perm() != 0o660 {
			t.Errorf("made: uid %d gid %d mode %v, want %d %d 0660", sys.Uid, sys.Gid, st.Mode().Perm(), acct.UID, acct.GID)
		}
		if err := p.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		if done, _ := p.Exited(); !done {
			t.Fatal("probe still running after Stop")
		}
	})

	t.Run("kill reaches the process group", func(t *testing.T) {
		p, err := StartProcess(ProcessSpec{
			Name:    "group",
			Path:    "/bin/sh",
			Args:    []string{"-c", `sleep 300 & echo $!; trap '' TERM; wait`},
			Dir:     dir,
			AsUser:  &acct,
			LogPath: filepath.Join(dir, "group.log"),
		})
		if err != nil {
			t.Fatal(err)
		}
		child, err := strconv.Atoi(readLog(p, 1)[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Kill(); err != nil {
			t.Fatal(err)
		}
		err = pollUntil(ctx, 20*time.Millisecond, "grandchild to die", func() (bool, error) {
			st, err := procState(child)
			return err != nil || st == 'Z', nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}
