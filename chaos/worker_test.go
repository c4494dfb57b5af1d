package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/runner/runnertest"
)

// workerEnv hands a workerSpec to a re-executed test binary.
const workerEnv = "MMSIDECAR_CHAOS_WORKER"

// hop is one queue a worker runs and the queue its successors go to ("" =
// the entry is finished there).
type hop struct {
	Queue string `json:"queue"`
	Next  string `json:"next"`
}

// workerSpec describes one node's Mailman runners. Unlike
// runnertest.Worker it works at a set rate, so that backlogs build up, and
// it stamps each ledger line with the time and the file it processed.
type workerSpec struct {
	QueueDir string `json:"queue_dir"`
	Node     string `json:"node"`
	Ledger   string `json:"ledger"`
	Hops     []hop  `json:"hops"`
	// Work is the time one entry spends in flight (as .bak), per hop:
	// each hop runs at most 1/Work entries per second.
	Work time.Duration `json:"work"`
	// Poll is Mailman's sleep_time: the pause between listings.
	Poll time.Duration `json:"poll"`
	// Recover renames every .bak back to .pck at start, as every Mailman
	// runner does when it starts.
	Recover bool `json:"recover"`
	UID     int  `json:"uid"`
	GID     int  `json:"gid"`
}

// g4Marker starts the worker's report of a .bak that vanished while the
// runner had it in flight: something other than the runner moved it.
const g4Marker = "G4 VIOLATION: in-flight file vanished"

// ledgerLine formats one processed entry: "<queue>/<id> <node> <unix ns>
// <file base>".
func ledgerLine(queue, id, node string, at time.Time, base string) string {
	return fmt.Sprintf("%s/%s %s %d %s\n", queue, id, node, at.UnixNano(), base)
}

// maybeRunWorker runs a worker process and exits when workerEnv is set.
func maybeRunWorker() {
	js := os.Getenv(workerEnv)
	if js == "" {
		return
	}
	var spec workerSpec
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "chaos worker: bad spec: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := runWorker(ctx, spec); err != nil {
		fmt.Fprintf(os.Stderr, "chaos worker %s: %v\n", spec.Node, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runWorker runs one goroutine per hop, like Mailman's one runner process
// per queue, until ctx ends or one of them fails.
func runWorker(ctx context.Context, spec workerSpec) error {
	if spec.Recover {
		for _, h := range spec.Hops {
			if err := recoverBak(filepath.Join(spec.QueueDir, h.Queue)); err != nil {
				return err
			}
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(spec.Hops))
	for _, h := range spec.Hops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := runHop(ctx, spec, h); err != nil {
				errs <- fmt.Errorf("queue %s: %w", h.Queue, err)
				cancel()
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// recoverBak is Mailman's start-up recovery: every .bak goes back to .pck.
func recoverBak(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	for _, de := range ents {
		base, ext, ok := fence.ParseFileName(de.Name())
		if !ok || ext != fence.ExtBak {
			continue
		}
		if err := os.Rename(filepath.Join(dir, de.Name()), filepath.Join(dir, base+".pck")); err != nil {
			return fmt.Errorf("recover: %w", err)
		}
		fmt.Fprintf(os.Stderr, "chaos worker: recovered %s/%s.bak\n", filepath.Base(dir), base)
	}
	return nil
}

func runHop(ctx context.Context, spec workerSpec, h hop) error {
	for {
		if err := stepHop(ctx, spec, h); err != nil {
			return err
		}
		t := time.NewTimer(spec.Poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// stepHop lists the queue once and processes the listed .pck files in time
// order, the whole batch, as a Mailman runner's _one_iteration does.
func stepHop(ctx context.Context, spec workerSpec, h hop) error {
	dir := filepath.Join(spec.QueueDir, h.Queue)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	type item struct {
		base string
		t    float64
	}
	var items []item
	for _, de := range ents {
		if base, ext, ok := fence.ParseFileName(de.Name()); ok && ext == fence.ExtPck {
			items = append(items, item{base, fence.BaseTime(base)})
		}
	}
	sort.Slice(items, func(i, j int) bool {
		if items[i].t != items[j].t {
			return items[i].t < items[j].t
		}
		return items[i].base < items[j].base
	})
	for _, it := range items {
		if ctx.Err() != nil {
			return nil
		}
		if err := processOne(ctx, spec, h, it.base); err != nil {
			return err
		}
	}
	return nil
}

// processOne dequeues one entry (.pck -> .bak), records it in the ledger,
// works on it for spec.Work, writes its successor and unlinks the .bak. A
// file that vanished since the listing is skipped, as Mailman does.
func processOne(ctx context.Context, spec workerSpec, h hop, base string) error {
	dir := filepath.Join(spec.QueueDir, h.Queue)
	bak := filepath.Join(dir, base+".bak")
	if err := os.Rename(filepath.Join(dir, base+".pck"), bak); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	body, err := os.ReadFile(bak)
	if errors.Is(err, fs.ErrNotExist) {
		// Mailman logs a failed dequeue and goes on; nobody but the
		// runner may touch a .bak (G4).
		fmt.Fprintf(os.Stderr, "%s: %s/%s.bak (before reading it)\n", g4Marker, h.Queue, base)
		return nil
	}
	if err != nil {
		return err
	}
	id := runnertest.BodyID(body)
	if id == "" {
		return fmt.Errorf("%s/%s.bak carries no id", h.Queue, base)
	}
	if err := runnertest.AppendLedger(spec.Ledger, ledgerLine(h.Queue, id, spec.Node, time.Now(), base)); err != nil {
		return err
	}
	if spec.Work > 0 {
		t := time.NewTimer(spec.Work)
		select {
		case <-ctx.Done():
			// Stopped mid-flight: the .bak stays, as when Mailman stops.
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	if h.Next != "" {
		nb := runnertest.NewBase(time.Now(), body)
		owner := &runnertest.Owner{UID: spec.UID, GID: spec.GID}
		if err := runnertest.WriteEntry(filepath.Join(spec.QueueDir, h.Next), nb, body, owner); err != nil {
			return err
		}
	}
	if err := os.Remove(bak); errors.Is(err, fs.ErrNotExist) {
		// Mailman's finish() logs this and goes on.
		fmt.Fprintf(os.Stderr, "%s: %s/%s.bak (at finish; id %s)\n", g4Marker, h.Queue, base, id)
	} else if err != nil {
		return err
	}
	return nil
}

// ledgerEntry is one parsed ledger line.
type ledgerEntry struct {
	Queue, ID, Node, Base string
	At                    time.Time
}

// readLedger parses a ledger file; a last line without its newline (being
// written) is left for the next read.
func readLedger(path string) ([]ledgerEntry, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if i := strings.LastIndexByte(string(data), '\n'); i >= 0 {
		data = data[:i+1]
	} else {
		data = nil
	}
	var out []ledgerEntry
	for n, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 4 {
			return nil, fmt.Errorf("%s:%d: malformed line %q", path, n+1, line)
		}
		queue, id, ok := strings.Cut(f[0], "/")
		ns, err := strconv.ParseInt(f[2], 10, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("%s:%d: malformed line %q", path, n+1, line)
		}
		out = append(out, ledgerEntry{Queue: queue, ID: id, Node: f[1], Base: f[3], At: time.Unix(0, ns)})
	}
	return out, nil
}
