package e2e

import (
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/wait"
)

// TestReplicaRouterStallStoppedReplicaInFlight: queries that reach the reader
// endpoint just as a replica stops (SIGSTOP: its kernel still accepts
// connections, nothing answers) are answered by another replica or by the
// writer within a few seconds, not held for as long as the replica stays
// stopped: the router notices the stop within a health poll's timeout, and
// a query is read-only, so sending it elsewhere is safe.
func TestReplicaRouterStallStoppedReplicaInFlight(t *testing.T) {
	rc := startReplicaCluster(t, replicaClusterOpts{
		replicas: []replicaSpec{{id: "r1", az: "b"}, {id: "r2", az: "c"}},
		router:   true,
	})
	// The queries below ask for this commit (min_lsn), as a client reading
	// its own write does: a replica the router takes may not have applied
	// it yet, and this test is about a stopped replica, not a lagging one.
	lsn := mustExec(t, rc.writer, true, st("CREATE TABLE t(k INTEGER PRIMARY KEY)"), st("INSERT INTO t VALUES(1), (2), (3)"))
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
	defer rc.cl.Signal("r1", syscall.SIGCONT)
	const within = 4 * time.Second
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The stop outlasts the test's patience: 8 s.
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
			defer cancel()
			rows, inst, err := queryRows(ctx, rc.readerEP, lsn, "SELECT count(*) FROM t")
			took := time.Since(start)
			switch {
			case err != nil:
				t.Errorf("query %d on the reader endpoint, sent as r1 stopped: %v after %s", i, err, took.Round(time.Millisecond))
			case took > within:
				t.Errorf("query %d on the reader endpoint, sent as r1 stopped, answered by %s after %s (want within %s)", i, inst, took.Round(time.Millisecond), within)
			case len(rows) != 1 || rows[0][0] != int64(3):
				t.Errorf("query %d answered %v", i, rows)
			default:
				t.Logf("query %d answered by %s after %s", i, inst, took.Round(time.Millisecond))
			}
		}()
	}
	wg.Wait()
}
