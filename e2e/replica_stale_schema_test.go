package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/sqlclient"
	"github.com/borealis-db/borealis/internal/wait"
)

// TestReplicaResumedStaleSchema: a replica that has not served a query
// since before a table was created (its pooled connection holds the schema
// of an empty database) is stopped with SIGSTOP for longer than its read
// floor's lease, while the writer commits; storage collects the page
// versions at the VDL the replica stands at. Resumed, the replica may
// refuse queries (snapshot_too_old) until it catches up, but it must never
// answer that the table does not exist: the table exists in every state at
// or above the one it applied.
func TestReplicaResumedStaleSchema(t *testing.T) {
	rc := startReplicaCluster(t, replicaClusterOpts{
		writerArgs: []string{"--lease-ttl", "2s"},
		replicas:   []replicaSpec{{id: "r1", az: "b"}, {id: "r2", az: "c"}},
	})
	w := createSeq(t, rc.writer)
	w.start()
	defer func() {
		if !w.stopped.Load() {
			w.stopped.Store(true)
			<-w.done
		}
	}()
	w.waitAcked(t, 30, 10*time.Second)
	// r2 has applied the CREATE TABLE and some rows.
	rc.catchUp(t, w.state().lsn, 10*time.Second, "r2")
	h := mustHealth(t, rc.replicas["r2"])
	if err := rc.cl.Signal("r2", syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer rc.cl.Signal("r2", syscall.SIGCONT)
	// Storage collects past r2's VDL once its floor's lease (2 s) ran out.
	rc.waitMaterialized(t, h.VDL, 20*time.Second)
	if err := rc.cl.Signal("r2", syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	refused := 0
	var last error
	wait.For(t, 20*time.Second, "r2 to answer after it resumed", func() bool {
		_, err := w.query(ctx, rc.replicas["r2"], false)
		if err == nil {
			return true
		}
		last = err
		if sqlclient.Code(err) == "sql_error" && strings.Contains(err.Error(), "no such table") {
			t.Fatalf("r2, resumed at VDL %d (where seq exists), answers: %v", h.VDL, err)
		}
		if sqlclient.Code(err) != "snapshot_too_old" {
			t.Fatalf("r2 after it resumed: %v", err)
		}
		refused++
		return false
	})
	t.Logf("r2 refused %d queries after it resumed (last: %v)", refused, last)
}
