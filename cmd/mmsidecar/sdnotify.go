package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// notifier speaks systemd's notification protocol (sd_notify(3)): one
// datagram of newline-separated VAR=value assignments to the unix socket
// named by NOTIFY_SOCKET. With Type=notify the unit's start job ends at
// READY=1, so mailman3, ordered after the sidecar, starts on a ready node.
// Outside systemd (no NOTIFY_SOCKET) it is nil and sends nothing.
type notifier struct {
	addr *net.UnixAddr
}

// newNotifier returns the notifier for NOTIFY_SOCKET, or nil.
func newNotifier() *notifier {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		// An abstract socket: its name starts with a NUL byte.
		path = "\x00" + path[1:]
	}
	return &notifier{addr: &net.UnixAddr{Name: path, Net: "unixgram"}}
}

// send sends one message, e.g. "READY=1\nSTATUS=ready". A nil notifier
// sends nothing.
func (n *notifier) send(msg string) error {
	if n == nil {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(msg)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// watchdogInterval is WatchdogSec= as systemd passes it (WATCHDOG_USEC,
// for this process when WATCHDOG_PID is set).
func watchdogInterval() (time.Duration, bool) {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0, false
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0, false
	}
	return time.Duration(usec) * time.Microsecond, true
}
