//go:build e2e

package e2e

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// QueueCount is what one queue directory holds.
// Only names of Mailman's own shape (<time>+<40 hex>.ext) count as
// entries; strays such as notes.pck count as Other.
type QueueCount struct {
	Pck   int // entries waiting (.pck)
	Bak   int // entries in flight (.bak)
	Psv   int // preserved entries (.psv, in bad)
	Other int // anything else (temp files, strays, symlinks)
}

// entryRE matches Mailman's queue file names: repr(time.time()), "+", the
// SHA-1 hex digest, an extension.
var entryRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?\+[0-9a-f]{40}\.(pck|bak|psv)$`)

// Total is every file of the queue.
func (q QueueCount) Total() int { return q.Pck + q.Bak + q.Psv + q.Other }

// QueueCounts counts the entries of every queue directory of the node.
func (m *Mailman) QueueCounts() (map[string]QueueCount, error) {
	out := make(map[string]QueueCount, len(Queues))
	for _, q := range Queues {
		ents, err := os.ReadDir(m.Queue(q))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read queue %s: %w", q, err)
		}
		var c QueueCount
		for _, e := range ents {
			if !e.Type().IsRegular() || !entryRE.MatchString(e.Name()) {
				c.Other++
				continue
			}
			switch filepath.Ext(e.Name()) {
			case ".pck":
				c.Pck++
			case ".bak":
				c.Bak++
			case ".psv":
				c.Psv++
			default:
				c.Other++
			}
		}
		out[q] = c
	}
	return out, nil
}

// QueueEntries lists the file names in one queue directory, sorted.
func (m *Mailman) QueueEntries(queue string) ([]string, error) {
	ents, err := os.ReadDir(m.Queue(queue))
	if err != nil {
		return nil, fmt.Errorf("read queue %s: %w", queue, err)
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}

// SumQueues adds up the counts of the named queues (all when none named).
func SumQueues(counts map[string]QueueCount, names ...string) QueueCount {
	if len(names) == 0 {
		for n := range counts {
			names = append(names, n)
		}
	}
	var s QueueCount
	for _, n := range names {
		c := counts[n]
		s.Pck += c.Pck
		s.Bak += c.Bak
		s.Psv += c.Psv
		s.Other += c.Other
	}
	return s
}

// FormatQueueCounts renders non-empty queues as "in=3p/1b out=2p".
func FormatQueueCounts(counts map[string]QueueCount) string {
	var parts []string
	for _, q := range Queues {
		c := counts[q]
		if c.Total() == 0 {
			continue
		}
		s := fmt.Sprintf("%s=%dp", q, c.Pck)
		if c.Bak > 0 {
			s += fmt.Sprintf("/%db", c.Bak)
		}
		if c.Psv > 0 {
			s += fmt.Sprintf("/%dpsv", c.Psv)
		}
		if c.Other > 0 {
			s += fmt.Sprintf("/%do", c.Other)
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "empty"
	}
	return strings.Join(parts, " ")
}

// BadNeighbours are the paths DropBadNeighbours created.
type BadNeighbours struct {
	Stray      string // a regular file named notes.pck, owned by the Mailman user
	Symlink    string // a symlink ending in .pck that points outside the queue
	Unreadable string // a root-owned 0600 file ending in .pck
}

// DropBadNeighbours creates, in dir, the three files an untidy admin or
// another tool may leave in a queue directory: a stray notes.pck, a
// symlink (link.pck -> target, a file outside the queues), and an
// unreadable file (private.pck, root 0600).
//
// Mailman 3.3.8 (checked): in a directory a runner scans, a .pck whose
// name is not <float>+<hex> kills that runner at its next scan
// (ValueError in Switchboard.get_files, traceback on the master's
// stderr) and the master does not restart it. So for Mailman to keep
// working these belong in queue_dir itself or in a queue no runner scans
// (bad, shunt). Names not ending in .pck are ignored by Mailman anywhere.
func DropBadNeighbours(dir, target string, mm Account) (BadNeighbours, error) {
	b := BadNeighbours{
		Stray:      filepath.Join(dir, "notes.pck"),
		Symlink:    filepath.Join(dir, "link.pck"),
		Unreadable: filepath.Join(dir, "private.pck"),
	}
	if err := os.WriteFile(b.Stray, []byte("remember to rotate the logs\n"), 0o660); err != nil {
		return b, fmt.Errorf("write stray: %w", err)
	}
	if err := os.Chown(b.Stray, mm.UID, mm.GID); err != nil {
		return b, fmt.Errorf("chown stray: %w", err)
	}
	if err := os.Symlink(target, b.Symlink); err != nil {
		return b, fmt.Errorf("make symlink: %w", err)
	}
	if err := os.WriteFile(b.Unreadable, []byte("not for the list user\n"), 0o600); err != nil {
		return b, fmt.Errorf("write unreadable: %w", err)
	}
	return b, nil
}

// DropDisguisedEntries creates, in dir, two files with valid entry names
// (<time>+<40 hex>.pck) that are not entries: a symlink to target and a
// root-owned 0600 file. It returns their names.
//
// Mailman 3.3.8 (checked) survives both in a scanned queue: the runner
// logs the error and moves each into bad as <name>.psv (the symlink stays
// a symlink). A sidecar must neither follow the symlink (mirroring target)
// nor stall on the unreadable file.
func DropDisguisedEntries(dir, target string) (symlink, unreadable string, err error) {
	now := time.Now()
	name := func(tag string) string {
		sum := sha1.Sum([]byte(tag + now.String()))
		return fmt.Sprintf("%d.%06d+%s.pck", now.Unix(), now.Nanosecond()/1000, hex.EncodeToString(sum[:]))
	}
	symlink, unreadable = name("symlink"), name("unreadable")
	if err := os.Symlink(target, filepath.Join(dir, symlink)); err != nil {
		return "", "", fmt.Errorf("make disguised symlink: %w", err)
	}
	tmp := filepath.Join(dir, "disguised.tmp")
	if err := os.WriteFile(tmp, []byte("not a pickle\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("write disguised file: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, unreadable)); err != nil {
		return "", "", fmt.Errorf("rename disguised file: %w", err)
	}
	return symlink, unreadable, nil
}
