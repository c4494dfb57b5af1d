package runner

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// epochFileName is the file in the state directory that holds the
// highest epoch the node has tried.
const epochFileName = "epoch"

// EpochFile keeps a node's highest tried epoch in its state directory
// (fence.EpochRecord), as "<node> <epoch>\n". A record written for
// another node id counts as none: the directory then belongs to a new
// node.
type EpochFile struct {
	fsys      FS
	dir, node string
}

// NewEpochFile returns the epoch record of node in stateDir on fsys.
func NewEpochFile(fsys FS, stateDir, node string) *EpochFile {
	return &EpochFile{fsys: fsys, dir: stateDir, node: node}
}

// Path is the record's file.
func (f *EpochFile) Path() string { return filepath.Join(f.dir, epochFileName) }

// Last returns the recorded epoch, 0 when there is no record for this
// node. A record it cannot read is an error: starting over at a lower
// epoch is what the record is there to prevent.
func (f *EpochFile) Last() (uint64, error) {
	file, err := f.fsys.Open(f.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read epoch record: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(file, 4096))
	file.Close()
	if err != nil {
		return 0, fmt.Errorf("read epoch record: %w", err)
	}
	node, epoch, ok := parseEpochRecord(string(data))
	if !ok {
		return 0, fmt.Errorf("epoch record %s: unreadable content %q (delete it only if the node's lease is in the store)", f.Path(), strings.TrimSpace(string(data)))
	}
	if node != f.node {
		return 0, nil
	}
	return epoch, nil
}

// Save records epoch: temp file, fsync, rename, fsync of the directory.
func (f *EpochFile) Save(epoch uint64) error {
	if err := f.fsys.MkdirAll(f.dir, 0o750); err != nil {
		return fmt.Errorf("save epoch record: %w", err)
	}
	tmp := epochFileName + ".tmp"
	_ = f.fsys.Remove(filepath.Join(f.dir, tmp)) // left by a crash
	data := []byte(f.node + " " + strconv.FormatUint(epoch, 10) + "\n")
	if err := f.fsys.WriteTemp(f.dir, tmp, data, -1, -1, 0o640); err != nil {
		return fmt.Errorf("save epoch record: %w", err)
	}
	if err := f.fsys.Rename(filepath.Join(f.dir, tmp), f.Path()); err != nil {
		return fmt.Errorf("save epoch record: %w", err)
	}
	if err := f.fsys.SyncDir(f.dir); err != nil {
		return fmt.Errorf("save epoch record: %w", err)
	}
	return nil
}

// parseEpochRecord parses "<node> <epoch>".
func parseEpochRecord(s string) (string, uint64, bool) {
	fields := strings.Fields(s)
	if len(fields) != 2 {
		return "", 0, false
	}
	epoch, err := strconv.ParseUint(fields[1], 10, 64)
	if err != nil || epoch == 0 {
		return "", 0, false
	}
	return fields[0], epoch, true
}

// EpochRecordNode returns the node the epoch record in stateDir was
// written for, so that a sidecar can refuse a disk that belongs to
// another node id; ok is false without a readable record.
func EpochRecordNode(stateDir string) (node string, ok bool) {
	data, err := os.ReadFile(filepath.Join(stateDir, epochFileName))
	if err != nil {
		return "", false
	}
	node, _, ok = parseEpochRecord(string(data))
	return node, ok
}
