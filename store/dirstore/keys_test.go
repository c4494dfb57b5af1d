package dirstore

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestValidateKey(t *testing.T) {
	tests := []struct {
		key string
		ok  bool
	}{
		{"a", true},
		{"a/b/c", true},
		{"q/node-1/in/1764330000.123456+0a1b.pck", true},
		{".hidden/..x/x..", true},
		{"sp ace/ünï", true},
		{strings.Repeat("x", MaxSegmentLen), true},
		{strings.Repeat("x/", 512)[:1023], true},
		{"", false},
		{"/a", false},
		{"a/", false},
		{"a//b", false},
		{"./a", false},
		{"a/./b", false},
		{"a/..", false},
		{"..", false},
		{"a\x00b", false},
		{"\xff\xfe", false},
		{strings.Repeat("x", MaxSegmentLen+1), false},
		{strings.Repeat("x/", 513), false},
	}
	for _, tt := range tests {
		name := tt.key
		if len(name) > 20 {
			name = name[:20] + "..."
		}
		t.Run(name, func(t *testing.T) {
			err := validateKey(tt.key)
			if (err == nil) != tt.ok {
				t.Fatalf("validateKey(%q) = %v, want ok=%v", tt.key, err, tt.ok)
			}
			if err != nil && !errors.Is(err, errInvalidKey) {
				t.Fatalf("error %v does not wrap errInvalidKey", err)
			}
		})
	}
}

func TestRelPath(t *testing.T) {
	tests := []struct{ key, rel, dir string }{
		{"a", "o.a", ""},
		{"a/b", "d.a/o.b", "d.a"},
		{"a/b/c", "d.a/d.b/o.c", "d.a/d.b"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if got := relPath(tt.key); got != tt.rel {
				t.Errorf("relPath = %q, want %q", got, tt.rel)
			}
			if got := relDir(tt.key); got != tt.dir {
				t.Errorf("relDir = %q, want %q", got, tt.dir)
			}
			if got, err := keyOf(tt.rel); err != nil || got != tt.key {
				t.Errorf("keyOf = %q, %v", got, err)
			}
		})
	}
}

func TestKeyOfRejects(t *testing.T) {
	for _, rel := range []string{"a", "o.a/o.b", "d.a", "d.a/x.b", "o.", "d.a/o.."} {
		t.Run(rel, func(t *testing.T) {
			if key, err := keyOf(rel); err == nil {
				t.Fatalf("keyOf(%q) = %q, want error", rel, key)
			}
		})
	}
}

// encodedCompare orders two keys the way List walks them: component by
// component with compareNames.
func encodedCompare(a, b string) int {
	pa := strings.Split(relPath(a), string(filepath.Separator))
	pb := strings.Split(relPath(b), string(filepath.Separator))
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] == pb[i] {
			continue
		}
		return compareNames(pa[i], pb[i])
	}
	// Equal up to the shorter path: the shorter path's last element is
	// an object file and the longer one's a directory with the same tag
	// position, which cannot be equal; only identical keys get here.
	return len(pa) - len(pb)
}

func TestEncodedOrderMatchesKeyOrder(t *testing.T) {
	keys := []string{
		"a", "a!", "a/b", "a/b/c", "a/b!", "a/b0", "a/b/c/d", "a0", "a.b",
		"a/b/", "b", "a/a", "a-", "a/b/c!", "a/bc", "a/b.c", "A", "a/b/c0",
	}
	keys = slices.DeleteFunc(keys, func(k string) bool { return validateKey(k) != nil })
	want := slices.Clone(keys)
	slices.Sort(want)
	got := slices.Clone(keys)
	slices.SortFunc(got, encodedCompare)
	if !slices.Equal(got, want) {
		t.Fatalf("encoded order\n%q\nwant\n%q", got, want)
	}
}

func FuzzKeyPath(f *testing.F) {
	for _, s := range [][2]string{
		{"a/b", "a/b/c"}, {"a!", "a/b"}, {"a/b", "a0"}, {"x", "x"},
		{"q/n/in/1.5+ab.pck", "q/n/in/1.5+ab.bak"}, {"a/b/c", "a/bc"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		for _, k := range []string{a, b} {
			if validateKey(k) != nil {
				return
			}
			got, err := keyOf(relPath(k))
			if err != nil || got != k {
				t.Fatalf("round trip %q: got %q, %v", k, got, err)
			}
			if strings.Contains(relPath(k), "\x00") || filepath.Clean(relPath(k)) != relPath(k) {
				t.Fatalf("relPath(%q) = %q is not a clean path", k, relPath(k))
			}
		}
		if got, want := sign(encodedCompare(a, b)), sign(strings.Compare(a, b)); got != want {
			t.Fatalf("order of %q, %q: encoded %d, keys %d", a, b, got, want)
		}
	})
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}
