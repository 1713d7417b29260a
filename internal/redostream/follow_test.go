package redostream

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/replica"
	"github.com/borealis-db/borealis/internal/wait"
)

// testReplica is a replica's shell around the real Follower, as
// internal/instance wires it to Follow: it records what the Follower
// applies instead of applying it to a page cache.
type testReplica struct {
	t    *testing.T
	mu   sync.Mutex
	f    *replica.Follower
	vdl  func() uint64 // the writer's VDL now, to check what is exposed
	mtrs []mtr         // applied, in order
	// exposed is every Applied the Follower exposed, in order.
	exposed  []uint64
	resyncs  int
	starts   []*pb.StreamStart
	lost     int
	received int // MTR messages handed to the Follower
	// dropAt: the MTR message of this number (from 1) is dropped once, as
	// if lost in transit (0: none).
	dropAt int
	seen   int
}

func (r *testReplica) handle(m *pb.ReplicationMessage) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st := m.GetStart(); st != nil {
		r.starts = append(r.starts, st)
	}
	if m.GetMtr() != nil {
		r.seen++
		if r.seen == r.dropAt {
			return false
		}
		r.received++
	}
	msg, ok := MessageOf(m)
	if !ok {
		return false
	}
	rd := r.f.Step(msg)
	if rd.Resync {
		r.resyncs++
	}
	for _, a := range rd.Apply {
		r.mtrs = append(r.mtrs, mtr{first: a.First, last: a.Last, records: a.Records})
	}
	if n := len(r.exposed); n == 0 || r.exposed[n-1] != rd.Applied {
		if v := r.vdl(); rd.Applied > v {
			r.t.Errorf("the Follower exposed %d, above the writer's VDL %d", rd.Applied, v)
		}
		r.exposed = append(r.exposed, rd.Applied)
	}
	return rd.Resubscribe
}

func (r *testReplica) position() (uint64, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Epoch(), r.f.Applied()
}

func (r *testReplica) applied() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Applied()
}

func (r *testReplica) lostStream(error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lost++
	r.f.Step(replica.Message{Kind: replica.Lost})
}

// follow runs Follow for r against addr until the test ends.
func follow(t *testing.T, r *testReplica, addr *atomic.Value, floor uint64) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	go func() {
		defer close(done)
		Follow(ctx, SubscriberConfig{
			ReplicaID: "r1",
			VolumeID:  9,
			Writer:    func(context.Context) (string, error) { return addr.Load().(string), nil },
			Position:  r.position,
			Report:    func() (uint64, uint64) { return floor, r.applied() },
			Handle:    r.handle,
			Lost:      r.lostStream,
			Logger:    testLogger(),
		})
	}()
}

// End to end: the real Follower behind Follow, following a writer that
// submits MTRs (some large enough to go in parts) while the VDL lags
// behind, through a broken connection and a message lost in transit. It
// applies exactly the MTRs submitted, each once and in order, exposes only
// VDLs the writer reached, never resyncs (every resubscription resumes
// where it stood), reaches the last VDL, and its reports reach the PGMRPL.
func TestFollowAppliesEverySubmittedMTR(t *testing.T) {
	cfg := defaultConfig()
	cfg.Epoch = 4
	ts := startServer(t, cfg)
	var durable atomic.Uint64
	var reached sync.Map // the VDLs the writer reached
	reached.Store(uint64(0), true)
	r := &testReplica{t: t, f: replica.NewFollower(), vdl: durable.Load, dropAt: 150}
	var addr atomic.Value
	addr.Store(ts.addr)
	follow(t, r, &addr, 7)
	wait.For(t, 10*time.Second, "the first subscription", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.starts) == 1
	})

	rng := rand.New(rand.NewPCG(3, 4))
	var want []mtr
	next := uint64(1)
	const n = 300
	for i := range n {
		size := 16 + rng.IntN(4000)
		if i%97 == 50 {
			size = 700 << 10 // MTRs of 1.4 MiB and more: sent in parts
		}
		m := makeMTR(next, 1+rng.IntN(3), size)
		next = m.last + 1
		want = append(want, m)
		ts.submit(m)
		if i%4 == 3 {
			v := want[max(0, len(want)-1-rng.IntN(4))].last
			if v > durable.Load() {
				reached.Store(v, true)
				durable.Store(v)
				ts.durable(v)
			}
		}
		if i%25 == 24 && i != 99 {
			// Now and then the writer waits for the replica to catch up,
			// so that VDLs are exposed along the way.
			wait.For(t, 10*time.Second, "the replica to catch up", func() bool { return r.applied() == durable.Load() })
		}
		if i == 100 {
			// Once the replica applied something, every connection
			// breaks; Follow subscribes again.
			wait.For(t, 10*time.Second, "the replica to apply the VDL", func() bool { return r.applied() == durable.Load() })
			ts.restart(t)
		}
	}
	last := want[len(want)-1].last
	reached.Store(last, true)
	durable.Store(last)
	ts.durable(last)
	wait.For(t, 30*time.Second, "the replica to apply the last VDL", func() bool { return r.applied() == last })
	wait.For(t, 5*time.Second, "the replica's reported floor", func() bool { return ts.vol.last().floor == 7 })

	r.mu.Lock()
	defer r.mu.Unlock()
	sameMTRs(t, r.mtrs, want)
	if r.resyncs != 0 {
		t.Fatalf("%d resyncs; every resubscription should resume", r.resyncs)
	}
	if len(r.starts) < 3 {
		t.Fatalf("%d subscriptions; want at least 3 (the first, after the restart, after the lost MTR)", len(r.starts))
	}
	if r.starts[1].From == 0 {
		t.Fatalf("the subscription after the restart started from 0: it resumed nothing")
	}
	for i, st := range r.starts {
		if st.Epoch != 4 {
			t.Fatalf("start %d of epoch %d", i, st.Epoch)
		}
	}
	for i := 1; i < len(r.exposed); i++ {
		if r.exposed[i] < r.exposed[i-1] {
			t.Fatalf("exposed %d after %d", r.exposed[i], r.exposed[i-1])
		}
	}
	for _, v := range r.exposed {
		if _, ok := reached.Load(v); !ok {
			t.Fatalf("exposed %d, a VDL the writer never reached", v)
		}
	}
	t.Logf("%d subscriptions, %d ended, %d MTR messages handed over, %d VDLs exposed", len(r.starts), r.lost, r.received, len(r.exposed))
}
