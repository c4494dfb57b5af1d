package storetest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// SeaweedFSVersion is the module version of the SeaweedFS server the
// tests run: it has conditional PUT and conditional DELETE
// (seaweedfs#8802). Its go.mod has replace directives, so `go install`
// refuses it: scripts/test.sh builds ./weed inside a copy of the module.
const SeaweedFSVersion = "github.com/seaweedfs/seaweedfs@v0.0.0-20261109003541-7506e5f91cd6"

// EnvWeedBin names the weed binary (SeaweedFS's one server binary).
const EnvWeedBin = "MMSIDECAR_WEED_BIN"

// Settings every SeaweedFS of the harness runs with (docs: "Choosing a
// store"). Each bucket is a collection of its own whose volumes grow on
// its first write; -max=0 lets a volume server hold as many volumes as
// its disk has room for at weedVolumeMB each, so that the dozens of
// buckets a test run creates never meet "No free volumes left".
const (
	weedVolumeMB = 100
	// weedReplication is the distributed form's replica placement: one
	// more copy on another server of the same rack, so one volume server
	// can die.
	weedReplication = "001"
)

// WeedServer is one process of a SeaweedFS the harness runs: a master,
// a volume server, a filer, an S3 gateway, or `weed server` doing all
// four. Tests stop and start it to play faults.
type WeedServer struct {
	// Role is "master", "volume", "filer", "s3" or "server".
	Role string
	// Addr is host:port of its HTTP listener (the S3 API for a gateway
	// and for "server"); its gRPC port is that port + 10000.
	Addr string

	t     testing.TB
	proc  process
	ready func(exited <-chan struct{}) error
}

// Kill sends SIGKILL and waits for the process to exit.
func (w *WeedServer) Kill() { w.proc.kill() }

// Stop sends SIGTERM and waits for the process to exit (SIGKILL after 30 s).
func (w *WeedServer) Stop() {
	if err := w.proc.stop(); err != nil {
		w.t.Fatal(err)
	}
}

// Start starts a stopped or killed process on the same ports and data and
// waits until it serves.
func (w *WeedServer) Start() {
	if err := w.start(); err != nil {
		w.t.Fatal(err)
	}
}

// PID returns the process id, or 0 when it is not running.
func (w *WeedServer) PID() int { return w.proc.pid() }

// start launches the process and waits for its readiness check.
func (w *WeedServer) start() error {
	exited, err := w.proc.launch()
	if err != nil {
		return err
	}
	if err := w.ready(exited); err != nil {
		w.proc.kill()
		return fmt.Errorf("%s (%s %s) did not come up: %w\n--- %s ---\n%s", w.proc.name, w.proc.bin,
			strings.Join(w.proc.args, " "), err, w.proc.logPath, tail(w.proc.logPath))
	}
	return nil
}

// FindWeed locates the weed binary: $MMSIDECAR_WEED_BIN, then
// $HOME/.cache/mmsidecar/bin/weed, then the PATH; or says how to get it.
func FindWeed() (string, error) {
	if p, err := findBinary(EnvWeedBin, "weed"); p != "" || err != nil {
		return p, err
	}
	return "", fmt.Errorf("SeaweedFS binary weed not found (tried $%s, $HOME/.cache/mmsidecar/bin/weed, PATH): "+
		"run scripts/test.sh, which builds %s into $HOME/.cache/mmsidecar/bin; set %s=off to skip real-store tests",
		EnvWeedBin, SeaweedFSVersion, EnvTestMinIO)
}

// weedPortLimit: every weed server also listens on its port + 10000 for
// gRPC, and one given a port above 55535 crashes at start.
const weedPortLimit = 55535

// weedPortRange is where WeedPort picks: ports whose gRPC companion is
// also below the kernel's ephemeral range (ip_local_port_range), so that
// no outgoing connection of another process can take either between the
// check and the server's start (seen: "bind: address already in use" on
// a gateway's gRPC port).
func weedPortRange() (lo, hi int) {
	lo, hi = 10000, weedPortLimit
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	var first, last int
	if _, err := fmt.Sscan(string(b), &first, &last); err != nil {
		return lo, hi
	}
	if first-10000 > lo+1000 {
		return lo, first - 10000
	}
	return lo, hi
}

// WeedPort returns a 127.0.0.1 port below 55535 that was free a moment
// ago, with its gRPC companion (port + 10000) free too, both below the
// ephemeral port range where it can, and that it has not returned
// before in this process.
func WeedPort() (int, error) {
	lo, hi := weedPortRange()
	for range 200 {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(hi-lo)))
		if err != nil {
			return 0, err
		}
		port := lo + int(n.Int64())
		if !portFree(port) || !portFree(port+10000) {
			continue
		}
		handedOut.Lock()
		seen := handedOut.ports[port] || handedOut.ports[port+10000]
		handedOut.ports[port], handedOut.ports[port+10000] = true, true
		handedOut.Unlock()
		if !seen {
			return port, nil
		}
	}
	return 0, errors.New("no free port pair (p, p+10000) below 55535")
}

// portFree reports whether a listener can bind 127.0.0.1:port now.
func portFree(port int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// weedPorts returns n ports of WeedPort.
func weedPorts(n int) ([]int, error) {
	out := make([]int, n)
	for i := range out {
		p, err := WeedPort()
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

// writeIdentities writes the S3 gateway's identities file: one identity
// with every action, holding the given keys.
func writeIdentities(path, accessKey, secretKey string) error {
	doc := map[string]any{"identities": []any{map[string]any{
		"name":        "mmsidecar",
		"credentials": []any{map[string]string{"accessKey": accessKey, "secretKey": secretKey}},
		"actions":     []string{"Admin", "Read", "List", "Tagging", "Write"},
	}}}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// waitHTTP polls url until it answers with a status below 500, exited
// closes, or the deadline passes: the readiness of a master, volume
// server or filer (an S3 gateway's is waitS3Ready).
func waitHTTP(url string, exited <-chan struct{}, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return pollReady(exited, timeout, 100*time.Millisecond, func(ctx context.Context) (error, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			return nil, fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil, nil
	})
}

// weedArgs is the start of every weed command line: the role's
// subcommand, bound to 127.0.0.1.
func weedArgs(sub string, extra ...string) []string {
	return append([]string{sub, "-ip=127.0.0.1", "-ip.bind=127.0.0.1"}, extra...)
}
