//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// Post is one message to inject into a list.
type Post struct {
	From      string // header and envelope sender
	List      string // posting address of the list (envelope and To)
	Subject   string
	MessageID string // without angle brackets; NewMessageID makes one
	Body      string
}

// NewMessageID returns a unique Message-ID (without angle brackets) whose
// local part starts with tag, e.g. "steady-0007.1a2b3c4d5e6f@e2e.test".
func NewMessageID(tag string) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return fmt.Sprintf("%s.%s@e2e.test", tag, hex.EncodeToString(b[:]))
}

// Bytes renders the post as an RFC 5322 message with CRLF line ends.
func (p Post) Bytes() []byte {
	var sb strings.Builder
	h := func(k, v string) { sb.WriteString(k + ": " + v + "\r\n") }
	h("From", p.From)
	h("To", p.List)
	h("Subject", p.Subject)
	h("Message-ID", "<"+p.MessageID+">")
	h("Date", time.Now().UTC().Format(time.RFC1123Z))
	h("MIME-Version", "1.0")
	h("Content-Type", "text/plain; charset=us-ascii")
	sb.WriteString("\r\n")
	for _, line := range strings.Split(strings.TrimRight(p.Body, "\n"), "\n") {
		sb.WriteString(strings.TrimRight(line, "\r") + "\r\n")
	}
	return []byte(sb.String())
}

// InjectLMTP delivers post to the Mailman LMTP runner at addr (host:port)
// in its own LMTP session. It returns once Mailman has accepted the message,
// i.e. once the LMTP runner has written it into the node's "in" queue.
func InjectLMTP(ctx context.Context, addr string, post Post) error {
	c, err := DialLMTP(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Send(ctx, post); err != nil {
		return err
	}
	if err := c.Close(); err != nil {
		return fmt.Errorf("lmtp quit: %w", err)
	}
	return nil
}

// LMTPClient is one LMTP session to a Mailman node; it can carry several
// posts in a row. It is not safe for concurrent use.
type LMTPClient struct {
	conn   net.Conn
	c      *smtp.Client
	closed bool
}

// DialLMTP opens an LMTP session to addr and greets it.
func DialLMTP(ctx context.Context, addr string) (*LMTPClient, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial lmtp %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	c := smtp.NewClientLMTP(conn)
	if err := c.Hello("e2e.test"); err != nil {
		conn.Close()
		return nil, fmt.Errorf("lmtp lhlo %s: %w", addr, err)
	}
	return &LMTPClient{conn: conn, c: c}, nil
}

// Send delivers one post in the open session.
func (l *LMTPClient) Send(ctx context.Context, post Post) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = l.conn.SetDeadline(dl)
	}
	if err := l.c.Mail(post.From, nil); err != nil {
		return fmt.Errorf("lmtp mail from %s: %w", post.From, err)
	}
	if err := l.c.Rcpt(post.List, nil); err != nil {
		return fmt.Errorf("lmtp rcpt to %s: %w", post.List, err)
	}
	w, err := l.c.Data()
	if err != nil {
		return fmt.Errorf("lmtp data: %w", err)
	}
	if _, err := w.Write(post.Bytes()); err != nil {
		return fmt.Errorf("lmtp write body: %w", err)
	}
	if _, err := w.CloseWithLMTPResponse(); err != nil {
		return fmt.Errorf("lmtp deliver %s: %w", post.MessageID, err)
	}
	return nil
}

// Close ends the session (QUIT) and closes the connection.
func (l *LMTPClient) Close() error {
	if l.closed {
		return nil
	}
	l.closed = true
	err := l.c.Quit()
	l.conn.Close()
	return err
}
