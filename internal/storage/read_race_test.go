package storage_test

import (
	"context"
	"encoding/binary"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
)

// TestReadNeverServesAStalePage hunts the window in readPage between taking the
// Pebble snapshot and loading durableSCL: if a group commit lands in between,
// the SCL check passes for a record the snapshot does not contain, and the
// read returns a stale page. Every successful read at R (= the LSN just sent,
// whose record writes the page read) must return the image of record R.
func TestReadNeverServesAStalePage(t *testing.T) {
	if testing.Short() {
		t.Skip("stress")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	defer debug.SetGCPercent(debug.SetGCPercent(5))
	_, c, addr := startNode(t, t.TempDir())
	stream, err := c.Append(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	const pages = 64
	pageOf := func(lsn uint64) uint64 { return (lsn-1)%pages + 1 }
	var sent, acked atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// acks
	window := make(chan struct{}, 3)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			for _, a := range resp.Acks {
				for {
					o := acked.Load()
					if a.Scl <= o || acked.CompareAndSwap(o, a.Scl) {
						break
					}
				}
			}
			<-window
		}
	}()
	// writer
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer stream.CloseSend()
		for lsn := uint64(1); ; lsn++ {
			select {
			case <-stop:
				return
			case window <- struct{}{}:
			}
			img := make([]byte, pageSize)
			binary.BigEndian.PutUint64(img, lsn)
			r := redo.Record{Volume: 1, PG: 0, Page: pageOf(lsn), LSN: lsn, PrevLSN: lsn - 1, Epoch: 1, CPL: true, Kind: redo.KindImage, Image: img}
			ack := acked.Load()
			req := &pb.AppendRequest{Seq: lsn, Volume: 1, Epoch: 1, MinReadPoint: ack,
				Batches: []*pb.SegmentBatch{{Pg: 0, Records: [][]byte{r.Encode()}, RetainLsn: ack}}}
			if lsn == 1 {
				req.Declare = []*pb.SegmentSpec{soloSpec(1, 0, addr)}
			}
			if err := stream.Send(req); err != nil {
				return
			}
			sent.Store(lsn)
		}
	}()
	var reads, served, stale atomic.Uint64
	stopReaders := repeat(64, func() {
		l := sent.Load()
		if l == 0 {
			return
		}
		reads.Add(1)
		resp, err := c.GetPage(context.Background(), &pb.GetPageRequest{Volume: 1, Pg: 0, Page: pageOf(l), ReadLsn: l, PgTailLsn: l})
		if err != nil {
			return
		}
		served.Add(1)
		if got := binary.BigEndian.Uint64(resp.Data); got != l {
			stale.Add(1)
			t.Errorf("read at %d (segment SCL %d) returned the page as of LSN %d: stale", l, resp.Scl, got)
		}
	})
	// CPU burners that allocate: frequent GC and long run queues make
	// readers get preempted at arbitrary points (widening the window).
	var sink atomic.Pointer[[]byte]
	stopBurners := repeat(4, func() {
		for j := 0; j < 1000; j++ {
			b := make([]byte, 256)
			sink.Store(&b)
		}
	})
	time.Sleep(4 * time.Second)
	stopReaders()
	stopBurners()
	close(stop)
	wg.Wait()
	t.Logf("sent %d, reads %d, served %d, stale %d", sent.Load(), reads.Load(), served.Load(), stale.Load())
}
