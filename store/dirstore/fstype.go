package dirstore

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrNetworkFS is wrapped by the error Open returns for a directory on a
// shared network filesystem.
var ErrNetworkFS = errors.New("directory store refuses a network filesystem")

// networkFS names the shared network filesystem with the statfs f_type t,
// or returns "" for any other filesystem. Only the low 32 bits count:
// some architectures report f_type sign-extended.
func networkFS(t int64) string {
	switch uint32(t) {
	case unix.NFS_SUPER_MAGIC:
		return "NFS"
	case unix.SMB_SUPER_MAGIC:
		return "SMB"
	case unix.SMB2_SUPER_MAGIC:
		return "SMB2"
	case unix.CIFS_SUPER_MAGIC:
		return "CIFS"
	}
	return ""
}

// checkLocalFS refuses a directory on NFS or CIFS/SMB: file locks and
// atomic renames there are exactly what a shared queue directory got
// wrong, and the reason mmsidecar exists.
func checkLocalFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if name := networkFS(int64(st.Type)); name != "" {
		return errorForFS(dir, name, int64(st.Type))
	}
	return nil
}

// errorForFS is the refusal for dir on the network filesystem name.
func errorForFS(dir, name string, ftype int64) error {
	return fmt.Errorf("%w: %s is on %s (f_type %#x); a shared network filesystem is exactly what mmsidecar exists to avoid, so put MMSIDECAR_STORE_DIR on a local disk or point MMSIDECAR_S3_ENDPOINT at an S3-compatible store",
		ErrNetworkFS, dir, name, uint32(ftype))
}
