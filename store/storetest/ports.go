package storetest

import (
	"errors"
	"net"
	"sync"
)

// handedOut holds the ports FreePort gave out in this process: the
// kernel can give a port that was just closed to the next listener on
// :0, so two servers of one test could otherwise be given the same one
// ("address already in use", seen in CI).
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: make(map[int]bool)}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that it has not returned before in this process.
func FreePort() (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		handedOut.Lock()
		seen := handedOut.ports[port]
		handedOut.ports[port] = true
		handedOut.Unlock()
		if !seen {
			return port, nil
		}
	}
	return 0, errors.New("no free port that was not handed out already")
}
