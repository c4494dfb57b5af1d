package gatefile

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// fixture is one case of testdata/fixtures.json (its comment says how the
// fields are read; the Python tests read them the same way).
type fixture struct {
	Name      string  `json:"name"`
	Raw       *string `json:"raw"`
	RawB64    string  `json:"raw_b64"`
	PadTo     int     `json:"pad_to"`
	Canonical bool    `json:"canonical"`
	Queue     string  `json:"queue"`
	Base      string  `json:"base"`
	NowBoot   float64 `json:"now_boottime"`
	BootID    string  `json:"boot_id"`
	Admitted  bool    `json:"admitted"`
	Reason    string  `json:"reason"`
}

// bytes returns the record file's content, or nil when there is no file.
func (fx fixture) bytes(t *testing.T) []byte {
	t.Helper()
	var b []byte
	switch {
	case fx.RawB64 != "":
		var err error
		if b, err = base64.StdEncoding.DecodeString(fx.RawB64); err != nil {
			t.Fatalf("raw_b64: %v", err)
		}
	case fx.Raw != nil:
		b = []byte(*fx.Raw)
	default:
		return nil
	}
	if fx.PadTo > 0 {
		if fx.PadTo < len(b) {
			t.Fatalf("pad_to %d is less than the record's %d bytes", fx.PadTo, len(b))
		}
		b = append(b, bytes.Repeat([]byte(" "), fx.PadTo-len(b))...)
	}
	return b
}

func loadFixtures(t *testing.T) []fixture {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "fixtures.json"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Comment string    `json:"comment"`
		Cases   []fixture `json:"cases"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		t.Fatalf("fixtures.json: %v", err)
	}
	if len(file.Cases) < 100 {
		t.Fatalf("fixtures.json has %d cases; it had over 100", len(file.Cases))
	}
	return file.Cases
}

// TestFixtures runs every shared case through Decode and Admit.
func TestFixtures(t *testing.T) {
	for _, fx := range loadFixtures(t) {
		t.Run(fx.Name, func(t *testing.T) {
			raw := fx.bytes(t)
			var rec *Record
			err := fmt.Errorf("no record: %w", fs.ErrNotExist)
			if raw != nil {
				rec, err = Decode(raw)
			}
			admitted, reason := Admit(rec, err, fx.Queue, fx.Base, fx.NowBoot, fx.BootID)
			if admitted != fx.Admitted || reason != fx.Reason {
				t.Fatalf("Admit = %v %q, want %v %q (decode error: %v)", admitted, reason, fx.Admitted, fx.Reason, err)
			}
			if fx.Canonical {
				if rec == nil {
					t.Fatalf("canonical case does not decode: %v", err)
				}
				out, err := Encode(*rec)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out, raw) {
					t.Fatalf("Encode wrote\n%s\nthe fixture has\n%s", out, raw)
				}
			}
		})
	}
}

// TestFixturesThroughReader writes every case to a file and reads it with
// a Reader, as the sidecar's chaos workers do: same answers.
func TestFixturesThroughReader(t *testing.T) {
	dir := t.TempDir()
	for i, fx := range loadFixtures(t) {
		path := filepath.Join(dir, fmt.Sprintf("gate-%d.json", i))
		if raw := fx.bytes(t); raw != nil {
			if err := os.WriteFile(path, raw, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		rec, err := NewReader(path).Read()
		admitted, reason := Admit(rec, err, fx.Queue, fx.Base, fx.NowBoot, fx.BootID)
		if admitted != fx.Admitted || reason != fx.Reason {
			t.Errorf("%s: Admit = %v %q, want %v %q (read error: %v)", fx.Name, admitted, reason, fx.Admitted, fx.Reason, err)
		}
	}
}

// TestFixturesCoverEveryReason: each reason of the rule, admitted or not,
// has at least one case.
func TestFixturesCoverEveryReason(t *testing.T) {
	seen := map[string]bool{}
	for _, fx := range loadFixtures(t) {
		seen[fx.Reason] = true
	}
	for _, r := range []string{
		ReasonNoGate, ReasonMalformed, ReasonDenied, ReasonBadName, ReasonOpen,
		ReasonAfterSince, ReasonBeforeSince, ReasonAdmitNone,
		ReasonOtherBootNone, ReasonOtherBootAfter, ReasonOtherBootBefore,
		ReasonExpiredNoCutoff, ReasonExpiredAfter, ReasonExpiredBefore,
	} {
		if !seen[r] {
			t.Errorf("no fixture returns %q", r)
		}
	}
}
