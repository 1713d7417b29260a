package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// TestFailoverAZPlusOne: with an AZ and one more storage node down (s1, s2
// and s3: three of every PG's six segments), the writer is SIGKILLed. A
// replica is chosen and takes the lease, but its recovery cannot write the
// truncation to a write quorum: the promotion waits, and the promoting
// instance's /v1/health (and the failover record, which `borealis status`
// shows) says that it waits for a write quorum and which nodes are
// missing. Meanwhile the other replica goes on answering queries at its
// applied VDL, and writes fail with a clear code: through the cluster
// endpoint, no_writer once --failover-wait runs out, and at the promoting
// instance itself, not_ready. Once the three nodes are back the promotion
// completes, writes go on through the cluster endpoint, and every
// acknowledged row is there; none of the refused writes is.
func TestFailoverAZPlusOne(t *testing.T) {
	fc := startFailoverCluster(t, replicaClusterOpts{
		// Short, so that a write through the cluster endpoint gives up
		// while the promotion still waits, rather than outlast it.
		routerArgs: []string{"--failover-wait", "1s"},
	})
	mustExec(t, fc.clusterEP, false, st("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
	const acked = 40
	var lsn uint64
	for k := 1; k <= acked; k++ {
		lsn = mustExec(t, fc.clusterEP, false, st("INSERT INTO t(k, v) VALUES(?, ?)", k, fmt.Sprintf("acknowledged %d", k)))
	}
	fc.catchUp(t, lsn, 20*time.Second)
	want := oneRowInts(t, fc.writer, lsn, "SELECT count(*), sum(k) FROM t")
	st0, err := fc.writerState()
	if err != nil || st0.Holder != "writer" {
		t.Fatalf("writer state before the faults: %v %v", st0, err)
	}

	for _, id := range []string{"s1", "s2", "s3"} {
		if err := fc.cl.Kill(id); err != nil {
			t.Fatal(err)
		}
	}
	killed := time.Now()
	if err := fc.cl.Kill("writer"); err != nil {
		t.Fatal(err)
	}

	// A replica takes the lease once the dead writer's has expired, and its
	// recovery waits for a write quorum to take the truncation.
	var target, status string
	var rec *pb.FailoverInfo
	wait.For(t, 30*time.Second, "a replica to take the writer lease and say that its recovery waits for a write quorum", func() bool {
		ws, err := fc.writerState()
		if err != nil || ws.Failover == nil || ws.Failover.State != "promoting" || ws.Holder == "" || ws.Holder == "writer" {
			return false
		}
		h, err := health(fc.addr(ws.Holder))
		if err != nil || h.Ready {
			return false
		}
		target, status, rec = ws.Holder, h.Status, ws.Failover
		return strings.Contains(status, "write quorum")
	})
	t.Logf("%s promotes (round %d, from epoch %d), %s after the kill; its status: %s", target, rec.Round, st0.Epoch, time.Since(killed).Round(time.Millisecond), status)
	for _, id := range []string{"s1", "s2", "s3"} {
		if !strings.Contains(status, id+" (") {
			t.Errorf("the promoting instance's status does not name the missing node %s: %q", id, status)
		}
	}
	other := "r1"
	if target == "r1" {
		other = "r2"
	}

	// `borealis status` shows the failover record: its why says what the
	// promotion waits for, as the promoting instance reports it.
	wait.For(t, 10*time.Second, "the failover record's why to name the missing write quorum", func() bool {
		ws, err := fc.writerState()
		if err != nil || ws.Failover == nil {
			return false
		}
		rec = ws.Failover
		return strings.Contains(rec.Why, "write quorum")
	})
	for _, id := range []string{"s1", "s2", "s3"} {
		if !strings.Contains(rec.Why, id+" (") {
			t.Errorf("the failover record's why does not name the missing node %s: %q", id, rec.Why)
		}
	}
	t.Logf("failover record: round %d %s, state %s, target %s, why %q", rec.Round, rec.Kind, rec.State, rec.Target, rec.Why)

	// The other replica answers at its applied VDL: every acknowledged row.
	for round := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		rows, _, err := queryRows(ctx, fc.replicas[other], lsn, "SELECT count(*), sum(k) FROM t")
		cancel()
		if err != nil {
			t.Fatalf("round %d: replica %s, with s1, s2, s3 and the writer down: %v", round, other, err)
		}
		got, ok := ints(rows[0])
		if !ok || got[0] != want[0] || got[1] != want[1] {
			t.Fatalf("round %d: replica %s answers %v, want %v", round, other, rows[0], want)
		}
	}
	if h := mustHealth(t, fc.replicas[other]); !h.Ready || h.Role != "replica" {
		t.Fatalf("replica %s while the promotion waits: ready %v, role %q, status %q", other, h.Ready, h.Role, h.Status)
	}

	// A write through the cluster endpoint waits --failover-wait for a
	// writer, then fails, saying that it did not run and what the failover
	// waits for.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	_, err = execLSN(ctx, fc.clusterEP, false, st("INSERT INTO t(k, v) VALUES(?, ?)", acked+1, "refused by the router"))
	cancel()
	var se *sqlclient.Error
	if !errors.As(err, &se) || se.Code != "no_writer" || se.Status != 503 || !strings.Contains(se.Message, "write quorum") {
		t.Fatalf("a write through the cluster endpoint while the promotion waits: %v; want 503 no_writer naming the write quorum", err)
	}
	t.Logf("through the cluster endpoint: %d %s: %s", se.Status, se.Code, se.Message)
	// At the promoting instance itself: not ready, saying why.
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	_, err = execLSN(ctx, fc.addr(target), false, st("INSERT INTO t(k, v) VALUES(?, ?)", acked+2, "refused by the instance"))
	cancel()
	if !errors.As(err, &se) || se.Code != "not_ready" || !strings.Contains(se.Message, "write quorum") {
		t.Fatalf("a write at the promoting %s: %v; want not_ready naming the write quorum", target, err)
	}
	t.Logf("at %s: %d %s: %s", target, se.Status, se.Code, se.Message)

	// The promotion still waits, for the same target: nobody gave up on it
	// and chose another replica, which would wait all the same.
	if ws, err := fc.writerState(); err != nil || ws.Holder != target || ws.Failover.GetState() != "promoting" || ws.Failover.GetRound() != rec.Round {
		t.Fatalf("writer state while storage is down: %v %v; want round %d still promoting %s", ws, err, rec.Round, target)
	}

	restart := time.Now()
	for _, id := range []string{"s1", "s2", "s3"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := fc.cl.Restart(ctx, id)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	wait.For(t, 30*time.Second, fmt.Sprintf("the promotion of %s to complete once s1, s2 and s3 are back", target), func() bool {
		ws, err := fc.writerState()
		return err == nil && ws.Holder == target && ws.Writer.GetId() == target && ws.Failover.GetRound() == rec.Round && ws.Failover.GetState() == "done"
	})
	t.Logf("%s serves as the writer %s after the storage nodes' restart", target, time.Since(restart).Round(time.Millisecond))
	wait.For(t, 20*time.Second, "the router to follow the new writer", func() bool {
		s, err := routerHealth(fc.clusterEP)
		return err == nil && s.Writer != nil && s.Writer.ID == target
	})
	lsn2 := mustExec(t, fc.clusterEP, false, st("INSERT INTO t(k, v) VALUES(?, ?)", acked+3, "after the promotion"))

	// Every acknowledged row, at the new writer and at the other replica;
	// neither refused write.
	wantRows := make([][]any, 0, acked+1)
	for k := 1; k <= acked; k++ {
		wantRows = append(wantRows, []any{int64(k), fmt.Sprintf("acknowledged %d", k)})
	}
	wantRows = append(wantRows, []any{int64(acked + 3), "after the promotion"})
	fc.catchUp(t, lsn2, 20*time.Second, other)
	for _, addr := range []string{fc.addr(target), fc.replicas[other]} {
		got := mustQuery(t, addr, lsn2, "SELECT k, v FROM t ORDER BY k")
		if fmt.Sprint(got) != fmt.Sprint(wantRows) {
			t.Fatalf("rows at %s after the promotion:\n%v\nwant:\n%v", addr, got, wantRows)
		}
	}
	integrityOKAt(t, fc.addr(target), lsn2)
}
