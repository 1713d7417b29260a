package volume

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/borealis-db/borealis/internal/wait"
)

// TestRecoverSaysWhatItWaitsFor: with three of six nodes down a read quorum
// answers, but the truncation needs a write quorum, so recovery waits. While
// it waits, RecoverConfig.Waiting names the PG, how many segments
// acknowledged, how many must, and each missing segment with its address;
// once a node comes back the recovery finishes and the wait is reported
// over (nil).
func TestRecoverSaysWhatItWaitsFor(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, nil)
	ctx := ctxT(t, 60*time.Second)
	if _, err := c.Commit(ctx, []PageWrite{{Page: 1, New: pageImage(1, 0)}}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	down := []int{0, 2, 4}
	for _, i := range down {
		cl.stop(i)
	}
	var mu sync.Mutex
	var waits []*RecoverWait
	done := make(chan error, 1)
	go func() {
		_, err := Recover(ctx, RecoverConfig{VolumeID: 7, Epoch: 2, PageSize: 4096, PagesPerPG: 16, SkipRecord: true,
			PGs: []RecoverPG{{PG: 0, Membership: OneSet(cl.members)}}, RPCTimeout: time.Second, Logger: testLogger(),
			Waiting: func(w *RecoverWait) {
				mu.Lock()
				waits = append(waits, w)
				mu.Unlock()
			}})
		done <- err
	}()
	last := func() *RecoverWait {
		mu.Lock()
		defer mu.Unlock()
		if len(waits) == 0 {
			return nil
		}
		return waits[len(waits)-1]
	}
	// Every missing segment has failed at least once, so all three are named.
	wait.For(t, 20*time.Second, "recovery to report that it waits for three segments", func() bool {
		w := last()
		return w != nil && len(w.Causes) == 3
	})
	w := last()
	if w.PG != 0 || w.Step != "Truncate" || w.Have != 3 || w.Need != 4 || w.Segments != 6 {
		t.Fatalf("wait reported: %+v", w)
	}
	msg := w.String()
	for _, want := range []string{"waiting for a write quorum of PG 0 to acknowledge the truncation: 3 of its 6 segments did, 4 must"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("%q lacks %q", msg, want)
		}
	}
	for _, i := range down {
		m := cl.members[i]
		if !strings.Contains(msg, m.NodeID+" ("+m.Addr+"): ") {
			t.Fatalf("%q does not name %s at %s", msg, m.NodeID, m.Addr)
		}
	}
	t.Log(msg)
	select {
	case err := <-done:
		t.Fatalf("recovery ended with three nodes down: %v", err)
	default:
	}

	cl.restart(down[0])
	if err := <-done; err != nil {
		t.Fatalf("recovery with a node back: %v", err)
	}
	if w := last(); w != nil {
		t.Fatalf("recovery finished, and the last wait reported is %v, not nil", w)
	}
}
