package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestNewLogger(t *testing.T) {
	tests := []struct {
		level, format string
		wantDebug     bool
		wantWarn      bool
	}{
		{"debug", "json", true, true},
		{"info", "text", false, true},
		{"warn", "json", false, true},
		{"error", "text", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.level+"/"+tt.format, func(t *testing.T) {
			var buf strings.Builder
			log := newLogger(&buf, &Config{LogLevel: tt.level, LogFormat: tt.format})
			log.Debug("dbg", "k", 1)
			log.Warn("wrn", "node", "n1")
			out := buf.String()
			if got := strings.Contains(out, "dbg"); got != tt.wantDebug {
				t.Errorf("debug logged=%v, want %v: %q", got, tt.wantDebug, out)
			}
			if got := strings.Contains(out, "wrn"); got != tt.wantWarn {
				t.Errorf("warn logged=%v, want %v: %q", got, tt.wantWarn, out)
			}
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				if line == "" {
					continue
				}
				var m map[string]any
				isJSON := json.Unmarshal([]byte(line), &m) == nil
				if isJSON != (tt.format == "json") {
					t.Errorf("format %s, line %q", tt.format, line)
				}
			}
		})
	}
}
