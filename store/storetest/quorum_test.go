package storetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mmsidecar/mmsidecar/store"
	"github.com/mmsidecar/mmsidecar/store/s3store"
)

// TestClusterQuorumLossConsistency checks what a coordination protocol
// needs of the store after a lost write quorum: CAS writers keep writing
// while two of four servers are stopped (every write fails), the servers
// come back, and then every server must give one answer, read after
// read: the last acknowledged write, or one of the failed writes after
// it (an unanswered write may have committed); and one CAS round, one
// racer per server, must have exactly one winner.
//
// The pinned MinIO build can fail it (issue 8 report): after such a loss,
// servers (and one server from one read to the next) have answered two
// different versions, or NoSuchKey for an acknowledged object, for
// minutes, until a heal; and a key can stay unwritable for a while.
//
// It measures MinIO, not mmsidecar, and fails on the pinned build: it runs
// only with MMSIDECAR_MINIO_QUORUM_PROBE=1 (docs/minio-cluster.md says what
// it found and what the sidecar does about it).
func TestClusterQuorumLossConsistency(t *testing.T) {
	if os.Getenv("MMSIDECAR_MINIO_QUORUM_PROBE") != "1" {
		t.Skip("MINIO QUORUM-LOSS PROBE NOT RUN: it checks MinIO itself and fails on the pinned build (docs/minio-cluster.md); run it with MMSIDECAR_MINIO_QUORUM_PROBE=1")
	}
	c := StartCluster(t)
	cfg := c.Config(c.NewBucket(t))
	cfg.RequestTimeout = time.Second
	s, err := s3store.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const writers = 3
	var mu sync.Mutex // guards acked, nacked, failed
	acked := make([][]byte, writers)
	var nacked, failed [writers]int
	var failedBodies [writers][][]byte
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("k%d", w)
			etag := ""
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := []byte(fmt.Sprintf("%s write %d at %s", key, i, time.Now().Format("15:04:05.000")))
				cond := store.Condition{IfAbsent: true}
				if etag != "" {
					cond = store.Condition{IfMatch: etag}
				}
				info, err := store.PutBytes(t.Context(), s, key, body, cond)
				mu.Lock()
				if err == nil {
					etag, acked[w] = info.ETag, body
					nacked[w]++
				} else {
					failed[w]++
					failedBodies[w] = append(failedBodies[w], body)
				}
				mu.Unlock()
				if err == nil {
					continue
				}
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
			}
		}()
	}
	// Every writer has a few acknowledged writes before the loss.
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		least := min(nacked[0], nacked[1], nacked[2])
		mu.Unlock()
		if least >= 5 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Server(2).Stop()
	c.Server(3).Stop()
	time.Sleep(6 * time.Second) // the length of the quorum loss, during which every write fails
	close(stop)
	wg.Wait()
	for w := range writers {
		if acked[w] == nil {
			t.Fatalf("writer %d had no write acknowledged before the quorum loss", w)
		}
		if failed[w] == 0 {
			t.Fatalf("writer %d saw no failed write during the quorum loss", w)
		}
	}
	c.Server(2).Start()
	c.Server(3).Start()
	if err := c.WaitWriteQuorum(time.Minute); err != nil {
		t.Fatal(err)
	}

	// Read every key from every server, a few times over 8 s. Every read
	// must agree, on the last acknowledged write or on one of the failed
	// ones after it (their answers were lost: each may have committed).
	var per []*s3store.Store
	for i := range c.Servers() {
		pc := c.Server(i).Config(cfg.Bucket)
		pc.RequestTimeout = 5 * time.Second
		ps, err := s3store.New(pc)
		if err != nil {
			t.Fatal(err)
		}
		per = append(per, ps)
	}
	for w := range writers {
		key := fmt.Sprintf("k%d", w)
		seen := make(map[string][]string) // answer -> "round/server" that gave it
		for round := range 4 {
			for i, ps := range per {
				got, _, err := store.GetBytes(t.Context(), ps, key)
				answer := fmt.Sprintf("%q", got)
				if err != nil {
					answer = "error " + store.CodeOf(err)
				}
				seen[answer] = append(seen[answer], fmt.Sprintf("r%ds%d", round, i+1))
			}
			time.Sleep(2 * time.Second)
		}
		valid := map[string]bool{fmt.Sprintf("%q", acked[w]): true}
		for _, b := range failedBodies[w] {
			valid[fmt.Sprintf("%q", b)] = true
		}
		var answers []string
		bad := len(seen) > 1
		for a, where := range seen {
			mark := ""
			if !valid[a] {
				bad, mark = true, " NEITHER ACKNOWLEDGED NOR ATTEMPTED"
			}
			answers = append(answers, fmt.Sprintf("%s%s from %s", a, mark, strings.Join(where, ",")))
		}
		if bad {
			t.Errorf("%s after a write-quorum loss: last acknowledged %q (%d failed writes after it); reads answered:\n  %s",
				key, acked[w], failed[w], strings.Join(answers, "\n  "))
		} else {
			t.Logf("%s after the quorum loss: every read %s (acknowledged %q)", key, answers[0], acked[w])
		}
		winners, errs := casRound(t, per, key)
		if len(winners) != 1 {
			t.Errorf("one CAS round on %s after the quorum loss, one racer per server on the version it reads: %d winners %v, want exactly 1; errors: %v",
				key, len(winners), winners, errs)
		}
	}
}

// casRound races one CAS writer per server on key, each on the version
// its server reads, and returns the winners and the losers' errors.
func casRound(t *testing.T, per []*s3store.Store, key string) (winners, errs []string) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, ps := range per {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			_, info, err := store.GetBytes(ctx, ps, key)
			cond := store.Condition{IfMatch: info.ETag}
			if errors.Is(err, store.ErrNotFound) {
				cond = store.Condition{IfAbsent: true}
			} else if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("server %d read: %s", i+1, store.CodeOf(err)))
				mu.Unlock()
				return
			}
			_, err = store.PutBytes(ctx, ps, key, []byte(fmt.Sprintf("cas by server %d", i+1)), cond)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				winners = append(winners, fmt.Sprintf("server %d (read etag %q)", i+1, info.ETag))
			} else {
				errs = append(errs, fmt.Sprintf("server %d: %s", i+1, store.CodeOf(err)))
			}
		}()
	}
	wg.Wait()
	return winners, errs
}
