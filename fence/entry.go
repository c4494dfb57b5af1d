package fence

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Kind says how an entry is kept: as a queued message (Mailman's .pck, or
// .bak while a runner has it) or as a preserved one (.psv, in bad).
type Kind uint8

// The kinds of entry.
const (
	// KindPck is a queued entry: a .pck file, or a .bak while in flight.
	KindPck Kind = iota + 1
	// KindPsv is a preserved entry (.psv), which no runner processes.
	KindPsv
)

// Ext returns the file extension of the kind at rest, without the dot.
func (k Kind) Ext() string {
	if k == KindPsv {
		return "psv"
	}
	return "pck"
}

// Entry names one Mailman queue entry, independent of which node holds it.
type Entry struct {
	// Queue is the queue directory's name, e.g. "in" or "out".
	Queue string
	// Base is Mailman's file base: "<time>+<40 hex>".
	Base string
	// Kind is pck or psv.
	Kind Kind
}

// FileName is the entry's file name at rest in its queue directory.
func (e Entry) FileName() string { return e.Base + "." + e.Kind.Ext() }

// String formats the entry as "queue/base.ext" for logs.
func (e Entry) String() string { return e.Queue + "/" + e.FileName() }

// Ext is a queue file's extension as Mailman uses them.
type Ext uint8

// The extensions of queue files that the sidecar understands.
const (
	// ExtPck is a queued entry.
	ExtPck Ext = iota + 1
	// ExtBak is an entry a runner is processing.
	ExtBak
	// ExtPsv is a preserved entry.
	ExtPsv
)

// ParseFileName splits a queue file name into its base and extension. It
// accepts only names whose base Mailman itself would produce and parse
// ("<digits>[.<digits>]+<40 lowercase hex>") with extension .pck, .bak or
// .psv; everything else (temp files, stray files, odd encodings) is
// rejected so the sidecar never mirrors or creates a name that could crash
// a runner.
func ParseFileName(name string) (base string, ext Ext, ok bool) {
	dot := strings.LastIndexByte(name, '.')
	if dot < 0 {
		return "", 0, false
	}
	switch name[dot+1:] {
	case "pck":
		ext = ExtPck
	case "bak":
		ext = ExtBak
	case "psv":
		ext = ExtPsv
	default:
		return "", 0, false
	}
	base = name[:dot]
	if !ValidBase(base) {
		return "", 0, false
	}
	return base, ext, true
}

// KindOfExt maps a file extension to the entry kind it belongs to.
func KindOfExt(ext Ext) Kind {
	if ext == ExtPsv {
		return KindPsv
	}
	return KindPck
}

// ValidBase reports whether base has Mailman's "<time>+<sha1 hex>" shape
// with a plain decimal time that Python's float() parses.
func ValidBase(base string) bool {
	plus := strings.IndexByte(base, '+')
	if plus <= 0 || len(base)-plus-1 != 40 {
		return false
	}
	when, digest := base[:plus], base[plus+1:]
	for i := 0; i < len(digest); i++ {
		c := digest[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	if len(when) > 32 {
		return false
	}
	intPart, frac, hasFrac := strings.Cut(when, ".")
	if !allDigits(intPart) || hasFrac && !allDigits(frac) {
		return false
	}
	return true
}

// BaseTime returns the enqueue time encoded in a valid base, in seconds.
func BaseTime(base string) float64 {
	when, _, _ := strings.Cut(base, "+")
	f, _ := strconv.ParseFloat(when, 64)
	return f
}

// Born returns when the entry was enqueued: the time in its base, which
// is Mailman's wall clock when it wrote the entry.
func (e Entry) Born() time.Time {
	t := BaseTime(e.Base)
	sec := int64(t)
	return time.Unix(sec, int64((t-float64(sec))*1e9))
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ValidName reports whether s is safe as a node id or queue name: 1 to 64
// characters from [A-Za-z0-9._-], starting with a letter or digit. Such a
// name is one path element and one key segment, never "." or "..".
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// Layout maps nodes, entries and claims to object keys under a prefix:
//
//	<prefix>/nodes/<node>.json                      lease
//	<prefix>/q/<node>/<epoch>/<queue>/<base>.<ext>   mirror, in its owner's namespace
//	<prefix>/claims/<queue>/<base>.<ext>.json        claim, written on a change of owner
//
// The epoch in a mirror key is the owner's epoch when it wrote the copy: a
// peer that declares a node dead at epoch E takes over only namespaces of
// epochs up to E, so entries the node writes after coming back are out of
// any stale peer's reach.
type Layout struct {
	prefix string
}

// NewLayout returns the layout under prefix; leading and trailing slashes
// are ignored and an empty prefix puts everything at the bucket's root.
func NewLayout(prefix string) Layout {
	p := strings.Trim(prefix, "/")
	if p != "" {
		p += "/"
	}
	return Layout{prefix: p}
}

// Prefix returns the normalized prefix, ending in "/" unless empty.
func (l Layout) Prefix() string { return l.prefix }

// LeasePrefix is the prefix of all lease keys.
func (l Layout) LeasePrefix() string { return l.prefix + "nodes/" }

// LeaseKey is the key of node's lease.
func (l Layout) LeaseKey(node string) string { return l.LeasePrefix() + node + ".json" }

// ParseLeaseKey returns the node of a lease key.
func (l Layout) ParseLeaseKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, l.LeasePrefix())
	if !ok {
		return "", false
	}
	node, ok := strings.CutSuffix(rest, ".json")
	if !ok || !ValidName(node) {
		return "", false
	}
	return node, true
}

// NodePrefix is the prefix of every mirror key of node, all epochs.
func (l Layout) NodePrefix(node string) string { return l.prefix + "q/" + node + "/" }

// EpochPrefix is the prefix of node's mirror keys written at epoch.
func (l Layout) EpochPrefix(node string, epoch uint64) string {
	return l.NodePrefix(node) + formatEpoch(epoch) + "/"
}

// MirrorKey is the key of entry e's copy in node's namespace at epoch.
func (l Layout) MirrorKey(node string, epoch uint64, e Entry) string {
	return l.EpochPrefix(node, epoch) + e.Queue + "/" + e.FileName()
}

// MirrorRef is a parsed mirror key.
type MirrorRef struct {
	// Node owns the namespace.
	Node string
	// Epoch is the owner's epoch when it wrote the copy.
	Epoch uint64
	// Entry is the entry the copy holds.
	Entry Entry
}

// ParseMirrorKey validates a mirror key read from the store. Only keys
// whose every segment is safe to become a local path are accepted.
func (l Layout) ParseMirrorKey(key string) (MirrorRef, bool) {
	rest, ok := strings.CutPrefix(key, l.prefix+"q/")
	if !ok {
		return MirrorRef{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 4 || !ValidName(parts[0]) || !ValidName(parts[2]) {
		return MirrorRef{}, false
	}
	epoch, ok := parseEpoch(parts[1])
	if !ok {
		return MirrorRef{}, false
	}
	base, ext, ok := ParseFileName(parts[3])
	if !ok || ext == ExtBak {
		return MirrorRef{}, false
	}
	return MirrorRef{Node: parts[0], Epoch: epoch, Entry: Entry{Queue: parts[2], Base: base, Kind: KindOfExt(ext)}}, true
}

// ClaimPrefix is the prefix of all claim keys.
func (l Layout) ClaimPrefix() string { return l.prefix + "claims/" }

// ClaimKey is the key of entry e's claim.
func (l Layout) ClaimKey(e Entry) string {
	return l.ClaimPrefix() + e.Queue + "/" + e.FileName() + ".json"
}

// ParseClaimKey validates a claim key read from the store.
func (l Layout) ParseClaimKey(key string) (Entry, bool) {
	rest, ok := strings.CutPrefix(key, l.ClaimPrefix())
	if !ok {
		return Entry{}, false
	}
	queue, file, ok := strings.Cut(rest, "/")
	if !ok || !ValidName(queue) {
		return Entry{}, false
	}
	file, ok = strings.CutSuffix(file, ".json")
	if !ok {
		return Entry{}, false
	}
	base, ext, ok := ParseFileName(file)
	if !ok || ext == ExtBak {
		return Entry{}, false
	}
	return Entry{Queue: queue, Base: base, Kind: KindOfExt(ext)}, true
}

// formatEpoch pads epochs so that keys sort in epoch order.
func formatEpoch(epoch uint64) string { return fmt.Sprintf("%08d", epoch) }

func parseEpoch(s string) (uint64, bool) {
	if len(s) < 8 || len(s) > 20 || !allDigits(s) {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || formatEpoch(n) != s {
		return 0, false
	}
	return n, true
}
