package dirstore

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestNetworkFS(t *testing.T) {
	tests := []struct {
		name  string
		ftype int64
		want  string
	}{
		{"nfs", unix.NFS_SUPER_MAGIC, "NFS"},
		{"smb", unix.SMB_SUPER_MAGIC, "SMB"},
		{"smb2", unix.SMB2_SUPER_MAGIC, "SMB2"},
		{"cifs", unix.CIFS_SUPER_MAGIC, "CIFS"},
		// statfs reports f_type as a signed word on some architectures:
		// the CIFS magic arrives sign-extended.
		{"cifs sign-extended", int64(int32(-0x00acb2be)), "CIFS"},
		{"ext4", unix.EXT4_SUPER_MAGIC, ""},
		{"xfs", unix.XFS_SUPER_MAGIC, ""},
		{"btrfs", unix.BTRFS_SUPER_MAGIC, ""},
		{"tmpfs", unix.TMPFS_MAGIC, ""},
		{"overlay", unix.OVERLAYFS_SUPER_MAGIC, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := networkFS(tt.ftype); got != tt.want {
				t.Fatalf("networkFS(%#x) = %q, want %q", tt.ftype, got, tt.want)
			}
		})
	}
}

func TestCheckLocalFS(t *testing.T) {
	// The test machine's temp dir is local; this guards against a
	// classification that refuses everything.
	if err := checkLocalFS(t.TempDir()); err != nil {
		t.Fatalf("local temp dir refused: %v", err)
	}
	err := checkLocalFS(t.TempDir() + "/missing")
	if err == nil || errors.Is(err, ErrNetworkFS) {
		t.Fatalf("missing dir: got %v, want a statfs error", err)
	}
}

func TestNetworkFSErrorMessage(t *testing.T) {
	// The refusal must say why, in the operator's terms.
	err := errorForFS("/srv/store", "NFS", unix.NFS_SUPER_MAGIC)
	if !errors.Is(err, ErrNetworkFS) {
		t.Fatalf("error %v does not wrap ErrNetworkFS", err)
	}
	for _, want := range []string{"/srv/store", "NFS", "exactly what mmsidecar exists to avoid", "MMSIDECAR_STORE_DIR"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}
