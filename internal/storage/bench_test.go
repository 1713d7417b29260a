package storage

import (
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
)

// BenchmarkIngest measures the node's CPU per record on its append path
// (decode, chain, group commit with a real fsync) and in the background work
// the records cause (materializer, GC), without gRPC: clients goroutines
// each append one 200-byte diff record per request, to a few hot pages, and
// wait for its group commit. It reports CPU µs per record (user + system, of
// the whole process, from getrusage) and records per group commit.
func BenchmarkIngest(b *testing.B) {
	for _, clients := range []int{1, 32} {
		b.Run(map[int]string{1: "clients=1", 32: "clients=32"}[clients], func(b *testing.B) {
			benchIngest(b, clients)
		})
	}
}

func benchIngest(b *testing.B, clients int) {
	n, err := Open(Config{ID: "s1", AZ: "a", Dir: b.TempDir(), GossipInterval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Close()
	spec := &pb.SegmentSpec{Volume: 1, Pg: 0, PageSize: 4096, PagesPerPg: 1 << 20, MembershipEpoch: 1,
		Members: []*pb.Member{{NodeId: "s1", Az: "a", Addr: "127.0.0.1:1"}}}
	var mu sync.Mutex // allocates LSNs and ingests in their order, as a writer does
	var last uint64
	diff := make([]byte, 200)
	appendOne := func() {
		mu.Lock()
		lsn := last + 1
		r := redo.Record{Volume: 1, PG: 0, Page: 1 + lsn%16, LSN: lsn, PrevLSN: last, Epoch: 1, CPL: true,
			Kind: redo.KindDiff, Ranges: []redo.Range{{Offset: uint32(lsn % 3000), Data: diff}}}
		in := &incoming{volume: 1, epoch: 1, minReadPoint: last, vdl: last,
			batches: []incomingBatch{{pg: 0, raw: [][]byte{r.Encode()}, retain: last}}}
		if lsn == 1 {
			in.declare = []*pb.SegmentSpec{spec}
		}
		last = lsn
		n.appending.Add(1)
		g, _, err := n.ingest(in)
		mu.Unlock()
		if err != nil {
			b.Error(err)
		} else if g != nil {
			<-g.done
		}
		n.appending.Add(-1)
	}
	appendOne()
	groups0 := n.stats.groupCommits.Load()
	cpu0 := cpuTime()
	b.ResetTimer()
	var wg sync.WaitGroup
	var next sync.Mutex
	left := b.N
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				next.Lock()
				if left == 0 {
					next.Unlock()
					return
				}
				left--
				next.Unlock()
				appendOne()
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/record")
	b.ReportMetric(float64(b.N)/float64(max(1, n.stats.groupCommits.Load()-groups0)), "records/group")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
