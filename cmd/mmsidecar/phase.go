package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"
)

// The daemon's phases, in order. /readyz answers 503 with the phase and
// its detail until it is phaseReady.
const (
	phaseStarting  = "starting"
	phaseStore     = "waiting for the store"
	phaseProbe     = "probing the store's conditional writes"
	phaseLease     = "acquiring the lease"
	phaseSettle    = "settling the hold area"
	phaseReconcile = "reconciling the queues with the store"
	phaseReady     = "ready"
	phaseStopping  = "stopping"
)

// phase is where the daemon is in its life: for /readyz, the cluster page
// and systemd (STATUS=, READY=1, STOPPING=1).
type phase struct {
	notify *notifier
	log    *slog.Logger

	mu     sync.Mutex
	name   string
	detail string
	since  time.Time
}

func newPhase(n *notifier, log *slog.Logger) *phase {
	return &phase{notify: n, log: log, name: phaseStarting, since: time.Now()}
}

// set moves to phase name (the time it started is kept while the name
// stays the same) with a detail that says what it waits for. A nil
// phase does nothing.
func (p *phase) set(name, detail string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	changed := p.name != name
	if changed {
		p.name, p.since = name, time.Now()
	}
	p.detail = detail
	p.mu.Unlock()
	status := name
	if detail != "" {
		status += ": " + detail
	}
	msg := "STATUS=" + status
	switch {
	case changed && name == phaseReady:
		msg = "READY=1\n" + msg
	case changed && name == phaseStopping:
		msg = "STOPPING=1\n" + msg
	}
	if err := p.notify.send(msg); err != nil && changed {
		p.log.Warn("cannot notify systemd", "err", err)
	}
}

// get returns the phase, its detail and when it started.
func (p *phase) get() (name, detail string, since time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.name, p.detail, p.since
}

// watchdog pings systemd's watchdog (WatchdogSec=) at half its interval
// for as long as the daemon answers: each ping first takes the locks the
// coordinator and the mirror work under (d.ready), so a daemon stuck on
// one of them stops pinging and is restarted.
func (d *daemon) watchdog(ctx context.Context) {
	every, ok := watchdogInterval()
	if !ok || d.phase.notify == nil {
		return
	}
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		_ = d.ready()
		if err := d.phase.notify.send("WATCHDOG=1"); err != nil {
			d.log.Warn("cannot ping the systemd watchdog", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// humanDuration prints d for people: "3.2s", "17m4s", "2h05m", "730d4h".
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		h := int(d.Hours())
		return fmt.Sprintf("%dh%02dm", h, int(math.Mod(d.Minutes(), 60)))
	}
	days := int(d.Hours() / 24)
	return fmt.Sprintf("%dd%dh", days, int(d.Hours())-24*days)
}
