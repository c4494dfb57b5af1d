package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/mmsidecar/mmsidecar/store"
)

// prober runs the probes of one Run under base.
type prober struct {
	s    store.Store
	opt  Options
	id   string
	base string
}

// body returns a body no other write of any probe run uses.
func (p *prober) body(probe string, round, writer int) []byte {
	return fmt.Appendf(nil, "mmsidecar store probe %s %s round %d writer %d nonce %s\n",
		p.id, probe, round, writer, randomHex(8))
}

// race starts one goroutine per body, releases them together, and
// returns each writer's error.
func (p *prober) race(ctx context.Context, key string, bodies [][]byte, cond store.Condition) []error {
	errs := make([]error, len(bodies))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w, b := range bodies {
		wg.Go(func() {
			<-start
			_, errs[w] = store.PutBytes(ctx, p.s, key, b, cond)
		})
	}
	close(start)
	wg.Wait()
	return errs
}

// oneWinner checks a race's errors: exactly one writer succeeded and every
// other one lost with a precondition failure.
func oneWinner(round int, errs []error) (int, error) {
	winner, wins := -1, 0
	for w, err := range errs {
		switch {
		case err == nil:
			winner = w
			wins++
		case !errors.Is(err, store.ErrPrecondition):
			return -1, fmt.Errorf("round %d: writer %d failed with an error other than precondition failed (%s): %w",
				round, w, store.CodeOf(err), err)
		}
	}
	switch {
	case wins == 0:
		return -1, fmt.Errorf("round %d: no writer of %d won", round, len(errs))
	case wins > 1:
		return -1, fmt.Errorf("round %d: %d of %d writers won: the store does not enforce the condition", round, wins, len(errs))
	}
	return winner, nil
}

// wantBody checks that key holds body.
func (p *prober) wantBody(ctx context.Context, key string, body []byte) error {
	data, _, err := store.GetBytes(ctx, p.s, key)
	if err != nil {
		return fmt.Errorf("read back %s: %w", key, err)
	}
	if !bytes.Equal(data, body) {
		return fmt.Errorf("%s holds %d bytes that are not the successful write's", key, len(data))
	}
	return nil
}

func (p *prober) raceDetail() string {
	return fmt.Sprintf("%d writers x %d rounds: one winner each round", p.opt.Writers, p.opt.Rounds)
}

// conditionalCreate races If-None-Match: * writers on a fresh key per round.
func (p *prober) conditionalCreate(ctx context.Context) (string, error) {
	for r := range p.opt.Rounds {
		key := fmt.Sprintf("%screate/%d", p.base, r)
		bodies := make([][]byte, p.opt.Writers)
		for w := range bodies {
			bodies[w] = p.body(NameCreate, r, w)
		}
		w, err := oneWinner(r, p.race(ctx, key, bodies, store.Condition{IfAbsent: true}))
		if err != nil {
			return "", err
		}
		if err := p.wantBody(ctx, key, bodies[w]); err != nil {
			return "", fmt.Errorf("round %d: %w", r, err)
		}
	}
	return p.raceDetail(), nil
}

// casUpdate races If-Match writers from one ETag, round after round on the
// same key.
func (p *prober) casUpdate(ctx context.Context) (string, error) {
	key := p.base + "cas"
	cur, err := store.PutBytes(ctx, p.s, key, p.body(NameCAS, -1, -1), store.Condition{IfAbsent: true})
	if err != nil {
		return "", fmt.Errorf("initial create: %w", err)
	}
	for r := range p.opt.Rounds {
		bodies := make([][]byte, p.opt.Writers)
		for w := range bodies {
			bodies[w] = p.body(NameCAS, r, w)
		}
		w, err := oneWinner(r, p.race(ctx, key, bodies, store.Condition{IfMatch: cur.ETag}))
		if err != nil {
			return "", err
		}
		if err := p.wantBody(ctx, key, bodies[w]); err != nil {
			return "", fmt.Errorf("round %d: %w", r, err)
		}
		if cur, err = p.s.Stat(ctx, key); err != nil {
			return "", fmt.Errorf("round %d: stat %s: %w", r, key, err)
		}
	}
	return p.raceDetail(), nil
}

// staleIfMatch checks that an If-Match with an ETag the object no longer
// has, or on a missing key, is refused and changes nothing.
func (p *prober) staleIfMatch(ctx context.Context) (string, error) {
	key := p.base + "stale"
	first, err := store.PutBytes(ctx, p.s, key, p.body(NameStale, 0, 0), store.Condition{IfAbsent: true})
	if err != nil {
		return "", fmt.Errorf("initial create: %w", err)
	}
	current := p.body(NameStale, 1, 0)
	if _, err := store.PutBytes(ctx, p.s, key, current, store.Condition{IfMatch: first.ETag}); err != nil {
		return "", fmt.Errorf("If-Match with the current ETag refused: %w", err)
	}
	_, err = store.PutBytes(ctx, p.s, key, p.body(NameStale, 2, 0), store.Condition{IfMatch: first.ETag})
	if err := refused("stale If-Match", err); err != nil {
		return "", err
	}
	if err := p.wantBody(ctx, key, current); err != nil {
		return "", fmt.Errorf("after a refused stale If-Match: %w", err)
	}
	missing := p.base + "stale-missing"
	_, err = store.PutBytes(ctx, p.s, missing, p.body(NameStale, 3, 0), store.Condition{IfMatch: first.ETag})
	if err := refused("If-Match on a missing key", err); err != nil {
		return "", err
	}
	if _, err := p.s.Stat(ctx, missing); !errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("a refused If-Match on a missing key left %s behind (stat: %v)", missing, err)
	}
	return "stale If-Match refused, object unchanged; If-Match on a missing key refused", nil
}

// refused checks that a conditional write that must lose lost cleanly.
func refused(what string, err error) error {
	switch {
	case err == nil:
		return fmt.Errorf("%s accepted: the store does not enforce the condition", what)
	case !errors.Is(err, store.ErrPrecondition):
		return fmt.Errorf("%s failed with an error other than precondition failed (%s): %w", what, store.CodeOf(err), err)
	}
	return nil
}

// largeConditional checks that conditions hold for a body large enough to
// tempt a client into a multipart upload.
func (p *prober) largeConditional(ctx context.Context) (string, error) {
	key := p.base + "large"
	// Each body is a fresh nonce followed by zeros, generated on the fly:
	// nothing is shared between writes (a transport may still read a
	// body after Put returns) and no 17 MiB buffer is allocated here.
	fill := func(step int) *syntheticBody {
		return &syntheticBody{head: p.body(NameLarge, step, 0), size: p.opt.LargeSize}
	}
	size := float64(p.opt.LargeSize) / (1 << 20)

	first, err := p.s.Put(ctx, key, fill(0), p.opt.LargeSize, store.Condition{IfAbsent: true})
	if err != nil {
		return "", fmt.Errorf("%.1f MiB create-if-absent of a fresh key failed: %w", size, err)
	}
	_, err = p.s.Put(ctx, key, fill(1), p.opt.LargeSize, store.Condition{IfAbsent: true})
	if err := refused(fmt.Sprintf("%.1f MiB create-if-absent on an existing key", size), err); err != nil {
		return "", err
	}
	if err := p.wantETag(ctx, key, first.ETag); err != nil {
		return "", err
	}
	second, err := p.s.Put(ctx, key, fill(2), p.opt.LargeSize, store.Condition{IfMatch: first.ETag})
	if err != nil {
		return "", fmt.Errorf("%.1f MiB If-Match with the current ETag refused: %w", size, err)
	}
	_, err = p.s.Put(ctx, key, fill(3), p.opt.LargeSize, store.Condition{IfMatch: first.ETag})
	if err := refused(fmt.Sprintf("%.1f MiB stale If-Match", size), err); err != nil {
		return "", err
	}
	if err := p.wantETag(ctx, key, second.ETag); err != nil {
		return "", err
	}
	return fmt.Sprintf("%.1f MiB bodies: create on an existing key and stale If-Match refused, fresh create and current If-Match accepted", size), nil
}

// wantETag checks that key still has etag after a refused write.
func (p *prober) wantETag(ctx context.Context, key, etag string) error {
	info, err := p.s.Stat(ctx, key)
	if err != nil {
		return fmt.Errorf("stat %s: %w", key, err)
	}
	if info.ETag != etag {
		return fmt.Errorf("a refused write changed %s (etag %s, want %s)", key, info.ETag, etag)
	}
	return nil
}

// errorClassification checks that a missing key reads as not found, so
// callers can tell "gone" from "failed".
func (p *prober) errorClassification(ctx context.Context) (string, error) {
	key := p.base + "never-written"
	if _, _, err := store.GetBytes(ctx, p.s, key); !errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("get of a missing key: got %v, want not found", err)
	}
	if _, err := p.s.Stat(ctx, key); !errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("stat of a missing key: got %v, want not found", err)
	}
	if err := p.s.Delete(ctx, key); err != nil {
		return "", fmt.Errorf("delete of a missing key: %w", err)
	}
	return "missing key: get and stat report not found, delete succeeds", nil
}

// cleanup deletes every key under the run's base and checks none is left.
func (p *prober) cleanup(ctx context.Context) (string, error) {
	keys, err := p.list(ctx)
	if err != nil {
		return "", err
	}
	if err := p.s.DeleteMany(ctx, keys); err != nil {
		return "", fmt.Errorf("delete probe keys under %s: %w", p.base, err)
	}
	left, err := p.list(ctx)
	if err != nil {
		return "", err
	}
	if len(left) > 0 {
		return "", fmt.Errorf("%d probe keys left under %s after deleting them, e.g. %s", len(left), p.base, left[0])
	}
	return fmt.Sprintf("deleted %d probe objects under %s", len(keys), p.base), nil
}

func (p *prober) list(ctx context.Context) ([]string, error) {
	var keys []string
	err := p.s.List(ctx, p.base, func(in store.Info) error {
		keys = append(keys, in.Key)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list probe keys under %s: %w", p.base, err)
	}
	return keys, nil
}
