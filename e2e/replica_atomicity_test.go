package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlclient"
)

const (
	accounts       = 40
	initialBalance = 1000
)

// transferCheck is one query answering the invariants at once: the sum of
// the balances, the count of transfers, the accounts whose balance
// disagrees with the transfers log, and the sum of the amounts logged.
const transferCheck = `SELECT
	(SELECT sum(bal) FROM accounts),
	(SELECT count(*) FROM transfers),
	(SELECT count(*) FROM accounts a WHERE a.bal != ? - coalesce((SELECT sum(amt) FROM transfers WHERE src = a.id), 0) + coalesce((SELECT sum(amt) FROM transfers WHERE dst = a.id), 0)),
	(SELECT coalesce(sum(amt), 0) FROM transfers)`

// TestReplicaTransfersAtomic: transfers between accounts, each two UPDATEs
// and a row of the transfers log in one transaction, run on the writer
// from four clients, some of them failing half-way. The accounts spread
// over pages of several PGs (64 KiB PGs), and the log has two indexes, so
// one transfer's MTR touches many pages. Concurrent queries on both
// replicas must always see the balances sum to the initial total, every
// balance agree with the log, and a count of transfers that never goes
// back between a reader's successive queries to one replica; at the end
// both replicas hold exactly the writer's accounts and log.
func TestReplicaTransfersAtomic(t *testing.T) {
	rc := startReplicaCluster(t, replicaClusterOpts{
		pgSize:   64 << 10,
		replicas: []replicaSpec{{id: "r1", az: "b", extra: []string{"--min-lsn-wait", "5s"}}, {id: "r2", az: "c", extra: []string{"--min-lsn-wait", "5s"}}},
	})
	mustExec(t, rc.writer, true,
		st("CREATE TABLE accounts(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL, pad TEXT NOT NULL)"),
		st("CREATE TABLE transfers(id INTEGER PRIMARY KEY, src INTEGER NOT NULL, dst INTEGER NOT NULL, amt INTEGER NOT NULL CHECK (amt > 0))"),
		st("CREATE INDEX transfers_src ON transfers(src)"),
		st("CREATE INDEX transfers_dst ON transfers(dst)"),
		// Two accounts a page: 20 pages, over two PGs and more.
		st("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < ?) INSERT INTO accounts SELECT x, ?, printf('%.1700d', x) FROM c", accounts, initialBalance))
	const total = accounts * initialBalance
	// Every replica caches the accounts' and the log's pages, so the
	// transfers are applied to cached pages.
	setup := mustExec(t, rc.writer, false, st("SELECT 1"))
	rc.catchUp(t, setup, 10*time.Second)
	for _, id := range rc.ids {
		if v := oneRowInts(t, rc.replicas[id], setup, transferCheck, initialBalance); v[0] != total || v[1] != 0 || v[2] != 0 {
			t.Fatalf("replica %s before the transfers: %v", id, v)
		}
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var (
		acked, failed, started atomic.Int64
		maxLSN                 atomic.Uint64
		writers, readers       sync.WaitGroup
	)
	const duration = 3 * time.Second
	deadline := time.Now().Add(duration)
	for w := range 4 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for ctx.Err() == nil && time.Now().Before(deadline) {
				src, dst := 1+rng.IntN(accounts), 1+rng.IntN(accounts-1)
				if dst >= src {
					dst++
				}
				amt := 1 + rng.IntN(50)
				stmts := []sqlclient.Statement{
					st("UPDATE accounts SET bal = bal - ? WHERE id = ?", amt, src),
					st("UPDATE accounts SET bal = bal + ? WHERE id = ?", amt, dst),
					st("INSERT INTO transfers(src, dst, amt) VALUES(?, ?, ?)", src, dst, amt),
				}
				doomed := rng.IntN(6) == 0
				if doomed {
					// The CHECK fails after both UPDATEs and the log row:
					// the whole transfer rolls back.
					stmts = append(stmts, st("INSERT INTO transfers(src, dst, amt) VALUES(?, ?, 0)", src, dst))
				}
				started.Add(1)
				cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				lsn, err := execLSN(cctx, rc.writer, true, stmts...)
				cancel()
				switch {
				case doomed && sqlclient.Code(err) == "constraint_violation":
					failed.Add(1)
				case doomed:
					t.Errorf("a transfer failing its CHECK: %v; want constraint_violation", err)
				case err != nil:
					t.Errorf("transfer %d -> %d of %d: %v", src, dst, amt, err)
				default:
					// maxLSN first: a reader that counts this transfer in
					// acked then loads a maxLSN that covers it.
					for {
						m := maxLSN.Load()
						if lsn <= m || maxLSN.CompareAndSwap(m, lsn) {
							break
						}
					}
					acked.Add(1)
				}
			}
		}()
	}

	var polls atomic.Int64
	rctx, stopReaders := context.WithCancel(context.Background())
	defer stopReaders()
	check := func(who string, row []any) (count int64, bad string) {
		v, ok := ints(row)
		switch {
		case !ok:
			return 0, fmt.Sprintf("answered %v", row)
		case v[0] != total:
			return 0, fmt.Sprintf("the balances sum to %d, not %d (%v)", v[0], total, v)
		case v[2] != 0:
			return 0, fmt.Sprintf("%d accounts disagree with the transfers log (%v)", v[2], v)
		case v[1] > started.Load():
			return 0, fmt.Sprintf("%d transfers logged, more than the %d sent", v[1], started.Load())
		}
		return v[1], ""
	}
	targets := map[string]string{"writer": rc.writer}
	for _, id := range rc.ids {
		targets[id] = rc.replicas[id]
	}
	for who, addr := range targets {
		n := 2
		if who == "writer" {
			n = 1
		}
		for g := range n {
			readers.Add(1)
			go func() {
				defer readers.Done()
				var last int64
				for i := 0; rctx.Err() == nil; i++ {
					floor := acked.Load()
					var minLSN uint64
					if (i+g)%3 == 0 {
						minLSN = maxLSN.Load()
					}
					qctx, cancel := context.WithTimeout(rctx, 15*time.Second)
					rows, _, err := queryRows(qctx, addr, minLSN, transferCheck, initialBalance)
					cancel()
					if rctx.Err() != nil {
						return
					}
					if err != nil {
						t.Errorf("%s: the invariants' query: %v", who, err)
						return
					}
					polls.Add(1)
					count, bad := check(who, rows[0])
					if bad != "" {
						t.Errorf("%s: %s", who, bad)
						return
					}
					if count < last {
						t.Errorf("%s: %d transfers logged, after an earlier query of this reader saw %d", who, count, last)
						return
					}
					if minLSN > 0 && count < floor {
						// Every transfer counted in floor has a reply LSN at
						// or below minLSN.
						t.Errorf("%s: %d transfers logged at min_lsn %d; %d were acknowledged before the query", who, count, minLSN, floor)
						return
					}
					last = count
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
	final := maxLSN.Load()
	t.Logf("%d transfers acknowledged, %d failed half-way as meant; %d invariant queries; final LSN %d", acked.Load(), failed.Load(), polls.Load(), final)
	if acked.Load() < 50 || failed.Load() == 0 || polls.Load() < 30 {
		t.Fatalf("the load was too small to mean anything")
	}
	wrow := mustQuery(t, rc.writer, final, transferCheck, initialBalance)
	if n, bad := check("writer", wrow[0]); bad != "" || n != acked.Load() {
		t.Fatalf("the writer at the end: %v (%s); want %d transfers", wrow[0], bad, acked.Load())
	}
	const dump = "SELECT 'a', id, bal, pad FROM accounts UNION ALL SELECT 't', id, src * 1000 + dst, amt FROM transfers ORDER BY 1, 2"
	want := fmt.Sprint(mustQuery(t, rc.writer, final, dump))
	for _, id := range rc.ids {
		got := fmt.Sprint(mustQuery(t, rc.replicas[id], final, dump))
		if got != want {
			t.Fatalf("replica %s at LSN %d differs from the writer:\n%.300s\nwriter:\n%.300s", id, final, got, want)
		}
		if !strings.Contains(got, "[a 1 ") {
			t.Fatalf("replica %s's dump does not look like the accounts: %.200s", id, got)
		}
		integrityOKAt(t, rc.replicas[id], final)
	}
}
