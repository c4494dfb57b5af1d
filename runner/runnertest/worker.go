package runnertest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// EventKind says what a Worker did to an entry.
type EventKind int

// The events a Worker reports.
const (
	// Created: an entry now exists (reported after its rename).
	Created EventKind = iota + 1
	// Dequeued: the worker renamed the .pck to .bak (still live).
	Dequeued
	// Removing: the entry is about to leave its queue for good (reported
	// just before the unlink, or the rename into bad).
	Removing
)

// Event is one step of a Worker, with the time it was observed.
type Event struct {
	Kind EventKind
	// Queue and Base name the entry's file; Ext is "pck" or "psv".
	Queue, Base, Ext string
	// ID is the message id from the body.
	ID string
	At time.Time
}

// Worker processes one queue like a Mailman runner: every Poll it lists
// the directory, keeps the valid .pck names, and for each in time order
// renames it to .bak, reads it, appends to the ledger, writes a successor
// into Next (or preserves it into bad as .psv), and unlinks the .bak.
type Worker struct {
	// QueueDir is the queue root; Queue the directory processed.
	QueueDir, Queue string
	// Next is the queue successors go to; "" finishes entries outright.
	Next string
	// Node names this worker in the ledger.
	Node string
	// Poll is the listing interval (Mailman's sleep_time; default 1s).
	Poll time.Duration
	// MinAge makes the worker leave entries younger than this (by the
	// time in their name), to simulate a slow hop.
	MinAge time.Duration
	// PreserveEvery sends every Nth dequeued entry to bad as .psv
	// instead of a successor (0: never).
	PreserveEvery int
	// Ledger, if set, gets "<queue>/<id> <node>" appended and fsynced for
	// every entry processed.
	Ledger string
	// Owner owns successors; nil leaves them as created.
	Owner *Owner
	// OnEvent, if set, is called for every step.
	OnEvent func(Event)

	processed int
}

func (w *Worker) emit(kind EventKind, queue, base, ext, id string) {
	if w.OnEvent != nil {
		w.OnEvent(Event{Kind: kind, Queue: queue, Base: base, Ext: ext, ID: id, At: time.Now()})
	}
}

// Run processes the queue until ctx ends.
func (w *Worker) Run(ctx context.Context) error {
	poll := w.Poll
	if poll <= 0 {
		poll = time.Second
	}
	for {
		if _, err := w.Step(ctx); err != nil {
			return err
		}
		t := time.NewTimer(poll)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}

// Step makes one pass over the queue and returns how many entries it
// processed.
func (w *Worker) Step(ctx context.Context) (int, error) {
	dir := filepath.Join(w.QueueDir, w.Queue)
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	type item struct {
		base string
		t    float64
	}
	var items []item
	for _, de := range ents {
		base, ext, ok := fence.ParseFileName(de.Name())
		if ok && ext == fence.ExtPck {
			items = append(items, item{base, fence.BaseTime(base)})
		}
	}
	sort.Slice(items, func(i, j int) bool { return items[i].t < items[j].t })
	n := 0
	cutoff := float64(time.Now().Add(-w.MinAge).UnixNano()) / 1e9
	for _, it := range items {
		if ctx.Err() != nil || w.MinAge > 0 && it.t > cutoff {
			break
		}
		ok, err := w.process(it.base)
		if err != nil {
			return n, err
		}
		if ok {
			n++
		}
	}
	return n, nil
}

// process handles one entry; false if it vanished before dequeue.
func (w *Worker) process(base string) (bool, error) {
	dir := filepath.Join(w.QueueDir, w.Queue)
	pck := filepath.Join(dir, base+".pck")
	bak := filepath.Join(dir, base+".bak")
	if err := os.Rename(pck, bak); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil // Mailman only logs this
		}
		return false, err
	}
	body, err := os.ReadFile(bak)
	if err != nil {
		return false, err
	}
	id := BodyID(body)
	w.emit(Dequeued, w.Queue, base, "pck", id)
	if w.Ledger != "" {
		if err := AppendLedger(w.Ledger, fmt.Sprintf("%s/%s %s\n", w.Queue, id, w.Node)); err != nil {
			return false, err
		}
	}
	w.processed++
	if w.PreserveEvery > 0 && w.processed%w.PreserveEvery == 0 {
		bad := filepath.Join(w.QueueDir, "bad")
		if err := os.MkdirAll(bad, 0o770); err != nil {
			return false, err
		}
		w.emit(Removing, w.Queue, base, "pck", id)
		if err := os.Rename(bak, filepath.Join(bad, base+".psv")); err != nil {
			return false, err
		}
		w.emit(Created, "bad", base, "psv", id)
		return true, nil
	}
	if w.Next != "" {
		nb := NewBase(time.Now(), body)
		if err := WriteEntry(filepath.Join(w.QueueDir, w.Next), nb, body, w.Owner); err != nil {
			return false, err
		}
		w.emit(Created, w.Next, nb, "pck", id)
	}
	w.emit(Removing, w.Queue, base, "pck", id)
	if err := os.Remove(bak); err != nil {
		return false, err
	}
	return true, nil
}

// AppendLedger appends line to the ledger file with O_APPEND and fsync, so
// lines of several processes interleave whole.
func AppendLedger(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(line)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
