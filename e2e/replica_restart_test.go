package e2e

import (
	"context"
	"testing"
	"time"
)

// TestReplicaRestartAfterGC: a replica SIGKILLed and started again once
// storage has materialized (collected) page versions, and a new replica
// started on a volume in that state, become ready and catch up with every
// commit, those made while the first one was down included.
func TestReplicaRestartAfterGC(t *testing.T) {
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
	ctx := context.Background()

	if err := rc.cl.Kill("r1"); err != nil {
		t.Fatal(err)
	}
	down := w.state()
	w.waitAcked(t, down.acked+60, 20*time.Second)
	// Storage has collected below what r1 had applied.
	rc.waitMaterialized(t, down.lsn, 20*time.Second)
	if _, err := w.query(ctx, rc.replicas["r2"], true); err != nil {
		t.Fatalf("r2 with r1 down: %v", err)
	}
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := rc.cl.StartAgain("r1"); err != nil {
		t.Fatal(err)
	}
	if err := rc.cl.WaitReady(rctx, "r1", 15*time.Second, nil); err != nil {
		t.Fatalf("r1 started again after storage collected old versions: %v", err)
	}
	t.Logf("r1 restarted and attached in %s", time.Since(start).Round(time.Millisecond))
	s := w.state()
	n, err := w.query(ctx, rc.replicas["r1"], true)
	if err != nil {
		t.Fatalf("the restarted r1: %v", err)
	}
	if n <= down.acked+60 || n < s.acked {
		t.Fatalf("the restarted r1 shows rows 1..%d; %d were acknowledged while it was down and %d before the query", n, down.acked+60, s.acked)
	}
	t.Logf("r1 down from row %d; restarted, it shows rows 1..%d", down.acked, n)

	// A replica new to the volume.
	addr := freeAddr(t)
	if err := rc.cl.StartReplica(rctx, "r3", "a", "main", addr); err != nil {
		t.Fatalf("a new replica on a volume whose storage collected old versions: %v", err)
	}
	rc.replicas["r3"], rc.ids = addr, append(rc.ids, "r3")
	w.stop(t)
	final := w.state()
	for _, id := range rc.ids {
		sameAsWriter(t, rc.writer, rc.replicas[id], final.lsn)
	}
}
