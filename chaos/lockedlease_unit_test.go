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
