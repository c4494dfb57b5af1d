package fence

import (
	"strings"
	"testing"
)

const hex40 = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"

func TestParseFileName(t *testing.T) {
	tests := []struct {
		name string
		base string
		ext  Ext
		ok   bool
	}{
		{"1764330000.123456+" + hex40 + ".pck", "1764330000.123456+" + hex40, ExtPck, true},
		{"1764330000.123456+" + hex40 + ".bak", "1764330000.123456+" + hex40, ExtBak, true},
		{"1764330000+" + hex40 + ".psv", "1764330000+" + hex40, ExtPsv, true},
		{"1764330000.123456+" + hex40 + ".pck.tmp", "", 0, false},
		{"notes.pck", "", 0, false},
		{"1764330000.123456+" + strings.ToUpper(hex40) + ".pck", "", 0, false},
		{"1764330000.123456+" + hex40[:39] + ".pck", "", 0, false},
		{"1e9+" + hex40 + ".pck", "", 0, false},
		{"inf+" + hex40 + ".pck", "", 0, false},
		{"-1.5+" + hex40 + ".pck", "", 0, false},
		{"1.+" + hex40 + ".pck", "", 0, false},
		{".5+" + hex40 + ".pck", "", 0, false},
		{"1.2.3+" + hex40 + ".pck", "", 0, false},
		{"+" + hex40 + ".pck", "", 0, false},
		{"1764330000.1+" + hex40, "", 0, false},
		{"1764330000.1+" + hex40 + ".PCK", "", 0, false},
		{"\xff\xfe+" + hex40 + ".pck", "", 0, false},
		{"", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base, ext, ok := ParseFileName(tt.name)
			if ok != tt.ok || base != tt.base || ext != tt.ext {
				t.Fatalf("ParseFileName(%q) = %q, %v, %v; want %q, %v, %v", tt.name, base, ext, ok, tt.base, tt.ext, tt.ok)
			}
		})
	}
}

func TestLayoutKeys(t *testing.T) {
	e := Entry{Queue: "out", Base: "1764330000.5+" + hex40, Kind: KindPck}
	for _, prefix := range []string{"", "/", "mm", "/a/b/"} {
		l := NewLayout(prefix)
		key := l.MirrorKey("node-1", 42, e)
		r, ok := l.ParseMirrorKey(key)
		if !ok || r.Node != "node-1" || r.Epoch != 42 || r.Entry != e {
			t.Fatalf("prefix %q: %q parsed as %+v, %v", prefix, key, r, ok)
		}
		ce, ok := l.ParseClaimKey(l.ClaimKey(e))
		if !ok || ce != e {
			t.Fatalf("prefix %q: claim key round trip gave %+v, %v", prefix, ce, ok)
		}
		node, ok := l.ParseLeaseKey(l.LeaseKey("node-1"))
		if !ok || node != "node-1" {
			t.Fatalf("prefix %q: lease key round trip gave %q, %v", prefix, node, ok)
		}
	}
	l := NewLayout("mm")
	for _, bad := range []string{
		"mm/q/node/00000001/in/x.pck",
		"mm/q/node/00000001/../" + e.FileName(),
		"mm/q/../00000001/in/" + e.FileName(),
		"mm/q/node/1/in/" + e.FileName(),
		"mm/q/node/00000001/in/" + e.Base + ".bak",
		"mm/q/node/00000001/in/sub/" + e.FileName(),
		"other/q/node/00000001/in/" + e.FileName(),
		"mm/q/.hidden/00000001/in/" + e.FileName(),
	} {
		if r, ok := l.ParseMirrorKey(bad); ok {
			t.Errorf("ParseMirrorKey(%q) accepted: %+v", bad, r)
		}
	}
}

func TestEpochKeysSortByEpoch(t *testing.T) {
	l := NewLayout("")
	e := Entry{Queue: "in", Base: "1+" + hex40, Kind: KindPck}
	if a, b := l.MirrorKey("n", 9, e), l.MirrorKey("n", 10, e); a >= b {
		t.Fatalf("%q sorts after %q", a, b)
	}
}

func FuzzParseFileName(f *testing.F) {
	f.Add("1764330000.123456+" + hex40 + ".pck")
	f.Add("1764330000+" + hex40 + ".psv")
	f.Add("x.pck.tmp")
	f.Fuzz(func(t *testing.T, name string) {
		base, ext, ok := ParseFileName(name)
		if !ok {
			return
		}
		want := base + "." + map[Ext]string{ExtPck: "pck", ExtBak: "bak", ExtPsv: "psv"}[ext]
		if want != name {
			t.Fatalf("%q parsed to %q/%v", name, base, ext)
		}
		if strings.ContainsAny(base, "/\\\x00") || !ValidBase(base) {
			t.Fatalf("unsafe base %q accepted", base)
		}
	})
}

func FuzzMirrorKey(f *testing.F) {
	l := NewLayout("mm")
	f.Add(l.MirrorKey("n1", 3, Entry{Queue: "in", Base: "1.5+" + hex40, Kind: KindPck}))
	f.Add("mm/q/n1/00000003/in/../../etc/passwd")
	f.Fuzz(func(t *testing.T, key string) {
		r, ok := l.ParseMirrorKey(key)
		if !ok {
			return
		}
		if got := l.MirrorKey(r.Node, r.Epoch, r.Entry); got != key {
			t.Fatalf("%q round-trips to %q", key, got)
		}
		for _, seg := range []string{r.Node, r.Entry.Queue, r.Entry.FileName()} {
			if seg == "." || seg == ".." || strings.ContainsAny(seg, "/\\\x00") {
				t.Fatalf("unsafe segment %q from %q", seg, key)
			}
		}
	})
}
