package storetest

// The contract's cases for writes and conditions.

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

func testRoundTrip(t *testing.T, s store.Store) {
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"small", []byte("hello, store")},
		{"empty", []byte{}},
		{"binary", []byte{0, 1, 2, 0xff, 0xfe, '\n', 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "rt/" + tc.name + ".pck"
			put := mustPut(t, s, key, tc.body, store.Condition{})
			if put.Key != key || put.Size != int64(len(tc.body)) || put.ETag == "" {
				t.Fatalf("put info %+v", put)
			}
			got := wantBody(t, s, key, tc.body)
			st, err := s.Stat(ctxFor(t), key)
			if err != nil {
				t.Fatalf("stat: %v", err)
			}
			// A Put's answer need not say when (Modified); the rest agrees.
			put.Modified = st.Modified
			if st != got || st != put {
				t.Fatalf("stat %+v, get %+v, put %+v: want equal", st, got, put)
			}
		})
	}
}

func testETagIsBodyMD5(t *testing.T, s store.Store) {
	first := unique("first")
	for _, tc := range []struct {
		name string
		cond func(prev store.Info) store.Condition
	}{
		{"unconditional", func(store.Info) store.Condition { return store.Condition{} }},
		{"if-absent", func(store.Info) store.Condition { return store.Condition{IfAbsent: true} }},
		{"if-match", func(prev store.Info) store.Condition { return store.Condition{IfMatch: prev.ETag} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := "etag/" + tc.name
			prev := mustPut(t, s, "etag/if-match", first, store.Condition{})
			body := unique(tc.name)
			info := mustPut(t, s, key, body, tc.cond(prev))
			if want := store.ETagOf(body); info.ETag != want {
				t.Fatalf("put etag %q, want md5 %q", info.ETag, want)
			}
			wantBody(t, s, key, body)
		})
	}
}

// testModified: Get, Stat and List say when an object was written, by a
// clock no further from this machine's than the store's rounding (a
// second on S3) and a little skew; a rewrite moves the time forward or
// leaves it within that rounding.
func testModified(t *testing.T, s store.Store) {
	const slack = 5 * time.Second
	before := time.Now()
	mustPut(t, s, "mod/k", unique("first"), store.Condition{IfAbsent: true})
	after := time.Now()
	check := func(how string, m time.Time) {
		t.Helper()
		if m.Before(before.Add(-slack)) || m.After(after.Add(slack)) {
			t.Errorf("%s: modified %s, want within %s of the write (%s to %s)", how, m, slack, before, after)
		}
	}
	st, err := s.Stat(ctxFor(t), "mod/k")
	if err != nil {
		t.Fatal(err)
	}
	check("stat", st.Modified)
	rc, gi, err := s.Get(ctxFor(t), "mod/k")
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	check("get", gi.Modified)
	var listed []store.Info
	if err := s.List(ctxFor(t), "mod/", func(in store.Info) error { listed = append(listed, in); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 1 {
		t.Fatalf("listed %d objects, want 1", len(listed))
	}
	check("list", listed[0].Modified)
	mustPut(t, s, "mod/k", unique("second"), store.Condition{IfMatch: st.ETag})
	again, err := s.Stat(ctxFor(t), "mod/k")
	if err != nil {
		t.Fatal(err)
	}
	if again.Modified.Before(st.Modified.Add(-time.Second)) {
		t.Errorf("rewrite: modified went back from %s to %s", st.Modified, again.Modified)
	}
}

func testMissing(t *testing.T, s store.Store) {
	_, _, err := s.Get(ctxFor(t), "no/such/key")
	wantKind(t, err, store.KindNotFound, "no/such/key")
	_, err = s.Stat(ctxFor(t), "no/such/key")
	wantKind(t, err, store.KindNotFound, "no/such/key")
}

func testIfAbsentOnExisting(t *testing.T, s store.Store) {
	body := unique("existing")
	mustPut(t, s, "k", body, store.Condition{})
	_, err := store.PutBytes(ctxFor(t), s, "k", unique("intruder"), store.Condition{IfAbsent: true})
	wantKind(t, err, store.KindPrecondition, "k")
	// The same bytes again must lose too: no writer may win twice.
	_, err = store.PutBytes(ctxFor(t), s, "k", body, store.Condition{IfAbsent: true})
	wantKind(t, err, store.KindPrecondition, "k")
	wantBody(t, s, "k", body)
}

func testIfMatchStale(t *testing.T, s store.Store) {
	old := mustPut(t, s, "k", unique("v1"), store.Condition{})
	cur := unique("v2")
	mustPut(t, s, "k", cur, store.Condition{IfMatch: old.ETag})
	_, err := store.PutBytes(ctxFor(t), s, "k", unique("v3"), store.Condition{IfMatch: old.ETag})
	wantKind(t, err, store.KindPrecondition, "k")
	_, err = store.PutBytes(ctxFor(t), s, "k", unique("v3"), store.Condition{IfMatch: store.ETagOf([]byte("never written"))})
	wantKind(t, err, store.KindPrecondition, "k")
	wantBody(t, s, "k", cur)
}

func testIfMatchMissing(t *testing.T, s store.Store) {
	_, err := store.PutBytes(ctxFor(t), s, "k", unique("v"), store.Condition{IfMatch: store.ETagOf([]byte("x"))})
	wantKind(t, err, store.KindPrecondition, "k")
	if !store.Missing(err) {
		t.Fatalf("If-Match on a missing key: code %q, want %q (store.Missing)", store.CodeOf(err), store.CodeMissing)
	}
	_, err = s.Stat(ctxFor(t), "k")
	wantKind(t, err, store.KindNotFound, "k")
}

func testIfMatchCurrent(t *testing.T, s store.Store) {
	info := mustPut(t, s, "k", unique("v1"), store.Condition{IfAbsent: true})
	for i := range 3 {
		body := unique("v" + strconv.Itoa(i+2))
		next := mustPut(t, s, "k", body, store.Condition{IfMatch: info.ETag})
		if next.ETag == info.ETag {
			t.Fatalf("CAS kept etag %s", info.ETag)
		}
		if got := wantBody(t, s, "k", body); got.ETag != next.ETag {
			t.Fatalf("read etag %s, put returned %s", got.ETag, next.ETag)
		}
		info = next
	}
}

// race runs Racers writers at once; each returns its error. It returns the
// index of the only winner, failing unless there is exactly one and every
// loser lost its condition.
func race(t *testing.T, round int, write func(i int) error) int {
	t.Helper()
	start := make(chan struct{})
	errs := make([]error, Racers)
	var wg sync.WaitGroup
	for i := range Racers {
		wg.Go(func() {
			<-start
			errs[i] = write(i)
		})
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("round %d: writers %d and %d both won", round, winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrPrecondition):
			t.Fatalf("round %d: writer %d: %v (kind %v), want a precondition failure", round, i, err, store.KindOf(err))
		}
	}
	if winner < 0 {
		t.Fatalf("round %d: no writer won", round)
	}
	return winner
}

func testRacingCreators(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	var took []time.Duration
	defer func() { logRounds(t, took) }()
	for round := range rounds(t) {
		key := fmt.Sprintf("race/create/%03d", round)
		bodies := make([][]byte, Racers)
		for i := range bodies {
			bodies[i] = unique(fmt.Sprintf("round %d writer %d", round, i))
		}
		began := time.Now()
		w := race(t, round, func(i int) error {
			_, err := store.PutBytes(ctx, s, key, bodies[i], store.Condition{IfAbsent: true})
			return err
		})
		took = append(took, time.Since(began))
		wantBody(t, s, key, bodies[w])
	}
}

// logRounds logs how long the racing rounds took: a store that
// serializes contended conditional writes slowly shows it here.
func logRounds(t *testing.T, took []time.Duration) {
	if len(took) == 0 {
		return
	}
	sorted := slices.Clone(took)
	slices.Sort(sorted)
	t.Logf("%d rounds of %d racing writers: median %s, slowest %s", len(took), Racers,
		sorted[len(sorted)/2].Round(time.Millisecond), sorted[len(sorted)-1].Round(time.Millisecond))
}

func testRacingCAS(t *testing.T, s store.Store) {
	ctx := ctxFor(t)
	const key = "race/cas"
	cur := mustPut(t, s, key, unique("seed"), store.Condition{IfAbsent: true})
	var took []time.Duration
	defer func() { logRounds(t, took) }()
	for round := range rounds(t) {
		bodies := make([][]byte, Racers)
		infos := make([]store.Info, Racers)
		for i := range bodies {
			bodies[i] = unique(fmt.Sprintf("round %d writer %d", round, i))
		}
		began := time.Now()
		w := race(t, round, func(i int) error {
			var err error
			infos[i], err = store.PutBytes(ctx, s, key, bodies[i], store.Condition{IfMatch: cur.ETag})
			return err
		})
		took = append(took, time.Since(began))
		if got := wantBody(t, s, key, bodies[w]); got.ETag != infos[w].ETag {
			t.Fatalf("round %d: stored etag %s, winner got %s", round, got.ETag, infos[w].ETag)
		}
		cur = infos[w]
	}
}

// largeBody returns n pseudo-random bytes that differ per tag.
func largeBody(n int, tag byte) []byte {
	b := make([]byte, n)
	rand.Read(b)
	b[0] = tag
	return b
}

// onlyReader hides every method but Read, so the store cannot seek.
type onlyReader struct{ io.Reader }

func testLargeBodies(t *testing.T, s store.Store) {
	const size = 20 << 20
	a, b := largeBody(size, 'a'), largeBody(size, 'b')
	ctx := ctxFor(t)
	info, err := s.Put(ctx, "big", bytes.NewReader(a), size, store.Condition{IfAbsent: true})
	if err != nil {
		t.Fatalf("conditional create of %d bytes: %v", size, err)
	}
	if info.ETag != store.ETagOf(a) {
		t.Fatalf("conditional create etag %s, want single-part md5 %s", info.ETag, store.ETagOf(a))
	}
	wantBody(t, s, "big", a)
	// A large body must not slip past its condition (multipart uploads
	// drop it in some clients).
	_, err = s.Put(ctx, "big", bytes.NewReader(b), size, store.Condition{IfAbsent: true})
	wantKind(t, err, store.KindPrecondition, "big")
	st, err := s.Stat(ctx, "big")
	if err != nil || st.ETag != info.ETag {
		t.Fatalf("after refused create: stat %+v, %v; want etag %s", st, err, info.ETag)
	}
	// CAS from a body that cannot seek.
	next, err := s.Put(ctx, "big", onlyReader{bytes.NewReader(b)}, size, store.Condition{IfMatch: info.ETag})
	if err != nil {
		t.Fatalf("CAS of %d bytes: %v", size, err)
	}
	if next.ETag != store.ETagOf(b) {
		t.Fatalf("CAS etag %s, want %s", next.ETag, store.ETagOf(b))
	}
	wantBody(t, s, "big", b)
}

// listKeys returns List's keys under prefix, checking each entry's info
// against Stat for the first few.
func listKeys(t *testing.T, s store.Store, prefix string) []string {
	t.Helper()
	var keys []string
	err := s.List(ctxFor(t), prefix, func(in store.Info) error {
		keys = append(keys, in.Key)
		if in.ETag == "" || in.Size < 0 {
			return fmt.Errorf("list entry %+v", in)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("list %q: %v", prefix, err)
	}
	return keys
}

func wantKeys(t *testing.T, got []string, want ...string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) || len(got) != len(want) {
		t.Fatalf("keys %q, want %q", got, want)
	}
}
