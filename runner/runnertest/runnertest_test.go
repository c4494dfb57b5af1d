package runnertest

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

func TestMain(m *testing.M) {
	MaybeRunWorker()
	os.Exit(m.Run())
}

func queueRoot(t *testing.T) string {
	root := t.TempDir()
	for _, q := range []string{"in", "out", "bad"} {
		if err := os.MkdirAll(filepath.Join(root, q), 0o770); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// names lists a queue directory.
func names(t *testing.T, dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestNewBaseIsValid(t *testing.T) {
	for _, when := range []time.Time{time.Unix(1764330000, 0), time.Unix(1764330000, 123456000), time.Now()} {
		b := NewBase(when, []byte("x"))
		if !fence.ValidBase(b) {
			t.Errorf("NewBase(%v) = %q: not a valid base", when, b)
		}
		if got := fence.BaseTime(b); got < float64(when.Unix())-1 || got > float64(when.Unix())+1 {
			t.Errorf("BaseTime(%q) = %v", b, got)
		}
	}
	if NewBase(time.Unix(1, 0), nil) == NewBase(time.Unix(1, 0), nil) {
		t.Error("two bases alike")
	}
}

func TestProducerAndWorkers(t *testing.T) {
	root := queueRoot(t)
	ledger := filepath.Join(root, "ledger")
	var mu sync.Mutex
	var events []Event
	record := func(ev Event) { mu.Lock(); events = append(events, ev); mu.Unlock() }
	p := &Producer{Dir: filepath.Join(root, "in"), Count: 20, IDPrefix: "e", OnCreate: func(base, id string, at time.Time) {
		record(Event{Kind: Created, Queue: "in", Base: base, Ext: "pck", ID: id, At: at})
	}}
	n, err := p.Run(context.Background())
	if err != nil || n != 20 {
		t.Fatalf("produced %d: %v", n, err)
	}
	for _, name := range names(t, filepath.Join(root, "in")) {
		if _, ext, ok := fence.ParseFileName(name); !ok || ext != fence.ExtPck {
			t.Errorf("producer left %q", name)
		}
	}
	ctx := context.Background()
	w1 := &Worker{QueueDir: root, Queue: "in", Next: "out", Node: "a", Ledger: ledger, PreserveEvery: 5, OnEvent: record}
	w2 := &Worker{QueueDir: root, Queue: "out", Node: "a", Ledger: ledger, OnEvent: record}
	if n, err := w1.Step(ctx); err != nil || n != 20 {
		t.Fatalf("in: processed %d: %v", n, err)
	}
	if got := len(names(t, filepath.Join(root, "bad"))); got != 4 {
		t.Errorf("%d preserved, want 4", got)
	}
	if n, err := w2.Step(ctx); err != nil || n != 16 {
		t.Fatalf("out: processed %d: %v", n, err)
	}
	if got := names(t, filepath.Join(root, "in")); len(got) != 0 {
		t.Errorf("in not empty: %v", got)
	}
	if got := names(t, filepath.Join(root, "out")); len(got) != 0 {
		t.Errorf("out not empty: %v", got)
	}
	data, err := os.ReadFile(ledger)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 36 || lines[0] != "in/e0 a" {
		t.Errorf("ledger has %d lines, first %q", len(lines), lines[0])
	}
	// FIFO: the in worker dequeued in production order.
	var order []string
	for _, ev := range events {
		if ev.Kind == Dequeued && ev.Queue == "in" {
			order = append(order, ev.ID)
		}
	}
	for i, id := range order {
		if id != "e"+strconv.Itoa(i) {
			t.Fatalf("dequeue order %v", order)
		}
	}
	// Every successor exists before its predecessor is removed; a
	// preserved entry moves into bad instead.
	created := map[string]time.Time{}
	for _, ev := range events {
		if ev.Kind == Created {
			created[ev.Queue+"/"+ev.ID] = ev.At
		}
	}
	for _, ev := range events {
		if ev.Kind != Removing || ev.Queue != "in" {
			continue
		}
		succ, ok := created["out/"+ev.ID]
		_, preserved := created["bad/"+ev.ID]
		if ok && succ.After(ev.At) || !ok && !preserved {
			t.Errorf("%s removed from in before its successor existed", ev.ID)
		}
	}
}

func TestWorkerProcess(t *testing.T) {
	root := queueRoot(t)
	ledger := filepath.Join(root, "ledger")
	cmd, err := WorkerCommand(WorkerSpec{QueueDir: root, Node: "b", Ledger: ledger, Hops: []Hop{
		{Queue: "in", Next: "out", Poll: 10 * time.Millisecond},
		{Queue: "out", Poll: 10 * time.Millisecond},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	p := &Producer{Dir: filepath.Join(root, "in"), Count: 10, IDPrefix: "p"}
	if _, err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	var lines []string
	for {
		data, _ := os.ReadFile(ledger)
		lines = strings.Fields(strings.ReplaceAll(string(data), " b\n", "\n"))
		if len(lines) == 20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	sort.Strings(lines)
	if len(lines) != 20 || lines[0] != "in/p0" || lines[19] != "out/p9" {
		t.Fatalf("ledger: %v", lines)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("worker process: %v", err)
	}
}
