package storetest

import (
	"context"
	"errors"
	"io"
	"testing"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/memstore"
)

// refusing refuses the first n writes the way MinIO does without write
// quorum, reading the body first as a real client would.
type refusing struct {
	store.Store
	n int
}

func (r *refusing) Put(ctx context.Context, key string, body io.Reader, size int64, c store.Condition) (store.Info, error) {
	if r.n > 0 {
		r.n--
		io.Copy(io.Discard, body)
		return store.Info{}, &store.OpError{Op: "put", Key: key, Kind: store.KindTransient, Code: codeRefused, Err: errors.New("Resource requested is unwritable")}
	}
	return r.Store.Put(ctx, key, body, size, c)
}

func TestRefusalRetry(t *testing.T) {
	tests := []struct {
		name    string
		refuse  int
		wantErr bool
	}{
		{"accepted at once", 0, false},
		{"refused twice", 2, false},
		{"refused every time", refusalTries, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := memstore.New()
			s := refusalRetry{Store: &refusing{Store: mem, n: tt.refuse}, t: t}
			_, err := store.PutBytes(t.Context(), s, "k", []byte("the whole body"), store.Condition{IfAbsent: true})
			if (err != nil) != tt.wantErr {
				t.Fatalf("put: %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr {
				if store.CodeOf(err) != codeRefused {
					t.Errorf("error code %q, want %q", store.CodeOf(err), codeRefused)
				}
				return
			}
			data, _, err := store.GetBytes(t.Context(), mem, "k")
			if err != nil || string(data) != "the whole body" {
				t.Fatalf("stored %q, %v: want the whole body, sent again after each refusal", data, err)
			}
		})
	}
}
