package dirstore

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// On-disk encoding of object keys. A key "a/b/c" is stored as the file
// objects/d.a/d.b/o.c: every segment but the last is a directory named
// "d."+segment, the last is a file named "o."+segment. The tags let an
// object and a longer key that uses it as a "directory" coexist ("a/b" is
// objects/d.a/o.b, "a/b/c" is objects/d.a/d.b/o.c). Segment bytes are kept
// as they are: Linux file names may hold any byte but '/' and NUL, and keys
// never contain NUL or empty, "." or ".." segments.
//
// Listing order equals byte order of keys when the entries of one
// directory are sorted by their segment, with a directory's segment
// followed by '/' (every key below d.x starts with "x/"). compareNames
// implements that order.

const (
	objTag = "o."
	dirTag = "d."

	// MaxKeyLen is the longest key accepted, in bytes (S3's limit).
	MaxKeyLen = 1024
	// MaxSegmentLen is the longest key segment accepted, in bytes: a file
	// name is at most 255 bytes and the tag takes two.
	MaxSegmentLen = 255 - len(objTag)
)

// errInvalidKey is wrapped by every key validation error.
var errInvalidKey = errors.New("invalid key")

// validateKey reports why key cannot be stored, or nil.
func validateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", errInvalidKey)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: longer than %d bytes", errInvalidKey, MaxKeyLen)
	}
	if !utf8.ValidString(key) {
		return fmt.Errorf("%w: not valid UTF-8", errInvalidKey)
	}
	for seg := range strings.SplitSeq(key, "/") {
		if err := validateSegment(seg); err != nil {
			return err
		}
	}
	return nil
}

func validateSegment(seg string) error {
	switch {
	case seg == "":
		return fmt.Errorf("%w: empty segment", errInvalidKey)
	case seg == "." || seg == "..":
		return fmt.Errorf("%w: %q segment", errInvalidKey, seg)
	case strings.IndexByte(seg, 0) >= 0:
		return fmt.Errorf("%w: NUL byte", errInvalidKey)
	case len(seg) > MaxSegmentLen:
		return fmt.Errorf("%w: segment longer than %d bytes", errInvalidKey, MaxSegmentLen)
	}
	return nil
}

// relPath returns the path of a valid key's file relative to the objects
// directory.
func relPath(key string) string {
	segs := strings.Split(key, "/")
	for i := range segs {
		if i == len(segs)-1 {
			segs[i] = objTag + segs[i]
		} else {
			segs[i] = dirTag + segs[i]
		}
	}
	return filepath.Join(segs...)
}

// relDir returns the path of the directory holding a valid key's file,
// relative to the objects directory ("" for a key without '/').
func relDir(key string) string {
	i := strings.LastIndexByte(key, '/')
	if i < 0 {
		return ""
	}
	return filepath.Dir(relPath(key))
}

// keyOf decodes a path relative to the objects directory back into its key.
func keyOf(rel string) (string, error) {
	parts := strings.Split(rel, string(filepath.Separator))
	segs := make([]string, len(parts))
	for i, p := range parts {
		tag := dirTag
		if i == len(parts)-1 {
			tag = objTag
		}
		seg, ok := strings.CutPrefix(p, tag)
		if !ok {
			return "", fmt.Errorf("%w: path element %q lacks tag %q", errInvalidKey, p, tag)
		}
		segs[i] = seg
	}
	key := strings.Join(segs, "/")
	if err := validateKey(key); err != nil {
		return "", err
	}
	return key, nil
}

// entryKind says what a directory entry of the objects tree is.
func entryKind(name string) (isDir, ok bool) {
	switch {
	case len(name) <= len(objTag):
		return false, false
	case strings.HasPrefix(name, dirTag):
		return true, true
	case strings.HasPrefix(name, objTag):
		return false, true
	}
	return false, false
}

// compareNames orders two tagged entries of one directory so that walking
// them in order yields keys in byte order: by segment, a directory's
// segment compared as if followed by '/'. Both names must be tagged.
func compareNames(a, b string) int {
	aDir, bDir := a[0] == dirTag[0], b[0] == dirTag[0]
	as, bs := a[len(objTag):], b[len(objTag):]
	n := min(len(as), len(bs))
	if c := strings.Compare(as[:n], bs[:n]); c != 0 {
		return c
	}
	// One segment is a prefix of the other (or they are equal); compare
	// the next byte of each virtual sort key (segment, then '/' for a
	// directory, then the end).
	next := func(s string, dir bool) int {
		switch {
		case len(s) > n:
			return int(s[n])
		case dir:
			return '/'
		}
		return -1
	}
	an, bn := next(as, aDir), next(bs, bDir)
	switch {
	case an < bn:
		return -1
	case an > bn:
		return 1
	}
	// Same next byte: either both end here (same segment, same kind) or
	// one segment continues with '/' (impossible: segments hold no '/').
	return 0
}
