package probe

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

func TestSyntheticBody(t *testing.T) {
	tests := []struct {
		name string
		head string
		size int64
	}{
		{"head shorter than body", "nonce-123", 100000},
		{"head longer than body", "nonce-123", 4},
		{"empty", "abc", 0},
		{"head only", "abc", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := make([]byte, tt.size)
			copy(want, tt.head)
			b := &syntheticBody{head: []byte(tt.head), size: tt.size}
			// TestReader checks Read, ReadAt and Seek against want.
			if err := iotest.TestReader(b, want); err != nil {
				t.Fatal(err)
			}
			if _, err := b.Seek(0, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(b)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("ReadAll: %d bytes, %v", len(got), err)
			}
		})
	}
}
