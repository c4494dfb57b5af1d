package runner

import (
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
)

// QueueStats is what the mirror holds of one queue.
type QueueStats struct {
	// Pck, Bak and Psv count the entries in the queue directory.
	Pck, Bak, Psv int
	// Held counts the queue's entries in the hold area.
	Held int
	// Unmirrored counts local entries with no durable copy known.
	Unmirrored int
	// Oldest is the enqueue time (from its name) of the oldest local
	// entry; zero if there is none.
	Oldest time.Time
	// LastMirror is when a copy of an entry of this queue last became
	// durable; zero if never since start.
	LastMirror time.Time
	// PendingUploads counts uploads queued or running.
	PendingUploads int
	// PendingDeletes counts deletes of copies waiting or running.
	PendingDeletes int
}

// Stats is a snapshot of the mirror.
type Stats struct {
	// Ready is true once the first Reconcile is done.
	Ready bool
	// Queues maps each known queue to its figures.
	Queues map[string]QueueStats
	// PendingUploads and PendingDeletes are the totals over all queues.
	PendingUploads, PendingDeletes int
}

// Stats returns per-queue counts, the oldest entry, the last mirror time
// and pending work.
func (m *Mirror) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Stats{Ready: m.ready.Load(), Queues: make(map[string]QueueStats, len(m.queues))}
	oldest := make(map[string]float64)
	for _, q := range m.queues {
		s.Queues[q.name] = QueueStats{LastMirror: q.lastMirror}
	}
	for e, st := range m.index {
		qs := s.Queues[e.Queue]
		switch st.where {
		case locPck:
			qs.Pck++
		case locBak:
			qs.Bak++
		case locPsv:
			qs.Psv++
		case locHeld:
			qs.Held++
		}
		if st.where != locNone {
			if st.durable == "" {
				qs.Unmirrored++
			}
			t := fence.BaseTime(e.Base)
			if o, ok := oldest[e.Queue]; !ok || t < o {
				oldest[e.Queue] = t
			}
		}
		if st.up != nil {
			qs.PendingUploads++
		}
		s.Queues[e.Queue] = qs
	}
	for _, it := range m.delQueue {
		qs := s.Queues[it.e.Queue]
		qs.PendingDeletes++
		s.Queues[it.e.Queue] = qs
	}
	s.PendingUploads, s.PendingDeletes = m.ups.pending(), m.dels.pending()
	for q, t := range oldest {
		qs := s.Queues[q]
		sec := int64(t)
		qs.Oldest = time.Unix(sec, int64((t-float64(sec))*1e9))
		s.Queues[q] = qs
	}
	return s
}
