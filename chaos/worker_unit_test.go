package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/runner/runnertest"
)

func TestWorkerHops(t *testing.T) {
	root := t.TempDir()
	for _, q := range queues {
		if err := os.MkdirAll(filepath.Join(root, q), 0o770); err != nil {
			t.Fatal(err)
		}
	}
	in := filepath.Join(root, "in")
	var bases []string
	for i, id := range []string{"m0", "m1", "m2"} {
		body := runnertest.Body(id, 64)
		base := runnertest.NewBase(time.Unix(1_800_000_000+int64(i), 0), body)
		if err := runnertest.WriteEntry(in, base, body, nil); err != nil {
			t.Fatal(err)
		}
		bases = append(bases, base)
	}
	// m1 is in flight from a runner that died: recovery re-runs it.
	if err := os.Rename(filepath.Join(in, bases[1]+".pck"), filepath.Join(in, bases[1]+".bak")); err != nil {
		t.Fatal(err)
	}
	spec := workerSpec{QueueDir: root, Node: "a", Ledger: filepath.Join(root, "ledger"), Hops: hops,
		Work: time.Millisecond, Poll: 5 * time.Millisecond, Recover: true, UID: os.Getuid(), GID: os.Getgid()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- runWorker(ctx, spec) }()
	var got []ledgerEntry
	empty := func() bool {
		for _, q := range queues {
			if ents, _ := os.ReadDir(filepath.Join(root, q)); len(ents) != 0 {
				return false
			}
		}
		return true
	}
	err := waitFor(10*time.Second, 5*time.Millisecond, func() (bool, string) {
		var err error
		got, err = readLedger(spec.Ledger)
		e := empty()
		return err == nil && len(got) == 9 && e, "ledger lines: " + itoa(len(got)) + ", queues empty: " + fmt.Sprint(e)
	})
	cancel()
	if werr := <-done; werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range got {
		keys = append(keys, e.Queue+"/"+e.ID)
		if e.Node != "a" {
			t.Errorf("line %+v names node %q", e, e.Node)
		}
	}
	sort.Strings(keys)
	want := []string{"in/m0", "in/m1", "in/m2", "out/m0", "out/m1", "out/m2", "pipeline/m0", "pipeline/m1", "pipeline/m2"}
	if len(keys) != len(want) {
		t.Fatalf("ledger %v, want %v", keys, want)
	}
	for i := range want {
		if keys[i] != want[i] {
			t.Fatalf("ledger %v, want %v", keys, want)
		}
	}
	// FIFO within the in queue, and the in lines name the injected files.
	var inOrder []string
	for _, e := range got {
		if e.Queue == "in" {
			inOrder = append(inOrder, e.Base)
		}
	}
	if len(inOrder) != 3 || inOrder[0] != bases[0] || inOrder[1] != bases[1] || inOrder[2] != bases[2] {
		t.Errorf("in processed in order %v, want %v", inOrder, bases)
	}
}

func TestWorkerSkipsVanished(t *testing.T) {
	root := t.TempDir()
	for _, q := range queues {
		if err := os.MkdirAll(filepath.Join(root, q), 0o770); err != nil {
			t.Fatal(err)
		}
	}
	spec := workerSpec{QueueDir: root, Node: "a", Ledger: filepath.Join(root, "ledger"), Hops: hops}
	if err := processOne(context.Background(), spec, hops[0], "1800000000.5+0123456789012345678901234567890123456789"); err != nil {
		t.Errorf("a file that vanished since the listing: %v", err)
	}
	if got, _ := readLedger(spec.Ledger); len(got) != 0 {
		t.Errorf("ledger %v", got)
	}
}
