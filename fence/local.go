package fence

import "context"

// Gate is what the node's mirror asks the coordinator before every write
// into its own namespace. A closed gate (Writable false) means the node is
// fenced or not yet started: no uploads at all.
type Gate struct {
	// Epoch is the epoch new copies are written under.
	Epoch uint64
	// Writable says whether the node may write into its namespace now.
	Writable bool
	// Draining says every Mailman-visible .pck is to be held for handoff
	// instead of left to the local runners.
	Draining bool
	// Guarded says Mailman's runners honour the runner gate (docs/gate.md):
	// while the node is fenced, entries stay in their queue directories,
	// where the closed gate keeps the runners from them, instead of being
	// held.
	Guarded bool
	// OwnFrom is the lowest epoch of this node's namespace that is still
	// its own: copies at lower epochs belong to a takeover by peers and are
	// left alone by the node's reconcile.
	OwnFrom uint64
	// Done is closed when the node stops owning Epoch (it fenced). A
	// write the gate let through must end then: a client that goes on
	// retrying could commit a copy after the peers have taken the
	// namespace over, and that copy would be claimed afresh once its
	// entry's claim is collected. Nil never closes.
	Done <-chan struct{}
}

// Bind returns a context that ends when ctx does or when g's epoch ends,
// for a write that g let through.
func (g Gate) Bind(ctx context.Context) (context.Context, context.CancelFunc) {
	c, cancel := context.WithCancel(ctx)
	if g.Done == nil {
		return c, cancel
	}
	go func() {
		select {
		case <-g.Done:
			cancel()
		case <-c.Done():
		}
	}()
	return c, cancel
}

// Counts is what a node holds locally.
type Counts struct {
	// Pck counts Mailman-visible queued entries.
	Pck int
	// Bak counts entries a runner has in flight.
	Bak int
	// Held counts entries in the hold area.
	Held int
	// Unmirrored counts local entries not yet durable in the store.
	Unmirrored int
}

// Local is what the coordinator asks of the node's queue directories. The
// runner implements it; fence decides and never touches files.
//
// The hold area is a directory on the queue directories' filesystem that
// no Mailman runner scans: fencing, draining and takeover park entries
// there until the store has decided who owns them.
type Local interface {
	// Quarantine moves entries out of the runners' reach into the hold
	// area and returns the entries moved. With all false it moves only
	// the .pck files the store may know as this node's (mirrored, or with
	// an upload in flight), never a .bak: that is the fence, while
	// Mailman runs. With all true it moves every entry, .pck, .bak (held
	// as a .pck) and .psv: only at start-up, after the node was declared
	// dead while it was down and before Mailman's runners start, when
	// nothing can be in flight. Call it only with the gate closed, so
	// that no upload starts behind it.
	Quarantine(ctx context.Context, all bool) ([]Entry, error)
	// HoldOlder moves the .pck and .psv files that the runner gate's
	// settling rule keeps from the runners (born no later than the cutoff
	// of the node's last death, GatePublisher.MarkDeath) into the hold
	// area, never a .bak, and returns the entries moved and the .bak
	// entries of that age (in flight, left where they are). With the
	// runner gate guarding the runners, this replaces Quarantine(all) for
	// a node that was declared dead: Mailman may be running.
	HoldOlder(ctx context.Context) (held, inFlight []Entry, err error)
	// Hold moves e's Mailman-visible .pck into the hold area; false when
	// e is not there as a .pck.
	Hold(e Entry) (bool, error)
	// Held lists the entries in the hold area.
	Held() []Entry
	// Stage writes data for e into the hold area durably (temp file,
	// fsync, rename), replacing nothing that is already held.
	Stage(e Entry, data []byte) error
	// Mirror makes sure the held entry e is durable in the store under
	// this node's namespace at the gate's epoch and returns that key. A
	// copy at an older epoch of the node is deleted after the new one is
	// durable.
	Mirror(ctx context.Context, e Entry) (string, error)
	// Release mirrors the held entry e (as Mirror) and then makes it
	// visible to Mailman: a same-directory rename into its queue
	// directory, with Mailman's owner and mode.
	Release(ctx context.Context, e Entry) error
	// Drop deletes the held entry e.
	Drop(e Entry) error
	// Has reports whether the node holds e: as a .pck or .bak in its
	// queue directory, or in the hold area.
	Has(e Entry) bool
	// Counts returns what the node holds.
	Counts() Counts
}
