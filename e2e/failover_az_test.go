package e2e

import (
	"sync"
	"testing"
	"time"
)

// TestFailoverWriterAZLost SIGKILLs the writer and both storage nodes of
// its AZ (a) at once, under a load of two-table transactions through the
// cluster endpoint. A replica of another AZ is promoted: its recovery and
// its commits need only four of each PG's six segments, and the writes go
// on. Every acknowledged transaction is there, whole.
func TestFailoverWriterAZLost(t *testing.T) {
	fc := startFailoverCluster(t, replicaClusterOpts{})
	txLoadTables(t, fc.clusterEP)
	l := startTxLoad(t, fc.clusterEP, 4)
	l.waitAcks(t, 30, 20*time.Second, "before the AZ dies")
	old := fc.mustWriterState(t)
	if old.Holder != "writer" || old.Writer.Az != "a" {
		t.Fatalf("the writer is %s in AZ %q, want writer in AZ a", old.Holder, old.Writer.Az)
	}
	var az []string
	for _, c := range fc.cl.Components() {
		if c.Role == "storage" && c.AZ == "a" {
			az = append(az, c.ID)
		}
	}
	az = append(az, "writer")
	if len(az) != 3 {
		t.Fatalf("AZ a holds %v, want two storage nodes and the writer", az)
	}

	// All at once, as an AZ's power going would.
	killed := time.Now()
	var wg sync.WaitGroup
	for _, id := range az {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fc.cl.Kill(id); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	gone := time.Now()
	t.Logf("SIGKILLed %v in %s", az, gone.Sub(killed).Round(time.Millisecond))

	st := fc.waitPromoted(t, "writer", old.Epoch, 30*time.Second)
	if st.Writer.Az == "a" {
		t.Fatalf("%s was promoted in the dead AZ a", st.Holder)
	}
	t.Logf("%s (AZ %s) serves at epoch %d %s after the kill (failover: lease %d, epoch %d, recovery %d, open %d ms)",
		st.Holder, st.Writer.Az, st.Epoch, time.Since(killed).Round(time.Millisecond),
		st.Failover.LeaseMs, st.Failover.EpochMs, st.Failover.RecoveryMs, st.Failover.OpenMs)

	// Writes go on, on the four storage nodes of AZs b and c.
	before := l.acks()
	l.waitAcks(t, 100, 30*time.Second, "with AZ a gone")
	if first := l.firstAckAfter(gone); !first.IsZero() {
		t.Logf("first write acknowledged %s after the kill; %d acknowledged since", first.Sub(killed).Round(time.Millisecond), l.acks()-before)
	}
	l.check(t, fc.clusterEP)
}
