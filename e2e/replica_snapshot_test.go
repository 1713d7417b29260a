package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/wait"
)

// The snapshot tests' table: snapRows rows of one page each (a 3500-byte
// pad), more pages than a SQLite connection's page cache holds (2000 KiB),
// so a query that visits them over and over reads them from the VFS, at
// its read point, each time. A rewrite (UPDATE snap SET ver = ver + 1)
// changes every page in one MTR: in any one state every row has the same
// ver.
const snapRows = 700

func createSnapTable(t *testing.T, addr string) uint64 {
	t.Helper()
	return mustExec(t, addr, true,
		st("CREATE TABLE snap(id INTEGER PRIMARY KEY, ver INTEGER NOT NULL, pad BLOB NOT NULL)"),
		st("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < ?) INSERT INTO snap SELECT x, 0, randomblob(3500) FROM c", snapRows))
}

// warmSnap reads every page of snap on every replica once it has applied
// lsn, with no write in flight: the replicas' page caches hold them, so the
// rewrites that follow are applied to cached pages (the other path, a
// record of an uncached page dropped and the page read from storage, is
// taken by whatever is evicted or never read).
func (rc *replicaCluster) warmSnap(t *testing.T, lsn uint64) {
	t.Helper()
	rc.catchUp(t, lsn, 10*time.Second)
	for _, id := range rc.ids {
		v := oneRowInts(t, rc.replicas[id], lsn, "SELECT count(*), sum(length(pad)) FROM snap")
		if v[0] != snapRows {
			t.Fatalf("replica %s: %v", id, v)
		}
	}
}

// slowSnapQuery scans snap, then, for steps rows of a recursive CTE (about
// a second per million on this machine), looks a row of snap up every 997
// steps (cycling through all rows, so each lookup misses SQLite's page
// cache), then scans snap again. It answers, for each of the three parts,
// min(ver), max(ver) and the rows seen. A torn view, a read point that
// moved or a page version of another state, shows as two different vers.
const slowSnapQuery = `WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x+1 FROM c WHERE x < ?)
SELECT
	(SELECT min(ver) || ' ' || max(ver) || ' ' || count(*) FROM snap),
	(SELECT min(s.ver) || ' ' || max(s.ver) || ' ' || count(*) FROM c JOIN snap s ON s.id = c.x % 700 + 1 WHERE c.x % 997 = 0),
	(SELECT max(ver) || ' ' || min(ver) || ' ' || sum(1) FROM snap WHERE pad IS NOT NULL)`

// snapAnswer checks slowSnapQuery's answer: one ver throughout, with every
// row seen by the scans and steps/997+1 lookups. It returns the ver.
func snapAnswer(row []any, steps int) (int64, error) {
	if len(row) != 3 {
		return 0, fmt.Errorf("answered %v", row)
	}
	var vers []int64
	for i, v := range row {
		s, ok := v.(string)
		if !ok {
			return 0, fmt.Errorf("part %d answered %v (%T)", i+1, v, v)
		}
		f := strings.Fields(s)
		if len(f) != 3 {
			return 0, fmt.Errorf("part %d answered %q", i+1, s)
		}
		var n [3]int64
		for j := range f {
			var err error
			if n[j], err = strconv.ParseInt(f[j], 10, 64); err != nil {
				return 0, fmt.Errorf("part %d answered %q", i+1, s)
			}
		}
		wantRows := int64(snapRows)
		if i == 1 {
			wantRows = int64(steps/997 + 1)
		}
		if n[2] != wantRows {
			return 0, fmt.Errorf("part %d saw %d rows, want %d (%v)", i+1, n[2], wantRows, row)
		}
		vers = append(vers, n[0], n[1])
	}
	for _, v := range vers {
		if v != vers[0] {
			return 0, fmt.Errorf("the query saw more than one state: vers %v (first scan, lookups, last scan: min and max each)", vers)
		}
	}
	return vers[0], nil
}

// rewriter rewrites every row of snap, one MTR at a time, until stopped:
// lsns[v] is the LSN of the reply of the rewrite to ver v.
type rewriter struct {
	mu      sync.Mutex
	lsns    []uint64 // index: ver
	started int64    // the highest ver a rewrite was sent for
	err     error
	stopped atomic.Bool
	done    chan struct{}
}

// startRewriter starts rewriting snap on the writer at addr, whose table
// is at ver 0 at LSN base.
func startRewriter(addr string, base uint64) *rewriter {
	rw := &rewriter{lsns: []uint64{base}, done: make(chan struct{})}
	go func() {
		defer close(rw.done)
		for !rw.stopped.Load() {
			rw.mu.Lock()
			rw.started = int64(len(rw.lsns))
			rw.mu.Unlock()
			cctx, c := context.WithTimeout(context.Background(), 20*time.Second)
			lsn, err := execLSN(cctx, addr, false, st("UPDATE snap SET ver = ver + 1"))
			c()
			rw.mu.Lock()
			if err != nil {
				rw.err = err
				rw.mu.Unlock()
				return
			}
			rw.lsns = append(rw.lsns, lsn)
			rw.mu.Unlock()
		}
	}()
	return rw
}

// state returns the highest ver acknowledged with its LSN, and the highest
// sent.
func (rw *rewriter) state() (acked int64, lsn uint64, started int64) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return int64(len(rw.lsns) - 1), rw.lsns[len(rw.lsns)-1], rw.started
}

// waitVer waits until the rewriter has had ver n acknowledged.
func (rw *rewriter) waitVer(t *testing.T, n int64) {
	t.Helper()
	wait.For(t, 20*time.Second, fmt.Sprintf("the rewriter to reach ver %d", n), func() bool {
		acked, _, _ := rw.state()
		rw.mu.Lock()
		err := rw.err
		rw.mu.Unlock()
		if err != nil {
			t.Fatalf("the rewriter: %v", err)
		}
		return acked >= n
	})
}

// finish stops the rewriter, once its rewrite in flight is acknowledged,
// and returns its error.
func (rw *rewriter) finish() error {
	rw.stopped.Store(true)
	<-rw.done
	rw.mu.Lock()
	defer rw.mu.Unlock()
	return rw.err
}

// TestReplicaLongQueryOneSnapshot: a query of a few seconds on each
// replica, which scans a table, looks its rows up one by one throughout,
// and scans it again, while the writer rewrites every row of it as fast as
// it can. Each query sees one state from start to end: a ver the writer
// had acknowledged by the time the query was sent (it asks for that ver's
// min_lsn) or rewrote later, while the replica applies many newer rewrites
// of the same pages during the query.
func TestReplicaLongQueryOneSnapshot(t *testing.T) {
	rc := startReplicaCluster(t, replicaClusterOpts{
		replicas: []replicaSpec{{id: "r1", az: "b"}, {id: "r2", az: "c"}},
	})
	base := createSnapTable(t, rc.writer)
	rc.warmSnap(t, base)
	rw := startRewriter(rc.writer, base)
	defer rw.finish()
	rw.waitVer(t, 3)

	const steps = 600_000
	var wg sync.WaitGroup
	for _, id := range rc.ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ackedBefore, lsn, _ := rw.state()
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			rows, _, err := queryRows(ctx, rc.replicas[id], lsn, slowSnapQuery, steps)
			cancel()
			took := time.Since(start)
			ackedAfter, _, startedAfter := rw.state()
			if err != nil {
				t.Errorf("replica %s: the slow query: %v", id, err)
				return
			}
			ver, err := snapAnswer(rows[0], steps)
			if err != nil {
				t.Errorf("replica %s: %v", id, err)
				return
			}
			if ver < ackedBefore || ver > startedAfter {
				t.Errorf("replica %s saw ver %d; the writer had acknowledged ver %d when the query was sent (with its min_lsn) and sent at most ver %d by its end", id, ver, ackedBefore, startedAfter)
				return
			}
			h, err := health(rc.replicas[id])
			if err != nil {
				t.Errorf("replica %s: %v", id, err)
				return
			}
			rw.mu.Lock()
			var newer int
			for v := ver + 1; v < int64(len(rw.lsns)); v++ {
				if rw.lsns[v] <= h.VDL {
					newer++
				}
			}
			rw.mu.Unlock()
			t.Logf("replica %s: one state (ver %d) in %s; the writer acknowledged vers %d..%d meanwhile, the replica has applied %d rewrites newer than its snapshot", id, ver, took.Round(time.Millisecond), ackedBefore, ackedAfter, newer)
			if newer < 3 {
				t.Errorf("replica %s applied only %d newer rewrites of the same pages while its query ran: the test proves little", id, newer)
			}
		}()
	}
	wg.Wait()
	if err := rw.finish(); err != nil {
		t.Fatalf("the rewriter: %v", err)
	}
	acked, lsn, _ := rw.state()
	for _, id := range rc.ids {
		v := oneRowInts(t, rc.replicas[id], lsn, "SELECT min(ver), max(ver), count(*) FROM snap")
		if v[0] != acked || v[1] != acked || v[2] != snapRows {
			t.Fatalf("replica %s after the rewrites: %v; want ver %d in all %d rows", id, v, acked, snapRows)
		}
	}
}
