package probe

import (
	"errors"
	"io"
)

// syntheticBody is an immutable body of size bytes: head, then zeros. It
// is a reader, a ReaderAt and a Seeker, so a store client can resend it
// on a retry without buffering it.
type syntheticBody struct {
	head []byte
	size int64
	off  int64
}

// ReadAt implements io.ReaderAt.
func (b *syntheticBody) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("synthetic body: negative offset")
	}
	if off >= b.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), b.size-off))
	c := 0
	if off < int64(len(b.head)) {
		c = copy(p[:n], b.head[off:])
	}
	clear(p[c:n])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Read implements io.Reader.
func (b *syntheticBody) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n, err := b.ReadAt(p, b.off)
	b.off += int64(n)
	if n > 0 {
		return n, nil
	}
	return 0, err
}

// Seek implements io.Seeker.
func (b *syntheticBody) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += b.off
	case io.SeekEnd:
		offset += b.size
	default:
		return 0, errors.New("synthetic body: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("synthetic body: negative position")
	}
	b.off = offset
	return offset, nil
}
