package storetest

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
)

// codeRefused is MinIO's answer when a write cannot reach write quorum
// ("Resource requested is unwritable, please reduce your request rate"):
// the write did not happen. A four-server cluster on two busy cores gives
// it now and then with every server up, when internode calls time out.
const codeRefused = "SlowDownWrite"

// refusalRetry is a store whose writes are retried, a few times, when the
// cluster refused them for want of write quorum. The contract suite checks
// what the store does with a write (one winner, stale ETags refused), not
// whether a loaded test cluster takes every write at once; the sidecar
// retries these refusals the same way. A refused conditional write that
// did commit after all shows up as a precondition failure on the retry,
// so no contract case can pass by it.
type refusalRetry struct {
	store.Store
	t testing.TB
}

const refusalTries = 6

func (r refusalRetry) retry(ctx context.Context, what string, f func() error) error {
	var err error
	for try := 1; ; try++ {
		err = f()
		if store.CodeOf(err) != codeRefused || try == refusalTries || ctx.Err() != nil {
			return err
		}
		r.t.Logf("%s refused by the cluster (%v): try %d of %d", what, err, try+1, refusalTries)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(try) * 250 * time.Millisecond):
		}
	}
}

// Put retries a refused write when it can send the body again (an
// io.Seeker); other bodies get one try.
func (r refusalRetry) Put(ctx context.Context, key string, body io.Reader, size int64, c store.Condition) (store.Info, error) {
	seeker, ok := body.(io.Seeker)
	if !ok {
		return r.Store.Put(ctx, key, body, size, c)
	}
	start, err := seeker.Seek(0, io.SeekCurrent)
	if err != nil {
		return r.Store.Put(ctx, key, body, size, c)
	}
	var info store.Info
	err = r.retry(ctx, "put "+key, func() error {
		if _, serr := seeker.Seek(start, io.SeekStart); serr != nil {
			return serr
		}
		var perr error
		info, perr = r.Store.Put(ctx, key, body, size, c)
		return perr
	})
	return info, err
}

// Delete retries a refused delete.
func (r refusalRetry) Delete(ctx context.Context, key string) error {
	return r.retry(ctx, "delete "+key, func() error { return r.Store.Delete(ctx, key) })
}

// DeleteMany retries a refused batch delete (deleting twice is harmless).
func (r refusalRetry) DeleteMany(ctx context.Context, keys []string) error {
	return r.retry(ctx, "delete_many", func() error { return r.Store.DeleteMany(ctx, keys) })
}
