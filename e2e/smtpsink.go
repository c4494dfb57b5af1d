//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/mail"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// Transaction is one SMTP transaction the sink accepted: one DATA with
// its envelope.
type Transaction struct {
	From       string    // envelope sender (MAIL FROM)
	Rcpts      []string  // envelope recipients (RCPT TO), lower-cased
	MessageID  string    // Message-ID header, angle brackets stripped
	Subject    string    // Subject header
	Size       int       // bytes of DATA
	ReceivedAt time.Time // when DATA completed
}

// deliveryKey identifies one delivery: a message to one recipient.
type deliveryKey struct {
	msgID string
	rcpt  string
}

// SMTPSink is an SMTP server on 127.0.0.1 that accepts every message and
// records, per transaction, the envelope recipients and the Message-ID.
// It is safe for concurrent use.
type SMTPSink struct {
	srv *smtp.Server
	ln  net.Listener

	mu       sync.Mutex
	txs      []Transaction
	counts   map[deliveryKey]int
	changed  chan struct{} // closed and replaced on every new transaction
	serveErr chan error
}

// StartSMTPSink listens on 127.0.0.1:0 and serves until Close.
func StartSMTPSink() (*SMTPSink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen smtp sink: %w", err)
	}
	s := &SMTPSink{
		ln:       ln,
		counts:   make(map[deliveryKey]int),
		changed:  make(chan struct{}),
		serveErr: make(chan error, 1),
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &sinkSession{sink: s}, nil
	}))
	srv.Domain = "sink.localhost"
	srv.ReadTimeout = time.Minute
	srv.WriteTimeout = time.Minute
	srv.MaxMessageBytes = 10 << 20
	srv.MaxRecipients = 0
	srv.ErrorLog = discardLogger{}
	s.srv = srv
	go func() { s.serveErr <- srv.Serve(ln) }()
	return s, nil
}

// Addr is the sink's host:port.
func (s *SMTPSink) Addr() string { return s.ln.Addr().String() }

// Port is the sink's TCP port.
func (s *SMTPSink) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Close stops the server and closes open connections.
func (s *SMTPSink) Close() error {
	err := s.srv.Close()
	<-s.serveErr
	if err != nil {
		return fmt.Errorf("close smtp sink: %w", err)
	}
	return nil
}

func (s *SMTPSink) record(tx Transaction) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.txs = append(s.txs, tx)
	for _, r := range tx.Rcpts {
		s.counts[deliveryKey{tx.MessageID, r}]++
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// Transactions returns a copy of every transaction recorded so far, in
// arrival order.
func (s *SMTPSink) Transactions() []Transaction {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Transaction, len(s.txs))
	for i, tx := range s.txs {
		tx.Rcpts = append([]string(nil), tx.Rcpts...)
		out[i] = tx
	}
	return out
}

// Deliveries is how many times msgID was delivered to rcpt.
func (s *SMTPSink) Deliveries(msgID, rcpt string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[deliveryKey{trimAngle(msgID), strings.ToLower(rcpt)}]
}

// TotalDeliveries is the number of (message, recipient) deliveries
// recorded, duplicates included.
func (s *SMTPSink) TotalDeliveries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.counts {
		n += c
	}
	return n
}

// Tally compares the deliveries of a set of messages with the expected
// product msgIDs × rcpts. Deliveries of other messages are ignored.
type Tally struct {
	Expected   int      // len(msgIDs) * len(rcpts)
	Delivered  int      // expected pairs delivered at least once
	Lost       int      // expected pairs never delivered
	Duplicated int      // extra deliveries of expected pairs (count-1 summed)
	DupPairs   int      // expected pairs delivered more than once
	Unexpected int      // deliveries of these messages to other recipients
	Missing    []string // up to 10 "msgid -> rcpt" pairs never delivered
}

// Complete reports whether every expected pair was delivered exactly once
// and the messages went nowhere else.
func (t Tally) Complete() bool {
	return t.Lost == 0 && t.Duplicated == 0 && t.Unexpected == 0
}

// String renders the tally on one line.
func (t Tally) String() string {
	return fmt.Sprintf("expected=%d delivered=%d lost=%d duplicated=%d (pairs %d) unexpected=%d",
		t.Expected, t.Delivered, t.Lost, t.Duplicated, t.DupPairs, t.Unexpected)
}

// Tally counts the deliveries of msgIDs against msgIDs × rcpts.
func (s *SMTPSink) Tally(msgIDs, rcpts []string) Tally {
	ids := make(map[string]bool, len(msgIDs))
	for _, m := range msgIDs {
		ids[trimAngle(m)] = true
	}
	want := make(map[deliveryKey]bool, len(ids)*len(rcpts))
	for m := range ids {
		for _, r := range rcpts {
			want[deliveryKey{m, strings.ToLower(r)}] = true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := Tally{Expected: len(want)}
	for k, c := range s.counts {
		if !ids[k.msgID] {
			continue
		}
		if !want[k] {
			t.Unexpected += c
			continue
		}
		t.Delivered++
		if c > 1 {
			t.Duplicated += c - 1
			t.DupPairs++
		}
	}
	t.Lost = t.Expected - t.Delivered
	if t.Lost > 0 {
		var miss []string
		for k := range want {
			if s.counts[k] == 0 {
				miss = append(miss, k.msgID+" -> "+k.rcpt)
			}
		}
		sort.Strings(miss)
		if len(miss) > 10 {
			miss = miss[:10]
		}
		t.Missing = miss
	}
	return t
}

// WaitFor polls cond on every new transaction (and at least every
// second) until it returns true or ctx ends.
func (s *SMTPSink) WaitFor(ctx context.Context, cond func() bool) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for sink condition: %w", ctx.Err())
		case <-ch:
		case <-tick.C:
		}
	}
}

// sinkSession collects one SMTP session's envelope.
type sinkSession struct {
	sink  *SMTPSink
	from  string
	rcpts []string
}

func (ss *sinkSession) Reset() {
	ss.from = ""
	ss.rcpts = nil
}

func (ss *sinkSession) Logout() error { return nil }

func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	ss.from = from
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.rcpts = append(ss.rcpts, strings.ToLower(to))
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	cr := &countingReader{r: r}
	tx := Transaction{From: ss.from, Rcpts: append([]string(nil), ss.rcpts...)}
	if msg, err := mail.ReadMessage(bufio.NewReader(cr)); err == nil {
		tx.MessageID = trimAngle(msg.Header.Get("Message-Id"))
		tx.Subject = msg.Header.Get("Subject")
	}
	// The body must be consumed before Data returns.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return fmt.Errorf("read data: %w", err)
	}
	tx.Size = cr.n
	tx.ReceivedAt = time.Now()
	ss.sink.record(tx)
	return nil
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func trimAngle(id string) string {
	return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(id), "<"), ">")
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...interface{}) {}
func (discardLogger) Println(...interface{})        {}
