package chaos

// lateCopies adds to staleAtKill the copies the survivors claimed from
// the killed node that were neither on its disk nor listed at the kill:
// an upload (or the answer to one) was in flight and committed after the
// listing, for an entry the node had already finished. Such a copy is a
// stale copy like those listed, judged by the same window.
func (s *scenario) lateCopies() {
	if s.killed == nil {
		return
	}
	late := 0
	for _, n := range s.c.nodes {
		for _, r := range readLog(n.sidecarLog) {
			if r.Msg != "claimed" || r.From != s.killed.id {
				continue
			}
			k, ok := entryKey(r.Entry)
			if ok && !s.localAtKill[k] && !s.staleAtKill[k] {
				s.staleAtKill[k] = true
				late++
			}
		}
	}
	if late > 0 {
		report.addf(s.t, "%s: %d copies claimed from %s appeared after the kill's listing (uploads that committed late); judged as stale copies", s.name, late, s.killed.id)
	}
}
