package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/wait"
)

// rywWrite inserts row k and sets the counter to k, in one transaction, at
// addr (the writer or the router's cluster endpoint), and returns the
// reply's LSN.
func rywWrite(ctx context.Context, addr string, k int) (uint64, error) {
	return execLSN(ctx, addr, true,
		st("INSERT INTO ryw(k, v) VALUES(?, ?)", k, rowText(k)),
		st("UPDATE counter SET n = ? WHERE id = 1", k))
}

// rywRead is the read of one's write: row k and the counter.
const rywRead = "SELECT (SELECT v FROM ryw WHERE k = ?), (SELECT n FROM counter WHERE id = 1), (SELECT count(*) FROM ryw)"

// rywCheck checks rywRead's answer after writes 1..k.
func rywCheck(rows [][]any, k int) error {
	if len(rows) != 1 || len(rows[0]) != 3 {
		return fmt.Errorf("answered %v", rows)
	}
	r := rows[0]
	if r[0] != rowText(k) || r[1] != int64(k) || r[2] != int64(k) {
		return fmt.Errorf("after write %d the read answers row %.20v, counter %v, %v rows", k, r[0], r[1], r[2])
	}
	return nil
}

// TestReplicaReadYourWrites: a write, then a read with the write's LSN as
// min_lsn, always sees it: on each replica in turn, directly; then through
// the router (write on the cluster endpoint, read on the reader endpoint)
// while replica r1 is stopped with SIGSTOP: every read succeeds and sees
// its write, and once the router has noticed, none is answered by r1.
// With r1 resumed, the reader endpoint sends it queries again.
func TestReplicaReadYourWrites(t *testing.T) {
	rc := startReplicaCluster(t, replicaClusterOpts{
		replicas: []replicaSpec{{id: "r1", az: "b", extra: []string{"--min-lsn-wait", "5s"}}, {id: "r2", az: "c", extra: []string{"--min-lsn-wait", "5s"}}},
		router:   true,
	})
	mustExec(t, rc.writer, true,
		st("CREATE TABLE ryw(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"),
		st("CREATE TABLE counter(id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"),
		st("INSERT INTO counter VALUES(1, 0)"))

	k := 0
	ctx := context.Background()
	t.Run("direct", func(t *testing.T) {
		start := time.Now()
		for i := 0; i < 200; i++ {
			k++
			lsn, err := rywWrite(ctx, rc.writer, k)
			if err != nil {
				t.Fatalf("write %d: %v", k, err)
			}
			// Both replicas, the first alternating: the write is seen on
			// whichever is asked first, and on the other.
			for j := range 2 {
				id := rc.ids[(i+j)%2]
				rows, _, err := queryRows(ctx, rc.replicas[id], lsn, rywRead, k)
				if err != nil {
					t.Fatalf("replica %s: read of write %d with min_lsn %d: %v", id, k, lsn, err)
				}
				if err := rywCheck(rows, k); err != nil {
					t.Fatalf("replica %s, min_lsn %d: %v", id, lsn, err)
				}
			}
		}
		t.Logf("200 writes, each read back with min_lsn on both replicas, in %s", time.Since(start).Round(time.Millisecond))
	})
	if t.Failed() {
		return
	}

	t.Run("router with r1 stopped", func(t *testing.T) {
		// The router knows both replicas before r1 stops.
		wait.For(t, 10*time.Second, "the router to take queries on both replicas", func() bool {
			s, err := routerHealth(rc.readerEP)
			if err != nil {
				return false
			}
			c1, _ := s.candidate("r1")
			c2, _ := s.candidate("r2")
			return c1 && c2
		})
		if err := rc.cl.Signal("r1", syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stopped := true
		defer func() {
			if stopped {
				rc.cl.Signal("r1", syscall.SIGCONT)
			}
		}()
		stoppedAt := time.Now()
		var why string
		wait.For(t, 10*time.Second, "the router to notice r1 is stopped", func() bool {
			s, err := routerHealth(rc.readerEP)
			if err != nil {
				return false
			}
			c, w := s.candidate("r1")
			why = w
			return !c
		})
		t.Logf("the router noticed r1 stopped after %s: %s", time.Since(stoppedAt).Round(time.Millisecond), why)

		// Plain queries in the background keep r2 busy too.
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			answered = map[string]int{}
			plain    atomic.Int64
		)
		bctx, stopPlain := context.WithCancel(ctx)
		defer stopPlain()
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for bctx.Err() == nil {
					qctx, cancel := context.WithTimeout(bctx, 5*time.Second)
					rows, inst, err := queryRows(qctx, rc.readerEP, 0, "SELECT count(*), max(k) FROM ryw")
					cancel()
					if bctx.Err() != nil {
						return
					}
					if err != nil {
						t.Errorf("a plain query on the reader endpoint with r1 stopped: %v", err)
						return
					}
					if inst == "r1" {
						t.Errorf("the stopped replica r1 answered a plain query")
						return
					}
					if v, ok := ints(rows[0]); !ok || v[0] != v[1] {
						t.Errorf("a plain query answered %v", rows)
						return
					}
					plain.Add(1)
				}
			}()
		}
		for i := 0; i < 100; i++ {
			k++
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			lsn, err := rywWrite(wctx, rc.clusterEP, k)
			cancel()
			if err != nil {
				t.Fatalf("write %d through the cluster endpoint: %v", k, err)
			}
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			rows, inst, err := queryRows(qctx, rc.readerEP, lsn, rywRead, k)
			cancel()
			if err != nil {
				t.Fatalf("read of write %d on the reader endpoint (min_lsn %d) with r1 stopped: %v", k, lsn, err)
			}
			if err := rywCheck(rows, k); err != nil {
				t.Fatalf("the reader endpoint (answered by %q), min_lsn %d: %v", inst, lsn, err)
			}
			if inst == "r1" {
				t.Fatalf("the stopped replica r1 answered a query")
			}
			if inst == "" {
				t.Fatalf("the reader endpoint's answer names no instance")
			}
			mu.Lock()
			answered[inst]++
			mu.Unlock()
		}
		stopPlain()
		wg.Wait()
		t.Logf("with r1 stopped for %s: reads of one's writes answered by %v; %d plain queries", time.Since(stoppedAt).Round(time.Millisecond), answered, plain.Load())
		// Once the router's view of r2 has the last write, a read of it
		// goes to r2, not to the writer.
		lsn := mustExec(t, rc.clusterEP, false, st("SELECT 1"))
		wait.For(t, 10*time.Second, "the router to see r2 at the last write's LSN", func() bool {
			s, err := routerHealth(rc.readerEP)
			if err != nil {
				return false
			}
			for _, r := range s.Replicas {
				if r.ID == "r2" && r.Candidate && r.VDL >= lsn {
					return true
				}
			}
			return false
		})
		rows, inst, err := queryRows(ctx, rc.readerEP, lsn, rywRead, k)
		if err != nil || inst != "r2" {
			t.Fatalf("a read with min_lsn %d, which the router knows r2 has applied: answered by %q: %v", lsn, inst, err)
		}
		if err := rywCheck(rows, k); err != nil {
			t.Fatal(err)
		}

		if err := rc.cl.Signal("r1", syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		stopped = false
		wait.For(t, 15*time.Second, "the router to take queries on r1 again", func() bool {
			s, err := routerHealth(rc.readerEP)
			if err != nil {
				return false
			}
			c, _ := s.candidate("r1")
			return c
		})
		// Plain queries spread over both replicas again, and reads of
		// one's writes stay right.
		seen := map[string]int{}
		for i := 0; i < 40 || seen["r1"] == 0; i++ {
			if i == 400 {
				t.Fatalf("400 plain queries on the reader endpoint, none answered by the resumed r1: %v", seen)
			}
			rows, inst, err := queryRows(ctx, rc.readerEP, 0, "SELECT count(*), max(k) FROM ryw")
			if err != nil {
				t.Fatalf("a plain query after r1 resumed: %v", err)
			}
			if v, ok := ints(rows[0]); !ok || v[0] != v[1] || v[0] > int64(k) {
				t.Fatalf("a plain query answered %v", rows)
			}
			seen[inst]++
			if i%4 == 0 {
				k++
				lsn, err := rywWrite(ctx, rc.clusterEP, k)
				if err != nil {
					t.Fatalf("write %d: %v", k, err)
				}
				rows, inst, err := queryRows(ctx, rc.readerEP, lsn, rywRead, k)
				if err != nil {
					t.Fatalf("read of write %d after r1 resumed: %v", k, err)
				}
				if err := rywCheck(rows, k); err != nil {
					t.Fatalf("after r1 resumed (answered by %q): %v", inst, err)
				}
			}
		}
		var names []string
		for n, c := range seen {
			names = append(names, fmt.Sprintf("%s:%d", n, c))
		}
		sort.Strings(names)
		t.Logf("after r1 resumed, plain queries answered by %s", strings.Join(names, " "))
	})
}
