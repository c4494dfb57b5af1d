// Package gatefile is the runner gate's file format (docs/gate.md): the
// gate record the sidecar publishes on the queue filesystem, the rule every
// reader applies before each dequeue (Admit), a stat-cached Reader, the
// kernel clock and boot id the rule compares against, and the per-runner
// records through which runners that honour the gate make themselves
// countable (ListRunners, RegisterRunner).
//
// The Go reader here and the Mailman plugin (deploy/mailman) are tested
// against the same fixtures, testdata/fixtures.json.
package gatefile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// Version is the record format this package reads and writes ("v").
const Version = 1

// MaxSize bounds a gate record file, in bytes.
const MaxSize = 64 << 10

// MaxDepth bounds how deeply arrays and objects nest in a record (the
// record object itself is depth 1), so that every reader, whatever its JSON
// library's recursion limit, accepts the same records.
const MaxDepth = 32

// FileName is the gate record's name in the sidecar's state directory.
const FileName = "gate.json"

// Mode is what runners may dequeue before the record's deadline.
type Mode string

// The three modes.
const (
	AdmitAll  Mode = "all"  // every entry
	AdmitNew  Mode = "new"  // entries born after Since + Slew
	AdmitNone Mode = "none" // nothing (a drain)
)

func (m Mode) valid() bool { return m == AdmitAll || m == AdmitNew || m == AdmitNone }

// Record is one gate record. Times on the wall clock are Unix seconds;
// Deadline is on CLOCK_BOOTTIME (see BootTime).
type Record struct {
	Node     string   // node id, for logs
	Epoch    int64    // lease epoch when written, 0 before the first lease
	BootID   string   // boot id of the kernel the record was written on (ReadBootID)
	Deadline float64  // CLOCK_BOOTTIME seconds until which Admit applies; 0: never
	Admit    Mode     // what runners may dequeue before Deadline
	Since    float64  // with AdmitNew, entries born after Since + Slew are admitted
	Cutoff   *float64 // after Deadline or on another boot, entries born after Cutoff + Slew; nil: none
	Slew     float64  // seconds added to Since and Cutoff for wall-clock steps
	Reason   string   // why the gate is what it is (live, lost, draining, ...)
	Deny     []string // "<queue>/<base>" entries never admitted
	Written  float64  // wall-clock seconds when written, for humans
}

// ErrMalformed is wrapped by every error Decode returns: the record is to
// be treated as missing (closed for every entry).
var ErrMalformed = errors.New("malformed gate record")

// wire is the record's JSON form, in the order Encode writes the fields.
type wire struct {
	V        int      `json:"v"`
	Node     string   `json:"node"`
	Epoch    int64    `json:"epoch"`
	BootID   string   `json:"boot_id"`
	Deadline float64  `json:"deadline"`
	Admit    Mode     `json:"admit"`
	Since    float64  `json:"since"`
	Cutoff   *float64 `json:"cutoff"`
	Slew     float64  `json:"slew"`
	Reason   string   `json:"reason"`
	Deny     []string `json:"deny"`
	Written  float64  `json:"written"`
}

// Encode returns the record's JSON form. It refuses a record that Decode
// would reject, so the writer never publishes what readers treat as
// missing.
func Encode(rec Record) ([]byte, error) {
	if err := rec.validate(); err != nil {
		return nil, fmt.Errorf("encode gate record: %w", err)
	}
	deny := rec.Deny
	if deny == nil {
		deny = []string{}
	}
	data, err := json.Marshal(wire{
		V: Version, Node: rec.Node, Epoch: rec.Epoch, BootID: rec.BootID,
		Deadline: rec.Deadline, Admit: rec.Admit, Since: rec.Since, Cutoff: rec.Cutoff,
		Slew: rec.Slew, Reason: rec.Reason, Deny: deny, Written: rec.Written,
	})
	if err != nil {
		return nil, fmt.Errorf("encode gate record: %w", err)
	}
	if len(data) > MaxSize {
		return nil, fmt.Errorf("encode gate record: %d bytes, more than %d", len(data), MaxSize)
	}
	return data, nil
}

// validate checks what Decode checks beyond the JSON syntax.
func (r Record) validate() error {
	for name, f := range map[string]float64{"deadline": r.Deadline, "since": r.Since, "slew": r.Slew, "written": r.Written} {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("%s is not finite", name)
		}
	}
	if r.Cutoff != nil && (math.IsNaN(*r.Cutoff) || math.IsInf(*r.Cutoff, 0)) {
		return errors.New("cutoff is not finite")
	}
	if r.Slew < 0 {
		return errors.New("slew is negative")
	}
	if r.Epoch < 0 {
		return errors.New("epoch is negative")
	}
	if r.BootID == "" {
		return errors.New("boot_id is empty")
	}
	if !r.Admit.valid() {
		return fmt.Errorf("admit %q is not all, new or none", r.Admit)
	}
	strs := append([]string{r.Node, r.BootID, r.Reason}, r.Deny...)
	for _, s := range strs {
		if !utf8.ValidString(s) {
			return fmt.Errorf("string %q is not valid UTF-8", s)
		}
	}
	return nil
}

// Decode parses a gate record strictly (docs/gate.md, "The record"): at
// most MaxSize bytes of UTF-8 holding one JSON object nested at most
// MaxDepth deep, every field present with its type, v = 1. Unknown fields
// are ignored. Every error wraps ErrMalformed.
func Decode(data []byte) (*Record, error) {
	rec, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return rec, nil
}

func decode(data []byte) (*Record, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%d bytes, more than %d", len(data), MaxSize)
	}
	if !utf8.Valid(data) {
		return nil, errors.New("not UTF-8")
	}
	if d := depth(data); d > MaxDepth {
		return nil, fmt.Errorf("nested %d deep, more than %d", d, MaxDepth)
	}
	if t := bytes.TrimLeft(data, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return nil, errors.New("not a JSON object")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		return nil, fmt.Errorf("json: %w", err)
	}
	f := fieldReader{fields: fields}
	if v := f.integer("v"); f.err == nil && v != Version {
		return nil, fmt.Errorf("version %d, want %d", v, Version)
	}
	rec := &Record{
		Node:     f.str("node"),
		Epoch:    f.integer("epoch"),
		BootID:   f.str("boot_id"),
		Deadline: f.number("deadline"),
		Admit:    Mode(f.str("admit")),
		Since:    f.number("since"),
		Cutoff:   f.nullableNumber("cutoff"),
		Slew:     f.number("slew"),
		Reason:   f.str("reason"),
		Deny:     f.strings("deny"),
		Written:  f.number("written"),
	}
	if f.err != nil {
		return nil, f.err
	}
	if err := rec.validate(); err != nil {
		return nil, err
	}
	return rec, nil
}

// depth returns how deeply arrays and objects nest in data, counting
// brackets outside strings.
func depth(data []byte) int {
	d, deepest := 0, 0
	inString, escaped := false, false
	for _, c := range data {
		switch {
		case inString && escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case inString && c == '"':
			inString = false
		case inString:
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			d++
			deepest = max(deepest, d)
		case c == ']' || c == '}':
			d--
		}
	}
	return deepest
}

// fieldReader decodes required fields of one JSON object strictly; the
// first error sticks.
type fieldReader struct {
	fields map[string]json.RawMessage
	err    error
}

func (f *fieldReader) raw(name string) (json.RawMessage, bool) {
	if f.err != nil {
		return nil, false
	}
	raw, ok := f.fields[name]
	if !ok {
		f.err = fmt.Errorf("field %s missing", name)
		return nil, false
	}
	return raw, true
}

func (f *fieldReader) fail(name, want string, raw json.RawMessage) {
	f.err = fmt.Errorf("field %s: want %s, have %.40s", name, want, raw)
}

// isNumber reports whether raw is a JSON number token (json.Unmarshal has
// checked its syntax already).
func isNumber(raw json.RawMessage) bool {
	return len(raw) > 0 && (raw[0] == '-' || '0' <= raw[0] && raw[0] <= '9')
}

// integer reads a number without fraction or exponent that fits an int64.
func (f *fieldReader) integer(name string) int64 {
	raw, ok := f.raw(name)
	if !ok {
		return 0
	}
	if !isNumber(raw) || bytes.ContainsAny(raw, ".eE") {
		f.fail(name, "an integer", raw)
		return 0
	}
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		f.fail(name, "an integer within 64 bits", raw)
		return 0
	}
	return n
}

// number reads a finite number.
func (f *fieldReader) number(name string) float64 {
	raw, ok := f.raw(name)
	if !ok {
		return 0
	}
	return f.finite(name, raw)
}

func (f *fieldReader) finite(name string, raw json.RawMessage) float64 {
	if !isNumber(raw) {
		f.fail(name, "a number", raw)
		return 0
	}
	x, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || math.IsInf(x, 0) {
		f.fail(name, "a finite number", raw)
		return 0
	}
	return x
}

// nullableNumber reads null (nil) or a finite number.
func (f *fieldReader) nullableNumber(name string) *float64 {
	raw, ok := f.raw(name)
	if !ok || string(raw) == "null" {
		return nil
	}
	x := f.finite(name, raw)
	return &x
}

func (f *fieldReader) str(name string) string {
	raw, ok := f.raw(name)
	if !ok {
		return ""
	}
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		f.fail(name, "a string", raw)
		return ""
	}
	return s
}

func (f *fieldReader) strings(name string) []string {
	raw, ok := f.raw(name)
	if !ok {
		return nil
	}
	var items []json.RawMessage
	if len(raw) == 0 || raw[0] != '[' || json.Unmarshal(raw, &items) != nil {
		f.fail(name, "an array of strings", raw)
		return nil
	}
	out := make([]string, 0, len(items))
	for _, item := range items {
		var s string
		if len(item) == 0 || item[0] != '"' || json.Unmarshal(item, &s) != nil {
			f.fail(name, "an array of strings", raw)
			return nil
		}
		out = append(out, s)
	}
	return out
}
