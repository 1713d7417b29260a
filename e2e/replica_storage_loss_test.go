package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlclient"
)

// TestReplicaReadsThroughStorageLoss: a replica whose page cache cannot
// hold the table reads most pages from storage. With an AZ and one more
// storage node SIGKILLed (three of six segments of every PG gone), it goes
// on answering, and every answer is the table as it was: a read goes to one
// segment complete at its read point, and the three left hold everything.
func TestReplicaReadsThroughStorageLoss(t *testing.T) {
	rc := startReplicaCluster(t, replicaClusterOpts{
		replicas: []replicaSpec{{id: "r1", az: "b", extra: []string{"--cache-mib", "1"}}},
	})
	mustExec(t, rc.writer, false, st("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
	var lsn uint64
	pad := strings.Repeat("x", 400)
	for batch := range 20 {
		stmts := make([]sqlclient.Statement, 0, 200)
		for i := range 200 {
			k := batch*200 + i + 1
			stmts = append(stmts, st("INSERT INTO t(k, v) VALUES(?, ?)", k, pad))
		}
		lsn = mustExec(t, rc.writer, true, stmts...)
	}
	want := oneRowInts(t, rc.replicas["r1"], lsn, "SELECT count(*), sum(k), sum(length(v)) FROM t")
	if want[0] != 4000 {
		t.Fatalf("the replica counts %d rows, want 4000", want[0])
	}
	for _, id := range []string{"s1", "s2", "s3"} {
		if err := rc.cl.Kill(id); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for round := range 5 {
		rows, _, err := queryRows(ctx, rc.replicas["r1"], lsn, "SELECT count(*), sum(k), sum(length(v)) FROM t")
		if err != nil {
			t.Fatalf("round %d, with s1, s2 and s3 down: %v", round, err)
		}
		got, ok := ints(rows[0])
		if !ok || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
			t.Fatalf("round %d, with s1, s2 and s3 down: %v, want %v", round, rows[0], want)
		}
	}
	if h := mustHealth(t, rc.replicas["r1"]); !h.Ready {
		t.Fatalf("the replica is not ready with three storage nodes down: %+v", h)
	}
}
