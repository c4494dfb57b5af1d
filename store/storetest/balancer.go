package storetest

import (
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// balancer is a TCP load balancer on a free 127.0.0.1 port: each accepted
// connection goes to the next backend, round robin, skipping backends that
// refuse it. TLS passes through untouched.
type balancer struct {
	ln net.Listener

	mu       sync.Mutex
	backends []string
	next     int
	conns    map[net.Conn]struct{}
	closed   bool
}

func newBalancer() (*balancer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("cluster balancer: %w", err)
	}
	b := &balancer{ln: ln, conns: make(map[net.Conn]struct{})}
	go b.serve()
	return b, nil
}

func (b *balancer) addr() string { return b.ln.Addr().String() }

func (b *balancer) setBackends(addrs []string) {
	b.mu.Lock()
	b.backends = append([]string(nil), addrs...)
	b.mu.Unlock()
}

func (b *balancer) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		go b.forward(c)
	}
}

// forward connects c to a backend and copies both ways until either side
// closes.
func (b *balancer) forward(c net.Conn) {
	b.mu.Lock()
	order := make([]string, len(b.backends))
	for i := range b.backends {
		order[i] = b.backends[(b.next+i)%len(b.backends)]
	}
	b.next++
	b.mu.Unlock()
	var up net.Conn
	for _, addr := range order {
		var err error
		if up, err = net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			break
		}
	}
	if up == nil {
		c.Close()
		return
	}
	if !b.track(c, up) {
		c.Close()
		up.Close()
		return
	}
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		dst.Close()
		src.Close()
	}
	wg.Add(2)
	go pipe(up, c)
	go pipe(c, up)
	wg.Wait()
	b.mu.Lock()
	delete(b.conns, c)
	delete(b.conns, up)
	b.mu.Unlock()
}

// track registers a forwarded pair, unless the balancer is closed.
func (b *balancer) track(conns ...net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	for _, c := range conns {
		b.conns[c] = struct{}{}
	}
	return true
}

// close stops accepting and drops every forwarded connection.
func (b *balancer) close() {
	b.ln.Close()
	b.mu.Lock()
	b.closed = true
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
}
