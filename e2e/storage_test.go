package e2e

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/cluster"
	"github.com/borealis-db/borealis/internal/volume"
)

// writer tracks what it committed, so that reads can be checked against it.
type writer struct {
	t     *testing.T
	v     *volume.Client
	mu    sync.Mutex
	pages map[uint64][]byte
	n     map[uint64]int
	// commits counts the commits made by stream.
	commits atomic.Int64
}

func newWriter(t *testing.T, v *volume.Client) *writer {
	return &writer{t: t, v: v, pages: map[uint64][]byte{}, n: map[uint64]int{}}
}

// commit writes the next version of page and returns its LSN.
func (w *writer) commit(ctx context.Context, page uint64) (uint64, error) {
	w.mu.Lock()
	old := w.pages[page]
	w.n[page]++
	next := image(page, w.n[page])
	w.mu.Unlock()
	lsn, err := w.v.Commit(ctx, []volume.PageWrite{{Page: page, Old: old, New: next}})
	if err == nil {
		w.mu.Lock()
		w.pages[page] = next
		w.mu.Unlock()
	}
	return lsn, err
}

func (w *writer) mustCommit(pages ...uint64) uint64 {
	w.t.Helper()
	var lsn uint64
	for _, p := range pages {
		var err error
		if lsn, err = w.commit(context.Background(), p); err != nil {
			w.t.Fatalf("commit page %d: %v", p, err)
		}
	}
	return lsn
}

// stream commits from the given number of goroutines, each cycling over its
// own pages, until the returned stop is called; stop waits for them.
func (w *writer) stream(goroutines, pagesEach int) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				if _, err := w.commit(context.Background(), uint64(1+g*pagesEach+i%pagesEach)); err != nil {
					w.t.Errorf("commit: %v", err)
					return
				}
				w.commits.Add(1)
			}
		}(g)
	}
	var once sync.Once
	return func() { once.Do(func() { close(done); wg.Wait() }) }
}

// checkAll reads every page at the VDL and compares it with the last commit.
func (w *writer) checkAll() {
	w.t.Helper()
	vdl := w.v.VDL()
	w.mu.Lock()
	defer w.mu.Unlock()
	for page, want := range w.pages {
		got, err := w.v.ReadPage(context.Background(), page, vdl)
		if err != nil {
			w.t.Fatalf("read page %d at %d: %v", page, vdl, err)
		}
		if !bytes.Equal(got, want) {
			w.t.Fatalf("page %d at VDL %d: got %q..., want %q...", page, vdl, got[:24], want[:24])
		}
	}
}

func TestWritesCommitWithAnyTwoNodesDown(t *testing.T) {
	cl := startNodes(t)
	v := openVolume(t, cl, volumeOpts{pagesPerPG: 16})
	w := newWriter(t, v)
	w.mustCommit(1, 2, 17, 18) // two PGs
	ctx := context.Background()
	// Every one of the 15 pairs, the three whole AZs among them.
	ids := []string{"s1", "s2", "s3", "s4", "s5", "s6"}
	for a := 0; a < len(ids); a++ {
		for b := a + 1; b < len(ids); b++ {
			down := []string{ids[a], ids[b]}
			for _, id := range down {
				if err := cl.Kill(id); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < 4; i++ {
				w.mustCommit(uint64(1+i%3), uint64(17+i%3))
			}
			w.checkAll()
			for _, id := range down {
				if err := cl.Restart(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, down := range [][]string{{"s1", "s2"}} {
		for _, id := range down {
			if err := cl.Kill(id); err != nil {
				t.Fatal(err)
			}
		}
		for i := 0; i < 20; i++ {
			w.mustCommit(uint64(1+i%3), uint64(17+i%3))
		}
		w.checkAll()
		for _, id := range down {
			if err := cl.Restart(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.mustCommit(1, 17)
	w.checkAll()
}

func TestThreeNodesDownWritesFailReadsWork(t *testing.T) {
	cl := startNodes(t)
	v := openVolume(t, cl, volumeOpts{writeTimeout: 1500 * time.Millisecond})
	w := newWriter(t, v)
	w.mustCommit(1, 2, 3)
	vdl := v.VDL()
	for _, id := range []string{"s1", "s3", "s5"} {
		if err := cl.Kill(id); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	_, err := w.commit(context.Background(), 1)
	var unavailable *volume.UnavailableError
	if !errors.As(err, &unavailable) {
		t.Fatalf("commit with 3 of 6 nodes down: got %v, want *volume.UnavailableError", err)
	}
	if waited := time.Since(start); waited < 1500*time.Millisecond {
		t.Fatalf("commit failed after %s, before the 1.5s write timeout", waited)
	}
	down := map[string]bool{}
	for _, m := range unavailable.Unreachable {
		down[m.NodeID] = true
	}
	if unavailable.PG != 0 || len(down) != 3 || !down["s1"] || !down["s3"] || !down["s5"] {
		t.Fatalf("error names PG %d and %v; want PG 0 and s1, s3, s5: %v", unavailable.PG, unavailable.Unreachable, err)
	}
	t.Logf("error: %v", err)
	if v.VDL() != vdl {
		t.Fatalf("VDL moved from %d to %d without a write quorum", vdl, v.VDL())
	}
	w.checkAll() // reads at VDL still work with 3 of 6 up
}

func TestKilledNodeCatchesUpByGossip(t *testing.T) {
	cl := startNodes(t)
	// One PG, so that its SCL is comparable with the VDL.
	v := openVolume(t, cl, volumeOpts{pagesPerPG: 64})
	w := newWriter(t, v)
	ctx := context.Background()

	// Stream commits from 8 goroutines; kill s4 in the middle.
	stop := w.stream(8, 8)
	time.Sleep(700 * time.Millisecond)
	sclBefore := v.SegmentSCLs(0)["s4"]
	if err := cl.Kill("s4"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	stop()
	w.checkAll()
	vdl := v.VDL()
	st := v.Stats()

	if err := cl.Restart(ctx, "s4"); err != nil {
		t.Fatal(err)
	}
	s4 := storageClient(t, cl, "s4")
	info, err := s4.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 7, Pg: 0})
	if err != nil {
		t.Fatal(err)
	}
	if info.Scl < sclBefore {
		t.Fatalf("s4 restarted with SCL %d, below the %d it had acked", info.Scl, sclBefore)
	}
	deadline := time.Now().Add(30 * time.Second)
	for info.Scl < vdl {
		if time.Now().After(deadline) {
			t.Fatalf("s4 SCL stuck at %d after restart; VDL is %d", info.Scl, vdl)
		}
		time.Sleep(100 * time.Millisecond)
		if info, err = s4.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 7, Pg: 0}); err != nil {
			t.Fatal(err)
		}
	}
	stats, err := s4.Stats(ctx, &pb.StatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if stats.RecordsPulled == 0 {
		t.Fatal("s4 caught up but pulled no record by gossip")
	}
	if after := v.Stats(); after.RecordsSent != st.RecordsSent {
		t.Fatalf("the writer sent %d records after s4 restarted; catching up must be gossip's work", after.RecordsSent-st.RecordsSent)
	}
	t.Logf("s4: SCL %d before kill, %d after restart, VDL %d, %d records pulled by gossip", sclBefore, info.Scl, vdl, stats.RecordsPulled)

	// Every acknowledged commit is readable from s4 itself.
	w.mu.Lock()
	defer w.mu.Unlock()
	for page, want := range w.pages {
		resp, err := s4.GetPage(ctx, &pb.GetPageRequest{Volume: 7, Pg: 0, Page: page, ReadLsn: vdl})
		if err != nil {
			t.Fatalf("s4 read page %d: %v", page, err)
		}
		if !bytes.Equal(resp.Data, want) {
			t.Fatalf("s4 page %d at %d differs from the acknowledged commit", page, vdl)
		}
	}
}

func TestReadsAtOldAndNewLSN(t *testing.T) {
	cl := startNodes(t)
	v := openVolume(t, cl, volumeOpts{})
	ctx := context.Background()
	// Hold the oldest read point so storage keeps what old reads need.
	pinned, release := v.PinReadPoint()
	defer release()
	var lsns []uint64
	var old []byte
	for version := 1; version <= 5; version++ {
		img := image(9, version)
		lsn, err := v.Commit(ctx, []volume.PageWrite{{Page: 9, Old: old, New: img}})
		if err != nil {
			t.Fatal(err)
		}
		lsns = append(lsns, lsn)
		old = img
	}
	time.Sleep(300 * time.Millisecond) // let materialization run
	for i, lsn := range lsns {
		got, err := v.ReadPage(ctx, 9, lsn)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, image(9, i+1)) {
			t.Fatalf("read at LSN %d: got %q, want version %d", lsn, got[:20], i+1)
		}
	}
	// Before the first write the page reads as zeros; so does a page never written.
	for _, c := range []struct {
		page uint64
		lsn  uint64
	}{{9, pinned}, {10, lsns[4]}} {
		got, err := v.ReadPage(ctx, c.page, c.lsn)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, make([]byte, pageSize)) {
			t.Fatalf("page %d at LSN %d is not zeros", c.page, c.lsn)
		}
	}
	// Every node serves the same history.
	for _, c := range cl.Components() {
		s := storageClient(t, cl, c.ID)
		for i, lsn := range lsns {
			resp, err := s.GetPage(ctx, &pb.GetPageRequest{Volume: 7, Pg: 0, Page: 9, ReadLsn: lsn})
			if err != nil {
				if reason := reasonOf(err); reason == pb.Reason_SEGMENT_BEHIND {
					continue // a fourth ack is enough; a fifth may lag
				}
				t.Fatalf("%s read at %d: %v", c.ID, lsn, err)
			}
			if !bytes.Equal(resp.Data, image(9, i+1)) {
				t.Fatalf("%s: read at LSN %d returned the wrong version", c.ID, lsn)
			}
		}
	}
}

// storageClient is a Storage client of cl's node id (storageAt).
func storageClient(t *testing.T, cl *cluster.Cluster, id string) pb.StorageClient {
	t.Helper()
	for _, c := range cl.Components() {
		if c.ID == id {
			return storageAt(t, c.Addr)
		}
	}
	t.Fatalf("no component %s", id)
	return nil
}

// storageAt is a Storage client of the node at addr, closed when the test
// ends.
func storageAt(t *testing.T, addr string) pb.StorageClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewStorageClient(conn)
}
