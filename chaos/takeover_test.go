package chaos

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/fence"
	"github.com/mmsidecar/mmsidecar/store/storetest"
)

// testTakeoverTime measures how long two survivors take to restore a dead
// node's backlog of count entries: the node's runners are stopped (no
// worker), its backlog is mirrored, then its sidecar is SIGKILLed. Every
// entry must come back on exactly one survivor.
func testTakeoverTime(t *testing.T, m *storetest.MinIO, count int) {
	c := newCluster(t, m, clusterOptions{NoWorkers: true})
	c.start()
	victim := c.node("c")
	survivors := c.others(victim)
	ctx := t.Context()
	began := time.Now()
	c.inject(ctx, "t", count, 0, []*node{victim})()
	if t.Failed() {
		t.FailNow()
	}
	wait := deadline + time.Duration(count)*10*time.Millisecond
	err := waitFor(wait, 200*time.Millisecond, func() (bool, string) {
		cp, err := c.copies(ctx)
		return err == nil && cp[victim.id] == count, fmt.Sprint("copies ", cp, " err ", err)
	})
	if err != nil {
		t.Fatalf("backlog of %s not mirrored: %v", victim.id, err)
	}
	mirrored := time.Since(began)

	faultAt := time.Now()
	if err := victim.sidecar.signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	victim.sidecar.kill()
	var perNode []string
	err = waitFor(wait, 100*time.Millisecond, func() (bool, string) {
		cp, err := c.copies(ctx)
		total := 0
		perNode = perNode[:0]
		for _, n := range survivors {
			k := n.backlog("in")
			total += k
			perNode = append(perNode, fmt.Sprintf("%s %d", n.id, k))
		}
		return err == nil && cp[victim.id] == 0 && total == count,
			fmt.Sprintf("copies %v (err %v); restored %s", cp, err, strings.Join(perNode, ", "))
	})
	if err != nil {
		t.Fatalf("takeover of %d entries: %v", count, err)
	}
	done := time.Since(faultAt)

	// Each entry on exactly one survivor.
	seen := make(map[string]string)
	for _, n := range survivors {
		files, err := n.files()
		if err != nil {
			t.Fatal(err)
		}
		ids, err := idsOf(files, func(f localFile) bool { return !f.Held && f.Ext == fence.ExtPck })
		if err != nil {
			t.Fatal(err)
		}
		for k := range ids {
			if o, dup := seen[k]; dup {
				t.Errorf("%s restored on both %s and %s", k, o, n.id)
			}
			seen[k] = n.id
		}
	}
	if len(seen) != count {
		t.Errorf("%d distinct entries restored, want %d", len(seen), count)
	}
	for _, id := range c.injectedIDs() {
		if seen["in/"+id] == "" {
			t.Errorf("entry %s not restored", id)
			break
		}
	}
	dead := logTimes(survivors, "declared peer dead", faultAt)
	first, last, ok := logMargin(survivors, faultAt)
	if !ok || len(dead) == 0 {
		t.Fatalf("no survivor logged the takeover")
	}
	report.addf(t, "takeover of %d entries of a dead node by %d survivors (%s): kill->declared dead %s, ->first claimed %s, ->last restored %s; restore phase (first claim to last restore) %s = %.0f entries/s; kill->namespace empty %s (backlog mirrored in %s)",
		count, len(survivors), strings.Join(perNode, ", "), ms(dead[0].Sub(faultAt)), ms(first.Sub(faultAt)), ms(last.Sub(faultAt)),
		ms(last.Sub(first)), float64(count)/last.Sub(first).Seconds(), ms(done), ms(mirrored))
}
