package storage_test

import (
	"context"
	"sync"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// TestCloseDuringReads closes a node while unary RPCs are in flight.
// grpc.Server.Stop does not wait for running handlers, so Node.Close can close
// Pebble under a GetPage/Pull/SegmentInfo handler, which then panics
// ("pebble: closed") and takes the whole process down.
func TestCloseDuringReads(t *testing.T) {
	n, c, addr := startNode(t, t.TempDir())
	w := newChainWriter(t, c, 1, 0, addr)
	for l := uint64(1); l <= 50; l++ {
		w.write(1, l, byte(l))
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				c.GetPage(ctx, &pb.GetPageRequest{Volume: 1, Pg: 0, Page: 1, ReadLsn: 50})
				c.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 1, Pg: 0})
				c.Pull(ctx, &pb.PullRequest{Volume: 1, Pg: 0})
				cancel()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	n.Close()
	close(stop)
	wg.Wait()
}
