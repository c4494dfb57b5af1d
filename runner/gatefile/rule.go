package gatefile

import (
	"errors"
	"io/fs"
	"slices"
	"strconv"
	"strings"

	"github.com/mmsidecar/mmsidecar/fence"
)

// The reasons Admit returns, exactly as docs/gate.md lists them; every
// reader returns the same string for the same case (the fixtures check it).
const (
	ReasonNoGate          = "no gate"
	ReasonUnreadable      = "unreadable"
	ReasonMalformed       = "malformed"
	ReasonDenied          = "denied"
	ReasonBadName         = "bad name"
	ReasonOpen            = "open"
	ReasonAfterSince      = "after since"
	ReasonBeforeSince     = "before since"
	ReasonAdmitNone       = "admit none"
	ReasonOtherBootNone   = "other boot, no cutoff"
	ReasonOtherBootAfter  = "other boot, after cutoff"
	ReasonOtherBootBefore = "other boot, before cutoff"
	ReasonExpiredNoCutoff = "expired, no cutoff"
	ReasonExpiredAfter    = "expired, after cutoff"
	ReasonExpiredBefore   = "expired, before cutoff"
	// ReasonCheckFailed is a reader's own failure inside a check (its
	// clock), not a case of the rule: not admitted.
	ReasonCheckFailed = "check failed"
)

// Admit is the gate's rule (docs/gate.md, "The rule"): whether a runner may
// dequeue the entry base of queue now, and why. rec and readErr are what
// reading the record gave (Reader.Read, or Decode): an error wrapping
// fs.ErrNotExist means no gate, one wrapping ErrMalformed a malformed
// record, any other an unreadable one; all three close the gate for every
// entry. nowBoot is the reader's CLOCK_BOOTTIME in seconds (BootTime) and
// bootID its own boot id (ReadBootID; "" when it cannot be read, which no
// valid record carries).
func Admit(rec *Record, readErr error, queue, base string, nowBoot float64, bootID string) (admitted bool, reason string) {
	switch {
	case readErr == nil && rec == nil, errors.Is(readErr, fs.ErrNotExist):
		return false, ReasonNoGate
	case errors.Is(readErr, ErrMalformed):
		return false, ReasonMalformed
	case readErr != nil:
		return false, ReasonUnreadable
	}
	if slices.Contains(rec.Deny, queue+"/"+base) {
		return false, ReasonDenied
	}
	birth, ok := Birth(base)
	if !ok {
		return false, ReasonBadName
	}
	if rec.BootID == bootID && nowBoot < rec.Deadline {
		switch rec.Admit {
		case AdmitAll:
			return true, ReasonOpen
		case AdmitNew:
			if birth > rec.Since+rec.Slew {
				return true, ReasonAfterSince
			}
			return false, ReasonBeforeSince
		default:
			return false, ReasonAdmitNone
		}
	}
	otherBoot := rec.BootID != bootID
	switch {
	case rec.Cutoff == nil && otherBoot:
		return false, ReasonOtherBootNone
	case rec.Cutoff == nil:
		return false, ReasonExpiredNoCutoff
	case birth > *rec.Cutoff+rec.Slew && otherBoot:
		return true, ReasonOtherBootAfter
	case birth > *rec.Cutoff+rec.Slew:
		return true, ReasonExpiredAfter
	case otherBoot:
		return false, ReasonOtherBootBefore
	default:
		return false, ReasonExpiredBefore
	}
}

// Birth returns the wall-clock time, in Unix seconds, at which Mailman
// enqueued the entry base ("<time>+<40 hex>"), and false when base is not
// Mailman's shape (fence.ValidBase): such an entry has no birth and is
// never admitted.
func Birth(base string) (float64, bool) {
	if !fence.ValidBase(base) {
		return 0, false
	}
	when, _, _ := strings.Cut(base, "+")
	t, err := strconv.ParseFloat(when, 64)
	if err != nil {
		return 0, false
	}
	return t, true
}
