package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEpochFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string // "" : no file
		want    uint64
		wantErr string
	}{
		{name: "no record", want: 0},
		{name: "this node", content: "n1 42\n", want: 42},
		{name: "another node's disk", content: "n2 42\n", want: 0},
		{name: "garbage", content: "n1 forty-two\n", wantErr: "unreadable content"},
		{name: "epoch zero", content: "n1 0\n", wantErr: "unreadable content"},
		{name: "empty", content: "\n", wantErr: "unreadable content"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.content != "" {
				if err := os.WriteFile(filepath.Join(dir, epochFileName), []byte(tc.content), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			got, err := NewEpochFile(OSFS{}, dir, "n1").Last()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), dir) {
					t.Fatalf("Last() = %d, %v; want an error naming the file and %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Last() = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func TestEpochFileSaveSurvivesALeftOverTemp(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	f := NewEpochFile(OSFS{}, dir, "n1")
	for _, epoch := range []uint64{1, 7, 8} {
		if err := f.Save(epoch); err != nil {
			t.Fatal(err)
		}
		// A crash between the temp file and the rename leaves the temp.
		if err := os.WriteFile(filepath.Join(dir, epochFileName+".tmp"), []byte("junk"), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := NewEpochFile(OSFS{}, dir, "n1").Last(); err != nil || got != epoch {
			t.Fatalf("after Save(%d): Last() = %d, %v", epoch, got, err)
		}
	}
}

func FuzzParseEpochRecord(f *testing.F) {
	for _, s := range []string{"n1 1\n", "a 18446744073709551615", "x -1", "", "a b c", "n1  3 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		node, epoch, ok := parseEpochRecord(s)
		if !ok {
			return
		}
		if epoch == 0 || node == "" || strings.ContainsAny(node, " \t\n") {
			t.Fatalf("parseEpochRecord(%q) = %q, %d, true", s, node, epoch)
		}
		// What Save writes for it reads back the same.
		n2, e2, ok2 := parseEpochRecord(node + " " + strings.TrimSpace(strings.Fields(s)[1]) + "\n")
		if !ok2 || n2 != node || e2 != epoch {
			t.Fatalf("round trip of %q: %q %d %v", s, n2, e2, ok2)
		}
	})
}
