package s3store

import (
	"context"
	"errors"
	"io"
	"time"
)

// errRequestTimeout is the cause a watchdog cancels its context with.
var errRequestTimeout = errors.New("request timed out")

// watchdog bounds one store call: it cancels its context when the call
// has made no progress for its limit. A call without a body gets the limit
// once; a body read or written resets it, so a large transfer that keeps
// moving is never cut off, and a server that stops answering (stopped,
// SIGSTOPped, a dead network) is noticed within the limit.
type watchdog struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	timer  *time.Timer
	limit  time.Duration
}

// newWatchdog starts a watchdog on a child of parent.
func newWatchdog(parent context.Context, limit time.Duration) *watchdog {
	ctx, cancel := context.WithCancelCause(parent)
	w := &watchdog{ctx: ctx, cancel: cancel, limit: limit}
	w.timer = time.AfterFunc(limit, func() { cancel(errRequestTimeout) })
	return w
}

// kick restarts the limit: the call made progress.
func (w *watchdog) kick() { w.timer.Reset(w.limit) }

// pause stops the clock while the caller, not the server, is working.
func (w *watchdog) pause() { w.timer.Stop() }

// timedOut reports whether the watchdog, not the caller, ended the call.
func (w *watchdog) timedOut() bool {
	return errors.Is(context.Cause(w.ctx), errRequestTimeout)
}

// stop releases the watchdog and cancels its context.
func (w *watchdog) stop() {
	w.timer.Stop()
	w.cancel(context.Canceled)
}

// kickReader resets a watchdog on every read that makes progress; minio-go
// reads a PUT body as the connection accepts it.
type kickReader struct {
	r io.Reader
	w *watchdog
}

func (k *kickReader) Read(p []byte) (int, error) {
	n, err := k.r.Read(p)
	if n > 0 {
		k.w.kick()
	}
	return n, err
}

// kickReadSeeker is a kickReader that keeps the body seekable, so minio-go
// may retry the request.
type kickReadSeeker struct {
	kickReader
	s io.Seeker
}

func (k *kickReadSeeker) Seek(offset int64, whence int) (int64, error) {
	return k.s.Seek(offset, whence)
}

// watchBody wraps a PUT body of size bytes so reading it kicks w. A body
// that can seek and read at offsets is cut to a section starting at its
// current offset, so minio-go's retries rewind to the right place.
func watchBody(body io.Reader, size int64, w *watchdog) (io.Reader, error) {
	ra, okRA := body.(io.ReaderAt)
	s, okS := body.(io.Seeker)
	if okRA && okS && size >= 0 {
		off, err := s.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		sec := io.NewSectionReader(ra, off, size)
		return &kickReadSeeker{kickReader: kickReader{r: sec, w: w}, s: sec}, nil
	}
	return &kickReader{r: body, w: w}, nil
}

// getBody is a GET response body whose reads are bounded by a watchdog:
// the clock runs only while a Read waits on the server, so a slow caller
// is never cut off. Close releases the request.
type getBody struct {
	rc  io.ReadCloser
	w   *watchdog
	key string
}

func (g *getBody) Read(p []byte) (int, error) {
	g.w.kick()
	n, err := g.rc.Read(p)
	g.w.pause()
	if err != nil && !errors.Is(err, io.EOF) {
		return n, classify("get", g.key, err, g.w)
	}
	return n, err
}

func (g *getBody) Close() error {
	err := g.rc.Close()
	g.w.stop()
	return err
}
