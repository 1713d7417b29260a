package volume

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

// TestBehindSegmentDoesNotHoldACommit is issue 7's repro in process: one
// node's directory is emptied after its peers collected the log, so it
// answers every append but cannot complete a record; with two more nodes
// down, only three segments can make a commit durable. The commit must fail
// after WriteTimeout, naming the two unreachable nodes and the one behind,
// instead of waiting forever because five answer. (Such a node rehydrates
// by itself once its gossip has found, strandedCheckEvery apart, that every peer
// has collected the log, as TestEmptiedSegmentRehydratesByItself shows; the
// commit here comes before that.)
func TestBehindSegmentDoesNotHoldACommit(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, func(cfg *Config) { cfg.WriteTimeout = time.Second })
	ctx := ctxT(t, 60*time.Second)

	img := pageImage(2, 0)
	if _, err := c.Commit(ctx, []PageWrite{{Page: 2, New: img}}); err != nil {
		t.Fatal(err)
	}
	for v := 1; v <= 20; v++ {
		next := pageImage(2, v)
		if _, err := c.Commit(ctx, []PageWrite{{Page: 2, Old: img, New: next}}); err != nil {
			t.Fatal(err)
		}
		img = next
	}
	vdl := c.VDL()
	// The peers materialize the records and collect the log below the VDL
	// (the oldest read point, since nothing is pinned).
	peers := []int{0, 1, 2, 3, 4}
	wait.For(t, 30*time.Second, "the peers to collect their log", func() bool {
		for _, i := range peers {
			if infoOf(t, storageClient(t, cl.members[i].Addr), 7, 0).GetLogFloor() == 0 {
				return false
			}
		}
		return true
	})

	cl.stop(5)
	if err := os.RemoveAll(cl.dirs[5]); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cl.dirs[5], 0o755); err != nil {
		t.Fatal(err)
	}
	cl.restart(5)
	cl.stop(2)
	cl.stop(3)

	start := time.Now()
	_, err := c.Commit(ctx, []PageWrite{{Page: 2, Old: img, New: pageImage(2, 99)}})
	var ue *UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("commit with two nodes down and one emptied: %v, want *UnavailableError", err)
	}
	t.Logf("failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	var unreach, behind []string
	for _, m := range ue.Unreachable {
		unreach = append(unreach, m.NodeID)
	}
	for _, s := range ue.Behind {
		behind = append(behind, s.Member.NodeID)
		if s.SCL >= ue.PGLSN {
			t.Errorf("%s is listed behind at SCL %d, which reaches LSN %d", s.Member.NodeID, s.SCL, ue.PGLSN)
		}
	}
	slices.Sort(unreach)
	if !slices.Equal(unreach, []string{"s2", "s3"}) || !slices.Equal(behind, []string{"s5"}) {
		t.Fatalf("unreachable %v, behind %v; want [s2 s3] and [s5]", unreach, behind)
	}
	msg := ue.Error()
	for _, want := range []string{"PG 0", "3 of 6 segments cannot make it durable", "2 unreachable (s2 ", "1 reachable but behind (s5 " + cl.members[5].Addr + ": SCL 0"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("message %q lacks %q", msg, want)
		}
	}
	// Reads at the VDL keep working from the three complete segments.
	mustRead(t, c, 2, vdl, img)
}

// TestEmptiedSegmentRehydratesByItself: the node emptied after its peers
// collected the log finds, by gossip, that no peer holds the log it lacks,
// and copies the PG's pages again from a complete peer, with no control
// plane to tell it; then, with two other nodes down, its segment is one of
// the four that make commits durable.
func TestEmptiedSegmentRehydratesByItself(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, nil)
	ctx := ctxT(t, 60*time.Second)
	img := pageImage(2, 0)
	if _, err := c.Commit(ctx, []PageWrite{{Page: 2, New: img}}); err != nil {
		t.Fatal(err)
	}
	for v := 1; v <= 20; v++ {
		next := pageImage(2, v)
		if _, err := c.Commit(ctx, []PageWrite{{Page: 2, Old: img, New: next}}); err != nil {
			t.Fatal(err)
		}
		img = next
	}
	vdl := c.VDL()
	wait.For(t, 30*time.Second, "the peers to collect their log", func() bool {
		for _, i := range []int{0, 1, 2, 3, 4} {
			if infoOf(t, storageClient(t, cl.members[i].Addr), 7, 0).GetLogFloor() == 0 {
				return false
			}
		}
		return true
	})
	cl.stop(5)
	if err := os.RemoveAll(cl.dirs[5]); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cl.dirs[5], 0o755); err != nil {
		t.Fatal(err)
	}
	cl.restart(5)
	// The writer's commits declare the segment to the emptied node once
	// its stream is back.
	s5 := storageClient(t, cl.members[5].Addr)
	v := 50
	wait.For(t, 60*time.Second, "s5 to rehydrate its segment", func() bool {
		in, err := s5.SegmentInfo(ctxT(t, 5*time.Second), &pb.SegmentInfoRequest{Volume: 7, Pg: 0})
		if err == nil && !in.Hydrating && in.Scl >= vdl {
			return true
		}
		next := pageImage(2, v)
		if _, err := c.Commit(ctx, []PageWrite{{Page: 2, Old: img, New: next}}); err != nil {
			t.Fatal(err)
		}
		img, v = next, v+1
		return false
	})
	cl.stop(2)
	cl.stop(3)
	final := pageImage(2, 99)
	if _, err := c.Commit(ctx, []PageWrite{{Page: 2, Old: img, New: final}}); err != nil {
		t.Fatalf("commit with s2 and s3 down and s5 rehydrated: %v", err)
	}
	mustRead(t, c, 2, c.VDL(), final)
}

// TestQuietPGIsAskedForItsSCL: a node reports a PG's SCL only in answer to a
// request carrying that PG, so while commits go to PG 1 alone, what the
// writer knows of PG 0 ages. A segment must not be judged behind on such a
// report: the verdict asks the node, and its next request carries every PG.
func TestQuietPGIsAskedForItsSCL(t *testing.T) {
	cl := startCluster(t)
	c := cl.open(t, nil)
	ctx := ctxT(t, 60*time.Second)
	if _, err := c.Commit(ctx, []PageWrite{{Page: 2, New: pageImage(2, 0)}}); err != nil {
		t.Fatal(err)
	}
	reportAt := func() time.Time {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.pgs[0].reportAt["s0"]
	}
	// Commits to PG 1 (pages 17..32) keep every stream busy, so no
	// keepalive carries PG 0.
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		img := pageImage(18, 0)
		_, err := c.Commit(ctx, []PageWrite{{Page: 18, New: img}})
		for v := 1; err == nil; v++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			next := pageImage(18, v)
			_, err = c.Commit(ctx, []PageWrite{{Page: 18, Old: img, New: next}})
			img = next
		}
		done <- err
	}()
	defer func() {
		close(stop)
		if err := <-done; err != nil {
			t.Errorf("commits to PG 1: %v", err)
		}
	}()
	wait.For(t, 30*time.Second, "PG 0's report from s0 to age past reportFresh", func() bool {
		return time.Since(reportAt()) > 2*reportFresh
	})
	before := reportAt()
	c.mu.Lock()
	s0 := c.nodes["s0"]
	c.mu.Unlock()
	s0.askReport()
	wait.For(t, 10*time.Second, "s0 to report PG 0 again", func() bool { return reportAt().After(before) })
}
