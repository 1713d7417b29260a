package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// subscription returns the writer's view of replica id's subscription.
func subscription(h *sqlclient.Health, id string) (sqlclient.StreamHealth, bool) {
	for _, s := range h.Replicas {
		if s.ID == id {
			return s, true
		}
	}
	return sqlclient.StreamHealth{}, false
}

// waitPinned waits until the writer hears that replica id pins a read
// point below what it has applied, and returns that read point.
func waitPinned(t *testing.T, writer, id string, within time.Duration) uint64 {
	t.Helper()
	var pin uint64
	wait.For(t, within, "the writer to hear of a read point "+id+" pins", func() bool {
		h, err := health(writer)
		if err != nil {
			return false
		}
		s, ok := subscription(h, id)
		if ok && s.ReadFloor < s.Applied {
			pin = s.ReadFloor
			return true
		}
		return false
	})
	return pin
}

// asyncQuery runs a query in the background.
type asyncQuery struct {
	rows [][]any
	err  error
	took time.Duration
	done chan struct{}
}

func queryAsync(addr string, minLSN uint64, sql string, params ...any) *asyncQuery {
	q := &asyncQuery{done: make(chan struct{})}
	go func() {
		defer close(q.done)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		q.rows, _, q.err = queryRows(ctx, addr, minLSN, sql, params...)
		q.took = time.Since(start)
	}()
	return q
}

func (q *asyncQuery) finished() bool {
	select {
	case <-q.done:
		return true
	default:
		return false
	}
}

// calibrateSteps returns how many steps of a recursive CTE take about d on
// the instance at addr now.
func calibrateSteps(t *testing.T, addr string, d time.Duration) int {
	t.Helper()
	const probe = 300_000
	start := time.Now()
	mustQuery(t, addr, 0, "WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x+1 FROM c WHERE x < ?) SELECT count(*) FROM c", probe)
	took := time.Since(start)
	steps := int(float64(probe) * float64(d) / float64(max(took, time.Millisecond)))
	return min(max(steps, probe), 30_000_000)
}

// TestReplicaGC: a replica's long query pins an old read point while the
// writer rewrites every page it reads, over and over: the query succeeds
// with that read point's values, and the volume's PGMRPL (the writer's
// read_point) stays at or below the pin meanwhile. A replica SIGKILLed in
// the middle of such a query stops holding GC back once its floor's lease
// (the writer's --lease-ttl, 2 s) runs out: the PGMRPL passes its pin
// within the lease plus 4 s; started again, it catches up.
// On a replica started with --max-read-age 2s, a read pinned longer fails
// with snapshot_too_old, and the pin stops holding the PGMRPL back while
// the query still runs.
func TestReplicaGC(t *testing.T) {
	const ttl = 2 * time.Second
	rc := startReplicaCluster(t, replicaClusterOpts{
		writerArgs: []string{"--lease-ttl", ttl.String()},
		replicas: []replicaSpec{
			{id: "r1", az: "b"},
			{id: "r2", az: "c"},
			{id: "r3", az: "a", extra: []string{"--max-read-age", "2s"}},
		},
	})
	base := createSnapTable(t, rc.writer)
	rc.warmSnap(t, base)
	rw := startRewriter(rc.writer, base)
	defer rw.finish()
	rw.waitVer(t, 2)
	verAt := func(rp uint64) int64 {
		rw.mu.Lock()
		defer rw.mu.Unlock()
		v := int64(-1)
		for i, l := range rw.lsns {
			if l <= rp {
				v = int64(i)
			}
		}
		return v
	}

	t.Run("a pinned read keeps its versions", func(t *testing.T) {
		const steps = 600_000
		_, lsn, _ := rw.state()
		q := queryAsync(rc.replicas["r1"], lsn, slowSnapQuery, steps)
		pin := waitPinned(t, rc.writer, "r1", 10*time.Second)
		pinVer := verAt(pin)
		// While the query runs, the PGMRPL stays at or below its pin, and
		// the writer rewrites the pinned pages again and again.
		var held, maxVDL uint64
		for !q.finished() {
			h, err := health(rc.writer)
			if err != nil {
				t.Fatal(err)
			}
			if !q.finished() && h.ReadPoint > pin {
				t.Fatalf("the writer's read point (PGMRPL) %d passed r1's pin %d while r1's query still runs", h.ReadPoint, pin)
			}
			held, maxVDL = h.ReadPoint, h.VDL
			select {
			case <-q.done:
			case <-time.After(100 * time.Millisecond):
			}
		}
		if q.err != nil {
			t.Fatalf("the pinned query on r1: %v", q.err)
		}
		ver, err := snapAnswer(q.rows[0], steps)
		if err != nil {
			t.Fatalf("the pinned query on r1: %v", err)
		}
		acked, _, _ := rw.state()
		t.Logf("r1's query pinned LSN %d (ver %d) for %s, saw ver %d; the writer rewrote to ver %d meanwhile, VDL %d, PGMRPL held at %d", pin, pinVer, q.took.Round(time.Millisecond), ver, acked, maxVDL, held)
		if ver != pinVer {
			t.Fatalf("r1's query pinned at LSN %d, where the table was at ver %d, saw ver %d", pin, pinVer, ver)
		}
		if acked < ver+5 {
			t.Fatalf("only %d rewrites while the query ran: the test proves little", acked-ver)
		}
	})

	t.Run("a dead replica's pin is let go", func(t *testing.T) {
		_, lsn, _ := rw.state()
		q := queryAsync(rc.replicas["r2"], lsn, slowSnapQuery, 50_000_000)
		pin := waitPinned(t, rc.writer, "r2", 10*time.Second)
		// The pin holds the PGMRPL back while the writer moves on.
		wait.For(t, 10*time.Second, "the writer's VDL to move well past r2's pin", func() bool {
			h, err := health(rc.writer)
			if err != nil {
				return false
			}
			if h.ReadPoint > pin {
				t.Fatalf("the PGMRPL %d passed r2's live pin %d", h.ReadPoint, pin)
			}
			return verAt(h.VDL) >= verAt(pin)+5
		})
		if err := rc.cl.Kill("r2"); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		<-q.done
		if q.err == nil {
			t.Fatalf("the query on the killed r2 answered")
		}
		var mrp uint64
		wait.For(t, ttl+4*time.Second, "the PGMRPL to pass the killed r2's pin", func() bool {
			h, err := health(rc.writer)
			mrp = h.ReadPoint
			return err == nil && h.ReadPoint > pin
		})
		t.Logf("r2 killed while pinning LSN %d; the PGMRPL passed it %s later (now %d; floor lease %s)", pin, time.Since(killed).Round(time.Millisecond), mrp, ttl)
		// Started again, r2 catches up and reads the newest state.
		if err := rc.cl.Restart(context.Background(), "r2"); err != nil {
			t.Fatal(err)
		}
		_, lsn, _ = rw.state()
		v := oneRowInts(t, rc.replicas["r2"], lsn, "SELECT min(ver), max(ver), count(*) FROM snap")
		if v[0] != v[1] || v[0] < verAt(lsn) || v[2] != snapRows {
			t.Fatalf("the restarted r2 at min_lsn %d (ver %d): %v", lsn, verAt(lsn), v)
		}
	})

	t.Run("max read age", func(t *testing.T) {
		// A short query is fine.
		_, lsn, _ := rw.state()
		v := oneRowInts(t, rc.replicas["r3"], lsn, "SELECT ver, id FROM snap WHERE id = 1")
		if v[0] < verAt(lsn) {
			t.Fatalf("r3 at min_lsn %d (ver %d): %v", lsn, verAt(lsn), v)
		}
		// A query that first counts for longer than the read age, then
		// reads the table.
		const q3 = `WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x+1 FROM c WHERE x < ?)
			SELECT (SELECT count(*) FROM c), (SELECT sum(ver) FROM snap)`
		// Long enough that the query still runs once the PGMRPL passes
		// its pin, a moment after the 2s read age, even if it runs twice
		// as fast as the calibration measured (a machine whose load
		// fell).
		steps := calibrateSteps(t, rc.replicas["r3"], 6*time.Second)
		_, lsn, _ = rw.state()
		start := time.Now()
		q := queryAsync(rc.replicas["r3"], lsn, q3, steps)
		pin := waitPinned(t, rc.writer, "r3", 10*time.Second)
		var passed time.Duration
		var once sync.Once
		for !q.finished() {
			h, err := health(rc.writer)
			if err == nil && h.ReadPoint > pin {
				once.Do(func() { passed = time.Since(start) })
			}
			select {
			case <-q.done:
			case <-time.After(50 * time.Millisecond):
			}
		}
		t.Logf("r3's query (pinned at LSN %d) ended after %s: %v", pin, q.took.Round(time.Millisecond), q.err)
		if sqlclient.Code(q.err) != "snapshot_too_old" {
			t.Fatalf("a read pinned for %s on a replica of --max-read-age 2s: %v %v; want snapshot_too_old", q.took.Round(time.Millisecond), q.rows, q.err)
		}
		if q.took < 2*time.Second {
			t.Fatalf("snapshot_too_old after %s, before the 2s read age", q.took)
		}
		if passed == 0 {
			t.Fatalf("the PGMRPL stayed at or below r3's pin %d for the whole %s query, beyond its 2s read age", pin, q.took.Round(time.Millisecond))
		}
		t.Logf("the PGMRPL passed r3's pin %s after the query began", passed.Round(time.Millisecond))
		if passed < 2*time.Second {
			t.Fatalf("the PGMRPL passed r3's pin %d %s after its query began, within its read age", pin, passed)
		}
		// r3 answers again.
		_, lsn, _ = rw.state()
		v = oneRowInts(t, rc.replicas["r3"], lsn, "SELECT ver, id FROM snap WHERE id = 2")
		if v[0] < verAt(lsn) {
			t.Fatalf("r3 after the refusal, at min_lsn %d (ver %d): %v", lsn, verAt(lsn), v)
		}
	})
	if err := rw.finish(); err != nil {
		t.Fatalf("the rewriter: %v", err)
	}
}
