package e2e

import (
	"bytes"
	"context"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// TestPausedAndKilledNodesLoseNothing runs commits while nodes are paused
// with SIGSTOP (two at once, in different AZs) and then SIGKILLed and
// restarted one at a time. Commits go on throughout; afterwards every
// acknowledged commit reads back, and every node converges to the same
// complete segment by gossip.
func TestPausedAndKilledNodesLoseNothing(t *testing.T) {
	cl := startNodes(t)
	v := openVolume(t, cl, volumeOpts{pagesPerPG: 64})
	w := newWriter(t, v)
	ctx := context.Background()
	stop := w.stream(4, 16)
	defer stop()

	progress := func(what string, d time.Duration) {
		t.Helper()
		before := w.commits.Load()
		time.Sleep(d)
		if w.commits.Load() == before {
			t.Fatalf("no commit completed while %s", what)
		}
	}
	progress("all nodes up", 300*time.Millisecond)

	for _, id := range []string{"s2", "s5"} {
		if err := cl.Signal(id, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	progress("s2 and s5 are paused", 1500*time.Millisecond)
	for _, id := range []string{"s2", "s5"} {
		if err := cl.Signal(id, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	}

	seed := uint64(time.Now().UnixNano())
	t.Logf("victims chosen with seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for round := 0; round < 3; round++ {
		id := cl.Components()[rng.IntN(6)].ID
		t.Logf("round %d: SIGKILL %s", round, id)
		if err := cl.Kill(id); err != nil {
			t.Fatal(err)
		}
		// The process is gone: every ack it sent has been seen.
		acked := v.SegmentSCLs(0)[id]
		progress(id+" is down", 400*time.Millisecond)
		if err := cl.Restart(ctx, id); err != nil {
			t.Fatal(err)
		}
		info, err := storageClient(t, cl, id).SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 7, Pg: 0})
		if err != nil {
			t.Fatal(err)
		}
		if info.Scl < acked {
			t.Fatalf("%s restarted with SCL %d, below the %d it acknowledged before SIGKILL", id, info.Scl, acked)
		}
		progress(id+" restarted", 200*time.Millisecond)
	}
	stop()
	if t.Failed() {
		return
	}
	w.checkAll()
	vdl := v.VDL()
	t.Logf("%d commits acknowledged, VDL %d", w.commits.Load(), vdl)

	// Every node catches up to the VDL and serves every acknowledged page.
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range cl.Components() {
		s := storageClient(t, cl, c.ID)
		for {
			info, err := s.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 7, Pg: 0})
			if err == nil && info.Scl >= vdl {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not catch up to VDL %d: %v %v", c.ID, vdl, info, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		w.mu.Lock()
		for page, want := range w.pages {
			resp, err := s.GetPage(ctx, &pb.GetPageRequest{Volume: 7, Pg: 0, Page: page, ReadLsn: vdl})
			if err != nil {
				w.mu.Unlock()
				t.Fatalf("%s read page %d: %v", c.ID, page, err)
			}
			if !bytes.Equal(resp.Data, want) {
				w.mu.Unlock()
				t.Fatalf("%s page %d differs from the acknowledged commit", c.ID, page)
			}
		}
		w.mu.Unlock()
	}
}
