package gatefile

import (
	"errors"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/mmsidecar/mmsidecar/fence"
)

const testBoot = "3f0c5a8e-1d2b-4c6e-9a7f-0b1c2d3e4f50"

func ptr(f float64) *float64 { return &f }

func liveRecord() Record {
	return Record{
		Node: "n1", Epoch: 3, BootID: testBoot, Deadline: 5000.5, Admit: AdmitAll,
		Since: 1764330000.5, Cutoff: ptr(1764330000.5), Slew: 1, Reason: "live",
		Deny: []string{"in/1764329990.25+0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"}, Written: 1764330000.25,
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Record)
	}{
		{"live", func(*Record) {}},
		{"no cutoff", func(r *Record) { r.Cutoff = nil }},
		{"nil deny", func(r *Record) { r.Deny = nil }},
		{"admit new", func(r *Record) { r.Admit = AdmitNew }},
		{"drain", func(r *Record) { r.Admit, r.Reason = AdmitNone, "draining" }},
		{"odd strings", func(r *Record) { r.Node, r.Reason = `<&>"\`+"\u2028", "é中" }},
		{"extreme numbers", func(r *Record) { r.Deadline, r.Since, r.Written = 1e300, -1e-300, 5e-324 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := liveRecord()
			tc.edit(&rec)
			data, err := Encode(rec)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(data)
			if err != nil {
				t.Fatalf("Decode(%s): %v", data, err)
			}
			if rec.Deny == nil {
				rec.Deny = []string{}
			}
			if !reflect.DeepEqual(*got, rec) {
				t.Fatalf("round trip\n got %+v\nwant %+v", *got, rec)
			}
		})
	}
}

func TestEncodeRefusesWhatReadersReject(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Record)
	}{
		{"NaN deadline", func(r *Record) { r.Deadline = math.NaN() }},
		{"infinite since", func(r *Record) { r.Since = math.Inf(1) }},
		{"infinite cutoff", func(r *Record) { r.Cutoff = ptr(math.Inf(-1)) }},
		{"negative slew", func(r *Record) { r.Slew = -0.5 }},
		{"negative epoch", func(r *Record) { r.Epoch = -1 }},
		{"empty boot id", func(r *Record) { r.BootID = "" }},
		{"unknown admit", func(r *Record) { r.Admit = "some" }},
		{"empty admit", func(r *Record) { r.Admit = "" }},
		{"invalid UTF-8", func(r *Record) { r.Deny = []string{"in/\xff"} }},
		{"too large", func(r *Record) { r.Deny = []string{strings.Repeat("x", MaxSize)} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := liveRecord()
			tc.edit(&rec)
			if data, err := Encode(rec); err == nil {
				t.Fatalf("Encode accepted it: %s", data)
			}
		})
	}
}

func TestDecodeErrorsWrapErrMalformed(t *testing.T) {
	for _, raw := range []string{"", "{", `{"v":2}`, `[]`, "\xff"} {
		if _, err := Decode([]byte(raw)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%q) = %v, want ErrMalformed", raw, err)
		}
	}
}

// FuzzDecode: Decode never panics, and what it accepts encodes back to a
// record that decodes to the same value.
func FuzzDecode(f *testing.F) {
	good, err := Encode(liveRecord())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"v":1,"node":"","epoch":0,"boot_id":"b","deadline":0,"admit":"none","since":0,"cutoff":null,"slew":0,"reason":"","deny":[],"written":0}`))
	f.Add([]byte(`{"v":1.0}`))
	f.Add([]byte(`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || rec != nil {
				t.Fatalf("Decode = %v, %v", rec, err)
			}
			return
		}
		out, err := Encode(*rec)
		if err != nil {
			t.Fatalf("accepted %q but cannot encode it: %v", data, err)
		}
		again, err := Decode(out)
		if err != nil {
			t.Fatalf("Encode wrote %q, which does not decode: %v", out, err)
		}
		if !reflect.DeepEqual(again, rec) {
			t.Fatalf("round trip of %q: %+v, then %+v", data, rec, again)
		}
	})
}

// birthShape is docs/gate.md's shape of a base with a birth, written
// independently of fence.ValidBase.
var birthShape = regexp.MustCompile(`^([0-9]+(\.[0-9]+)?)\+[0-9a-f]{40}$`)

// FuzzBirth: a base has a birth exactly when it has Mailman's shape with a
// time of at most 32 characters, and the birth is that time as a double.
func FuzzBirth(f *testing.F) {
	hex := "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
	for _, s := range []string{
		"1764330000.123456+" + hex, "1+" + hex, "1e9+" + hex, "inf+" + hex, "1_0+" + hex,
		"1.+" + hex, ".5+" + hex, "1.5+" + strings.ToUpper(hex), "1.5+" + hex + "0", "",
		strings.Repeat("9", 32) + "+" + hex, strings.Repeat("9", 33) + "+" + hex, "١+" + hex,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, base string) {
		birth, ok := Birth(base)
		m := birthShape.FindStringSubmatch(base)
		want := m != nil && len(m[1]) <= 32
		if ok != want {
			t.Fatalf("Birth(%q) ok = %v, want %v", base, ok, want)
		}
		if ok != fence.ValidBase(base) {
			t.Fatalf("Birth(%q) ok = %v but fence.ValidBase says %v", base, ok, !ok)
		}
		if !ok {
			return
		}
		f, err := strconv.ParseFloat(m[1], 64)
		if err != nil || f != birth || math.IsInf(birth, 0) || birth < 0 {
			t.Fatalf("Birth(%q) = %v, want %v (%v)", base, birth, f, err)
		}
	})
}

// TestAdmitReadErrors: how a failed read closes the gate.
func TestAdmitReadErrors(t *testing.T) {
	base := "1764330010.75+0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"
	rec := liveRecord()
	for _, tc := range []struct {
		name   string
		rec    *Record
		err    error
		reason string
	}{
		{"nothing", nil, nil, ReasonNoGate},
		{"not exist", nil, errNotExist, ReasonNoGate},
		{"malformed", nil, ErrMalformed, ReasonMalformed},
		{"unreadable", nil, errors.New("read gate record: input/output error"), ReasonUnreadable},
		{"a record with an error", &rec, errors.New("stale"), ReasonUnreadable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, reason := Admit(tc.rec, tc.err, "in", base, 1, testBoot)
			if ok || reason != tc.reason {
				t.Fatalf("Admit = %v %q, want false %q", ok, reason, tc.reason)
			}
		})
	}
}
