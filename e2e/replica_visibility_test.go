package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlclient"
)

// visTracker is the writers' history of test 1: which keys were sent, which
// acknowledged (with the reply's LSN), which failed for sure.
type visTracker struct {
	mu      sync.Mutex
	started map[int64]bool
	acked   map[int64]uint64 // key -> the LSN its commit's reply carried
	doomed  map[int64]bool   // in a transaction that failed: never visible
	unknown map[int64]bool   // an error of unknown outcome
	maxLSN  atomic.Uint64    // the highest LSN of a reply so far
}

// TestReplicaAckedCommitsVisible: concurrent writers insert rows (alone, in
// transactions of three, and in transactions that fail half-way) while
// readers poll both replicas. A replica never shows a row that was never
// sent or whose transaction failed; what one reader sees on one replica
// only grows; a query with min_lsn M shows every row whose commit's reply
// carried an LSN at or below M; and at the end both replicas hold exactly
// the writer's rows, which are exactly the acknowledged ones.
func TestReplicaAckedCommitsVisible(t *testing.T) {
	rc := startReplicaCluster(t, replicaClusterOpts{
		replicas: []replicaSpec{{id: "r1", az: "b", extra: []string{"--min-lsn-wait", "5s"}}, {id: "r2", az: "c", extra: []string{"--min-lsn-wait", "5s"}}},
	})
	created := mustExec(t, rc.writer, false, st("CREATE TABLE t(k INTEGER PRIMARY KEY, w INTEGER NOT NULL, v TEXT NOT NULL)"))
	rc.catchUp(t, created, 10*time.Second)

	tr := &visTracker{started: map[int64]bool{}, acked: map[int64]uint64{}, doomed: map[int64]bool{}, unknown: map[int64]bool{}}
	tr.maxLSN.Store(created)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var next atomic.Int64
	var writers, readers sync.WaitGroup
	const target = 1500
	for w := range 4 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for ctx.Err() == nil && next.Load() < target {
				n := 1
				if rng.IntN(3) == 0 {
					n = 3
				}
				doomed := rng.IntN(8) == 0
				first := next.Add(int64(n)) - int64(n) + 1
				var stmts []sqlclient.Statement
				tr.mu.Lock()
				for k := first; k < first+int64(n); k++ {
					tr.started[k] = true
					stmts = append(stmts, st("INSERT INTO t(k, w, v) VALUES(?, ?, ?)", k, w, rowText(int(k))))
				}
				tr.mu.Unlock()
				if doomed {
					// The NOT NULL violation rolls the whole transaction back.
					stmts = append(stmts, st("INSERT INTO t(k, w, v) VALUES(?, ?, NULL)", -first, w))
				}
				cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				lsn, err := execLSN(cctx, rc.writer, n > 1 || doomed, stmts...)
				cancel()
				tr.mu.Lock()
				for k := first; k < first+int64(n); k++ {
					switch {
					case err == nil && !doomed:
						tr.acked[k] = lsn
					case doomed && sqlclient.Code(err) == "constraint_violation":
						tr.doomed[k] = true
					default:
						tr.unknown[k] = true
					}
				}
				tr.mu.Unlock()
				if err == nil && doomed {
					t.Errorf("a transaction with a NULL in a NOT NULL column committed (keys %d..)", first)
				} else if err != nil && !doomed {
					t.Errorf("insert of keys %d..%d: %v", first, first+int64(n)-1, err)
				}
				if err == nil {
					for {
						m := tr.maxLSN.Load()
						if lsn <= m || tr.maxLSN.CompareAndSwap(m, lsn) {
							break
						}
					}
				}
			}
		}()
	}

	var polls, withMin atomic.Int64
	readerCtx, stopReaders := context.WithCancel(context.Background())
	defer stopReaders()
	for _, id := range rc.ids {
		for g := range 2 {
			readers.Add(1)
			go func() {
				defer readers.Done()
				addr := rc.replicas[id]
				seen := map[int64]bool{}
				for i := 0; readerCtx.Err() == nil; i++ {
					var minLSN uint64
					if (i+g)%2 == 0 {
						minLSN = tr.maxLSN.Load()
					}
					qctx, cancel := context.WithTimeout(readerCtx, 15*time.Second)
					rows, _, err := queryRows(qctx, addr, minLSN, "SELECT k FROM t")
					cancel()
					if readerCtx.Err() != nil {
						return
					}
					if err != nil {
						t.Errorf("replica %s: SELECT k FROM t (min_lsn %d): %v", id, minLSN, err)
						return
					}
					polls.Add(1)
					if minLSN > 0 {
						withMin.Add(1)
					}
					now := make(map[int64]bool, len(rows))
					for _, r := range rows {
						now[r[0].(int64)] = true
					}
					for k := range seen {
						if !now[k] {
							t.Errorf("replica %s: row %d, seen by an earlier query of this reader, is gone", id, k)
							return
						}
					}
					seen = now
					tr.mu.Lock()
					var bad []string
					for k := range now {
						switch {
						case !tr.started[k]:
							bad = append(bad, fmt.Sprintf("%d (never sent)", k))
						case tr.doomed[k]:
							bad = append(bad, fmt.Sprintf("%d (its transaction failed)", k))
						}
					}
					var missing []int64
					if minLSN > 0 {
						for k, lsn := range tr.acked {
							if lsn <= minLSN && !now[k] {
								missing = append(missing, k)
							}
						}
					}
					tr.mu.Unlock()
					if len(bad) > 0 {
						t.Errorf("replica %s shows rows that were never committed: %s", id, strings.Join(bad, ", "))
						return
					}
					if len(missing) > 0 {
						sort.Slice(missing, func(i, j int) bool { return missing[i] < missing[j] })
						t.Errorf("replica %s: a query with min_lsn %d misses %d acknowledged rows whose reply LSN is at or below it, such as %v", id, minLSN, len(missing), missing[:min(5, len(missing))])
						return
					}
				}
			}()
		}
	}
	writers.Wait()
	stopReaders()
	readers.Wait()
	if t.Failed() {
		return
	}

	tr.mu.Lock()
	defer tr.mu.Unlock()
	final := tr.maxLSN.Load()
	t.Logf("%d rows acknowledged, %d in failed transactions, %d unknown; %d replica polls (%d with min_lsn); final LSN %d",
		len(tr.acked), len(tr.doomed), len(tr.unknown), polls.Load(), withMin.Load(), final)
	if len(tr.doomed) == 0 || polls.Load() < 20 {
		t.Fatalf("the load was too small to mean anything: %d failed transactions' rows, %d polls", len(tr.doomed), polls.Load())
	}
	wrows := mustQuery(t, rc.writer, final, "SELECT k, w, v FROM t ORDER BY k")
	want := fmt.Sprint(wrows)
	for _, r := range wrows {
		k := r[0].(int64)
		if _, ok := tr.acked[k]; !ok && !tr.unknown[k] {
			t.Fatalf("the writer holds row %d, which was not acknowledged", k)
		}
		if r[2] != rowText(int(k)) {
			t.Fatalf("the writer's row %d reads %v", k, r)
		}
	}
	if len(wrows) < len(tr.acked) {
		t.Fatalf("the writer holds %d rows, fewer than the %d acknowledged", len(wrows), len(tr.acked))
	}
	for _, id := range rc.ids {
		got := mustQuery(t, rc.replicas[id], final, "SELECT k, w, v FROM t ORDER BY k")
		if fmt.Sprint(got) != want {
			t.Fatalf("replica %s holds %d rows at LSN %d; the writer %d, and they differ", id, len(got), final, len(wrows))
		}
		integrityOKAt(t, rc.replicas[id], final)
	}
}
