package storetest

// The contract's cases for listing, deletion and error classification.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"

	"github.com/mmsidecar/mmsidecar/store"
)

func testListAfterWrite(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	for i := range 5 {
		key := fmt.Sprintf("q/%d", i)
		body := unique(key)
		mustPut(t, s, key, body, store.Condition{IfAbsent: true})
		var got []store.Info
		if err := s.List(ctx, "q/", func(in store.Info) error { got = append(got, in); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(got) != i+1 || got[i].Key != key || got[i].ETag != store.ETagOf(body) || got[i].Size != int64(len(body)) {
			t.Fatalf("list right after put %s: %+v", key, got)
		}
	}
	if err := s.Delete(ctx, "q/2"); err != nil {
		t.Fatal(err)
	}
	wantKeys(t, listKeys(t, s, "q/"), "q/0", "q/1", "q/3", "q/4")
}

func testListPrefix(t *testing.T, s store.Store) {
	for _, k := range []string{"a/1", "a/2", "ab", "a/sub/3", "b/1", "c"} {
		mustPut(t, s, k, unique(k), store.Condition{})
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"a/", []string{"a/1", "a/2", "a/sub/3"}},
		{"a", []string{"a/1", "a/2", "a/sub/3", "ab"}},
		{"a/sub/", []string{"a/sub/3"}},
		{"", []string{"a/1", "a/2", "a/sub/3", "ab", "b/1", "c"}},
		{"zzz", nil},
		{"a/1", []string{"a/1"}},
	} {
		t.Run("prefix="+tc.prefix, func(t *testing.T) {
			wantKeys(t, listKeys(t, s, tc.prefix), tc.want...)
		})
	}
}

func testListOrder(t *testing.T, s store.Store) {
	// No key here is also the "directory" of another ("a" and "a/b"):
	// MinIO's recursive listing leaves out every key below such a key, so
	// no layout may create that pair.
	keys := []string{"z", "a-b", "a.b", "a/b", "a/c/d", "a0", "A", "B/c", "1764330000.5+ab.pck",
		"1764330000.123456+ab.pck", "17643300000+ab.pck", "a~", "é", "b/c/d/e"}
	for _, k := range keys {
		mustPut(t, s, "o/"+k, unique(k), store.Condition{})
	}
	want := make([]string, len(keys))
	for i, k := range keys {
		want[i] = "o/" + k
	}
	sort.Strings(want)
	wantKeys(t, listKeys(t, s, "o/"), want...)
}

func testListStopsOnError(t *testing.T, s store.Store) {
	for i := range 5 {
		mustPut(t, s, fmt.Sprintf("s/%d", i), unique("s"), store.Condition{})
	}
	stop := errors.New("enough")
	n := 0
	err := s.List(ctxFor(t), "s/", func(store.Info) error {
		n++
		if n == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || n != 3 {
		t.Fatalf("list returned %v after %d calls, want the callback's error after 3", err, n)
	}
}

func testListManyAndDeleteMany(t *testing.T, s store.Store) {
	const n = 1100 // more than one list page and one delete batch
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("many/%05d", i)
	}
	ctx := ctxFor(t)
	work := make(chan string)
	errs := make(chan error, Racers)
	var wg sync.WaitGroup
	for range Racers {
		wg.Go(func() {
			for k := range work {
				if _, err := store.PutBytes(ctx, s, k, []byte(k), store.Condition{}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
feed:
	for _, k := range keys {
		select {
		case work <- k:
		case err := <-errs:
			t.Errorf("put: %v", err)
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("put: %v", err)
	}
	if t.Failed() {
		t.FailNow()
	}
	wantKeys(t, listKeys(t, s, "many/"), keys...)
	// Delete all of them plus keys that never existed.
	del := append([]string{"many/missing-1"}, keys...)
	del = append(del, "many/missing-2")
	if err := s.DeleteMany(ctx, del); err != nil {
		t.Fatalf("delete many: %v", err)
	}
	wantKeys(t, listKeys(t, s, "many/"))
}

func testDelete(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	for _, k := range []string{"d/1", "d/2", "d/3", "keep"} {
		mustPut(t, s, k, unique(k), store.Condition{})
	}
	if err := s.Delete(ctx, "d/1"); err != nil {
		t.Fatalf("delete: %v", err)
	}
	_, err := s.Stat(ctx, "d/1")
	wantKind(t, err, store.KindNotFound, "d/1")
	if err := s.Delete(ctx, "d/1"); err != nil {
		t.Fatalf("delete of a missing key: %v", err)
	}
	if err := s.DeleteMany(ctx, []string{"d/2", "d/nope", "d/3"}); err != nil {
		t.Fatalf("delete many: %v", err)
	}
	if err := s.DeleteMany(ctx, nil); err != nil {
		t.Fatalf("delete many of nothing: %v", err)
	}
	wantKeys(t, listKeys(t, s, ""), "keep")
	// A deleted key can be created again, conditionally.
	mustPut(t, s, "d/1", unique("again"), store.Condition{IfAbsent: true})
}

func testErrorClassification(t *testing.T, s store.Store) {
	mustPut(t, s, "k", unique("k"), store.Condition{})
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		call func() error
		kind store.Kind
		key  string
	}{
		{"get missing", func() error { _, _, err := s.Get(ctxFor(t), "nope"); return err }, store.KindNotFound, "nope"},
		{"stat missing", func() error { _, err := s.Stat(ctxFor(t), "nope"); return err }, store.KindNotFound, "nope"},
		{"create existing", func() error {
			_, err := store.PutBytes(ctxFor(t), s, "k", unique("x"), store.Condition{IfAbsent: true})
			return err
		}, store.KindPrecondition, "k"},
		{"cas missing", func() error {
			_, err := store.PutBytes(ctxFor(t), s, "nope", unique("x"), store.Condition{IfMatch: store.ETagOf(nil)})
			return err
		}, store.KindPrecondition, "nope"},
		{"get canceled", func() error { _, _, err := s.Get(canceled, "k"); return err }, store.KindTransient, "k"},
		{"put canceled", func() error {
			_, err := store.PutBytes(canceled, s, "k2", unique("x"), store.Condition{IfAbsent: true})
			return err
		}, store.KindTransient, "k2"},
		{"list canceled", func() error {
			return s.List(canceled, "", func(store.Info) error { return nil })
		}, store.KindTransient, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantKind(t, tc.call(), tc.kind, tc.key)
		})
	}
	if _, err := s.Stat(ctxFor(t), "k2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a put with a canceled context left %s behind: %v", "k2", err)
	}
}
