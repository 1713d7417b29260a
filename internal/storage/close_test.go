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
	stop := repeat(32, func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c.GetPage(ctx, &pb.GetPageRequest{Volume: 1, Pg: 0, Page: 1, ReadLsn: 50})
		c.SegmentInfo(ctx, &pb.SegmentInfoRequest{Volume: 1, Pg: 0})
		c.Pull(ctx, &pb.PullRequest{Volume: 1, Pg: 0})
		cancel()
	})
	time.Sleep(300 * time.Millisecond)
	n.Close()
	stop()
}

// repeat runs f in n goroutines, each calling it again and again, until the
// returned stop is called; stop waits for them.
func repeat(n int, f func()) (stop func()) {
	var wg sync.WaitGroup
	done := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				f()
			}
		}()
	}
	return func() { close(done); wg.Wait() }
}
