package chaos

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestOutageDeaths: a node that came back taken over after a store
// outage is explained by a locked lease only when it was refused
// re-acquires after the store was back and had no lease in between.
func TestOutageDeaths(t *testing.T) {
	fault := time.Date(2026, 12, 3, 17, 53, 35, 0, time.UTC)
	back := fault.Add(15 * time.Second)
	at := func(d time.Duration) time.Time { return back.Add(d) }
	declare := func(d time.Duration) logRecord {
		return logRecord{Time: at(d), Msg: "declared peer dead", Peer: "c"}
	}
	refused := func(d time.Duration) logRecord {
		return logRecord{Time: at(d), Msg: "fenced: lease not re-acquired", Err: "write lease: timeout"}
	}
	acquired := func(d time.Duration) logRecord { return logRecord{Time: at(d), Msg: "lease acquired"} }
	takenOver := func(d time.Duration) logRecord {
		return logRecord{Time: at(d), Msg: "lease acquired", TakenOver: true}
	}
	for _, tc := range []struct {
		name      string
		a, c      []logRecord
		explained bool
		by        string
	}{
		{"refused after the return", []logRecord{declare(80 * time.Second)},
			[]logRecord{refused(10 * time.Second), refused(70 * time.Second), takenOver(82 * time.Second)}, true, "a"},
		{"declaration committed unanswered", nil,
			[]logRecord{refused(10 * time.Second), refused(70 * time.Second), takenOver(82 * time.Second)}, true, ""},
		{"refused only during the outage", []logRecord{declare(80 * time.Second)},
			[]logRecord{refused(-5 * time.Second), takenOver(82 * time.Second)}, false, ""},
		{"refused once a peer had its lease back, before the harness saw the store back", []logRecord{acquired(-10 * time.Second), declare(-2 * time.Second)},
			[]logRecord{refused(-8 * time.Second), refused(-3 * time.Second), takenOver(-time.Second)}, true, "a"},
		{"never refused", []logRecord{declare(80 * time.Second)}, []logRecord{takenOver(82 * time.Second)}, false, ""},
		{"a lease before the declaration", []logRecord{declare(80 * time.Second)},
			[]logRecord{refused(10 * time.Second), acquired(20 * time.Second), takenOver(82 * time.Second)}, false, ""},
		{"declared during the outage", []logRecord{declare(-time.Second)},
			[]logRecord{refused(5 * time.Second), takenOver(10 * time.Second)}, false, ""},
		{"declared, never came back", []logRecord{declare(80 * time.Second)}, []logRecord{refused(10 * time.Second)}, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			nodes := []*node{{id: "a", sidecarLog: writeLog(t, dir, "a", tc.a)}, {id: "c", sidecarLog: writeLog(t, dir, "c", tc.c)}}
			explained, odd, declared := outageDeaths(nodes, fault, back)
			decls := 0
			for _, r := range tc.a {
				if r.Msg == "declared peer dead" {
					decls++
				}
			}
			if declared != decls {
				t.Errorf("declared %d, want %d", declared, decls)
			}
			if got := len(explained) == 1 && len(odd) == 0; got != tc.explained {
				t.Fatalf("explained %+v, odd %v; want explained %v", explained, odd, tc.explained)
			}
			if !tc.explained && len(odd) != 1 {
				t.Fatalf("odd %v, want one", odd)
			}
			if tc.explained && (explained[0].node != "c" || explained[0].by != tc.by || explained[0].refused != 2) {
				t.Fatalf("explained %+v, want c by %q with 2 refusals", explained[0], tc.by)
			}
		})
	}
}

func writeLog(t *testing.T, dir, id string, recs []logRecord) string {
	t.Helper()
	path := filepath.Join(dir, id+".log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	enc := json.NewEncoder(f)
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// TestLockedSurvivors: in c1, a survivor whose lease key the server kill
// left locked, and which a peer declared dead when the key unlocked, is
// accepted (its claims may run again); the scenario's own victim's
// declaration and claims are left to the scenario's rules.
func TestLockedSurvivors(t *testing.T) {
	kill := time.Date(2026, 12, 6, 20, 21, 34, 0, time.UTC)
	at := func(d time.Duration) time.Time { return kill.Add(d) }
	dir := t.TempDir()
	b := []logRecord{
		{Time: at(3 * time.Second), Msg: "declared peer dead", Peer: "c"},
		{Time: at(4 * time.Second), Msg: "claimed", Entry: "in/1796588495.3+aa.pck", From: "c"},
		{Time: at(80 * time.Second), Msg: "declared peer dead", Peer: "a"},
		{Time: at(81 * time.Second), Msg: "claimed", Entry: "in/1796588493.9+bb.pck", From: "a"},
	}
	a := []logRecord{
		{Time: at(-7 * time.Second), Msg: "lease acquired"},
		{Time: at(10 * time.Second), Msg: "fenced: lease not re-acquired", Err: "read lease: no answer within 10s"},
		{Time: at(70 * time.Second), Msg: "fenced: lease not re-acquired", Err: "read lease: no answer within 10s"},
		{Time: at(82 * time.Second), Msg: "lease acquired", TakenOver: true},
	}
	na := &node{id: "a", sidecarLog: writeLog(t, dir, "a", a)}
	nb := &node{id: "b", sidecarLog: writeLog(t, dir, "b", b)}
	nc := &node{id: "c", sidecarLog: writeLog(t, dir, "c", nil)}
	s := &scenario{t: t, name: "c1-unit", c: &cluster{t: t, nodes: []*node{na, nb, nc}}, inFlight: map[hopID]bool{}}
	// Its report lines stay out of the chaos report (no test here runs in
	// parallel).
	saved := report
	report = &reportBook{}
	defer func() { report = saved }()

	t.Run("claims from the scenario's victim are skipped", func(t *testing.T) {
		victims, _, _ := outageDeaths([]*node{na, nb}, kill, kill)
		if len(victims) != 1 || victims[0].node != "a" || victims[0].by != "b" {
			t.Fatalf("victims %+v, want a declared by b", victims)
		}
		claimed, odd := s.allowTakeoverReruns(victims, kill, "c")
		if claimed != 1 || len(odd) != 0 {
			t.Errorf("claimed %d, odd %v; want the one claim from a", claimed, odd)
		}
		claimed, odd = s.allowTakeoverReruns(victims, kill)
		if claimed != 1 || len(odd) != 1 {
			t.Errorf("without c expected: claimed %d, odd %v; want c's claim odd", claimed, odd)
		}
	})
	t.Run("the locked survivor is accepted", func(t *testing.T) {
		note := s.lockedSurvivors(nc, []*node{na, nb}, kill)
		if note != "a declared dead (locked lease)" {
			t.Errorf("note %q", note)
		}
	})
}
