package redostream

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/wait"
)

// A subscriber gets the start, then every MTR in LSN order as it is
// submitted, and VDL updates that never pass the MTRs it received nor the
// writer's VDL, and never go back; the last one is the writer's VDL.
func TestSubscriberGetsEveryMTRInOrder(t *testing.T) {
	ts := startServer(t, defaultConfig())
	sub := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9, Epoch: 1})
	st := sub.start()
	if st.From != 0 || st.Vdl != 0 || st.Epoch != 1 || st.VolumeId != 9 || st.PageSize != 4096 || st.PagesPerPg != 16 || st.HeartbeatMs != uint32(Heartbeat.Milliseconds()) {
		t.Fatalf("start %v", st)
	}
	if got, want := PGStatesOf(st.Pgs), ts.vol.PGStates(0); !reflect.DeepEqual(got, want) {
		t.Fatalf("start's PG states %+v, want the volume's at From %+v", got, want)
	}

	rng := rand.New(rand.NewPCG(1, 2))
	var want []mtr
	var durable atomic.Uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		next := uint64(1)
		for i := range 300 {
			m := makeMTR(next, 1+rng.IntN(4), 16+rng.IntN(3000))
			next = m.last + 1
			want = append(want, m)
			ts.submit(m)
			// The VDL lags a few MTRs behind, as quorum acks do.
			if i%3 == 2 {
				v := want[max(0, len(want)-1-rng.IntN(3))].last
				if v > durable.Load() {
					durable.Store(v)
					ts.durable(v)
				}
			}
		}
		durable.Store(want[len(want)-1].last)
		ts.durable(durable.Load())
	}()
	c := newCollector(t, st)
	<-done
	last := want[len(want)-1].last
	c.until(sub, 20*time.Second, "every MTR and the final VDL", func() bool {
		if c.vdl > durable.Load() {
			t.Fatalf("VDL update %d above the writer's VDL %d", c.vdl, durable.Load())
		}
		return c.lastLSN == last && c.vdl == last
	})
	sameMTRs(t, c.mtrs, want)
	subs := ts.s.Subscriptions()
	if len(subs) != 1 || subs[0].ID != "r1" || subs[0].MTRs != uint64(len(want)) {
		t.Fatalf("subscriptions %+v", subs)
	}
}

// logOf submits MTRs 101..103, 104, 105..110, 111..112 on a server based at
// LSN 100, makes 112 durable, then submits 113..115 (not durable).
func logOf(t *testing.T, ts *testServer) []mtr {
	t.Helper()
	var ms []mtr
	for _, r := range [][2]uint64{{101, 3}, {104, 1}, {105, 6}, {111, 2}} {
		ms = append(ms, makeMTR(r[0], int(r[1]), 100))
	}
	for _, m := range ms {
		ts.submit(m)
	}
	ts.durable(112)
	ms = append(ms, makeMTR(113, 3, 100))
	ts.submit(ms[len(ms)-1])
	return ms
}

// A replica that applied up to an MTR boundary the log still holds, in the
// writer's epoch, resumes there: From is what it applied (no resync), and
// the durable MTRs above it follow, with the VDL; the undurable one goes
// out once it is durable.
func TestResumeAtAnAppliedMTRBoundary(t *testing.T) {
	cfg := defaultConfig()
	cfg.BaseLSN = 100
	ts := startServer(t, cfg)
	log := logOf(t, ts)
	for _, c := range []struct {
		applied uint64
		rest    []mtr // the MTRs that must follow
	}{
		{100, log[:4]}, // the log's start: the recovered VDL
		{103, log[1:4]},
		{104, log[2:4]},
		{110, log[3:4]},
		{112, nil},
	} {
		id := "r" + string(rune('a'+c.applied%26))
		sub := subscribe(t, ts.addr, &pb.Hello{ReplicaId: id, VolumeId: 9, Epoch: 1, Applied: c.applied})
		st := sub.start()
		if st.From != c.applied || st.Vdl != 112 {
			t.Fatalf("applied %d: start from %d vdl %d; want a resume from %d at VDL 112", c.applied, st.From, st.Vdl, c.applied)
		}
		col := newCollector(t, st)
		col.until(sub, 5*time.Second, "the rest of the log and the VDL", func() bool { return col.lastLSN == 112 && col.vdl == 112 })
		sameMTRs(t, col.mtrs, c.rest)
		for range 3 { // heartbeats come every 100ms
			if m := sub.next(time.Second); m != nil && (m.GetMtr() != nil || m.GetBatch() != nil) {
				t.Fatalf("applied %d: an MTR above the VDL went out before it was durable: %v", c.applied, m)
			}
		}
		wait.For(t, 5*time.Second, "the subscription to be listed", func() bool {
			for _, s := range ts.s.Subscriptions() {
				if s.ID == id {
					return s.Applied == c.applied
				}
			}
			return false
		})
	}
}

// A Hello the log cannot resume (another epoch, or no epoch yet; a point
// inside an MTR; above the VDL; below the log's start) starts at the
// writer's VDL, and the stream then carries exactly the MTRs above it.
func TestHelloThatCannotResumeStartsAtTheVDL(t *testing.T) {
	cfg := defaultConfig()
	cfg.BaseLSN = 100
	cfg.Epoch = 3
	ts := startServer(t, cfg)
	logOf(t, ts)
	for _, c := range []struct {
		name           string
		epoch, applied uint64
	}{
		{"an older epoch", 2, 104},
		{"no epoch", 0, 110},
		{"inside an MTR", 3, 106},
		{"at the first record of an MTR", 3, 105},
		{"above the VDL", 3, 115},
		{"below the log's start", 3, 50},
		{"a fresh replica", 0, 0},
	} {
		sub := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r", VolumeId: 9, Epoch: c.epoch, Applied: c.applied})
		st := sub.start()
		if st.From != 112 || st.Vdl != 112 {
			t.Fatalf("%s: start from %d vdl %d; want from the VDL 112", c.name, st.From, st.Vdl)
		}
		if got, want := PGStatesOf(st.Pgs), ts.vol.PGStates(112); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: start's PG states %+v, want the volume's at From %+v", c.name, got, want)
		}
		col := newCollector(t, st)
		col.until(sub, 5*time.Second, "the heartbeat at the VDL", func() bool { return col.vdls > 0 })
		if len(col.mtrs) != 0 {
			t.Fatalf("%s: MTRs %v went out, but none above From is durable", c.name, col.mtrs)
		}
		sub.cancel()
	}
}

// Once the log evicted MTRs, a Hello below its new start resyncs; one at
// the start itself (the last LSN evicted) still resumes.
func TestHelloBelowTheLogAfterEviction(t *testing.T) {
	cfg := defaultConfig()
	cfg.LogBytes = 4 * 1000 // four one-record MTRs of 1000 bytes
	ts := startServer(t, cfg)
	var log []mtr
	for lsn := uint64(1); lsn <= 20; lsn++ {
		m := makeMTR(lsn, 1, 1000)
		log = append(log, m)
		ts.submit(m)
		ts.durable(lsn)
	}
	ts.s.mu.Lock()
	start, kept := ts.s.start, len(ts.s.mtrs)
	ts.s.mu.Unlock()
	if start != 16 || kept != 4 {
		t.Fatalf("log keeps %d MTRs above %d; want 4 above 16", kept, start)
	}
	for _, c := range []struct {
		applied, from uint64
	}{{10, 20}, {15, 20}, {16, 16}, {18, 18}} {
		sub := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r", VolumeId: 9, Epoch: 1, Applied: c.applied})
		st := sub.start()
		if st.From != c.from {
			t.Fatalf("applied %d: from %d, want %d", c.applied, st.From, c.from)
		}
		col := newCollector(t, st)
		col.until(sub, 5*time.Second, "the VDL", func() bool { return col.vdl == 20 })
		sameMTRs(t, col.mtrs, log[c.from:])
		sub.cancel()
	}
	// MTRs above the VDL are never evicted, whatever their size.
	for lsn := uint64(21); lsn <= 30; lsn++ {
		ts.submit(makeMTR(lsn, 1, 1000))
	}
	ts.s.mu.Lock()
	start, kept = ts.s.start, len(ts.s.mtrs)
	ts.s.mu.Unlock()
	if start != 20 || kept != 10 {
		t.Fatalf("log keeps %d MTRs above %d; want every undurable one, above the VDL 20", kept, start)
	}
}

// A subscriber that does not keep up, whose next MTR the log evicted, is
// ended with OutOfRange after what it was sent, in order; it can subscribe
// again, which resyncs it at the VDL, and then follows.
func TestSlowSubscriberIsEndedAndResyncs(t *testing.T) {
	cfg := defaultConfig()
	cfg.LogBytes = 256 << 10
	ts := startServer(t, cfg)
	slow := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "slow", VolumeId: 9, Epoch: 1}, subOpts{slow: true})
	wait.For(t, 5*time.Second, "the slow subscription", func() bool { return len(ts.s.Subscriptions()) == 1 })
	const n, size = 256, 32 << 10 // 8 MiB, 32 times the log
	for lsn := uint64(1); lsn <= n; lsn++ {
		ts.submit(makeMTR(lsn, 1, size))
		ts.durable(lsn)
	}
	slow.read()
	st := slow.start()
	col := newCollector(t, st)
	for {
		m := slow.next(10 * time.Second)
		if m == nil {
			break
		}
		col.take(m)
	}
	if code := slow.ended(time.Second); code != codes.OutOfRange {
		t.Fatalf("the slow subscription ended with %v (%v), want OutOfRange", code, slow.endErr())
	}
	if col.lastLSN >= n-8 {
		t.Fatalf("the slow subscriber received MTRs up to %d of %d: it never fell behind", col.lastLSN, n)
	}
	t.Logf("the slow subscriber received %d MTRs before it was ended", len(col.mtrs))
	wait.For(t, 5*time.Second, "the ended subscription to go", func() bool { return len(ts.s.Subscriptions()) == 0 })

	// It asks to resume from what it received: evicted, so it resyncs.
	again := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "slow", VolumeId: 9, Epoch: 1, Applied: col.lastLSN})
	st = again.start()
	if st.From != n || st.Vdl != n {
		t.Fatalf("subscribing again after the end: from %d vdl %d, want a resync at the VDL %d", st.From, st.Vdl, n)
	}
	col = newCollector(t, st)
	next := makeMTR(n+1, 2, 100)
	ts.submit(next)
	ts.durable(next.last)
	col.until(again, 5*time.Second, "the next MTR and its VDL", func() bool { return col.vdl == next.last })
	sameMTRs(t, col.mtrs, []mtr{next})
}

// An idle subscription gets its VDL every heartbeat and the PG states
// every few, at the VDL.
func TestHeartbeatsWhenIdle(t *testing.T) {
	cfg := defaultConfig()
	cfg.BaseLSN = 50
	ts := startServer(t, cfg)
	sub := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9, Epoch: 1, Applied: 50})
	st := sub.start()
	c := newCollector(t, st)
	began := time.Now()
	c.until(sub, 5*time.Second, "5 heartbeats and 2 PG states", func() bool { return c.beats >= 5 && len(c.pgs) >= 2 })
	if c.vdl != 50 || len(c.mtrs) != 0 {
		t.Fatalf("idle stream: VDL %d, %d MTRs", c.vdl, len(c.mtrs))
	}
	if took := time.Since(began); took < 4*Heartbeat {
		t.Fatalf("5 heartbeats in %s: faster than every %s", took, Heartbeat)
	}
	for _, p := range c.pgs {
		if got, want := PGStatesOf(p.Pgs), ts.vol.PGStates(50); !reflect.DeepEqual(got, want) {
			t.Fatalf("PG states %+v, want the volume's at the VDL %+v", got, want)
		}
	}
}

// Reports feed the PGMRPL: the floor handed to the volume is the lowest of
// the live reports, and a subscription counts at its start until it
// reports; a new report replaces the replica's older one, upwards too.
func TestReportsSetTheReadFloor(t *testing.T) {
	cfg := defaultConfig()
	cfg.BaseLSN = 100
	ts := startServer(t, cfg)
	if got := ts.vol.last(); got.floor != noFloor || got.held {
		t.Fatalf("floor at Attach with no replica: %+v, want no floor, not held", got)
	}
	floorIs := func(want uint64) {
		t.Helper()
		wait.For(t, 5*time.Second, "the read floor to be "+itoa(want), func() bool {
			got := ts.vol.last()
			return got.floor == want && !got.held
		})
	}
	r1 := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9})
	r1.start()
	floorIs(100)
	r1.report(60, 100)
	floorIs(60)
	r2 := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r2", VolumeId: 9})
	r2.start()
	if got := ts.vol.last(); got.floor != 60 {
		t.Fatalf("floor %d after a second replica subscribed at 100, want 60", got.floor)
	}
	r2.report(40, 100)
	floorIs(40)
	r1.report(80, 100)
	r2.report(90, 100)
	floorIs(80)
	wait.For(t, 5*time.Second, "the subscriptions to show their floors", func() bool {
		subs := ts.s.Subscriptions()
		return len(subs) == 2 && subs[0].Floor == 80 && subs[1].Floor == 90 && subs[0].Applied == 100
	})
}

func itoa(v uint64) string {
	if v == noFloor {
		return "none"
	}
	return strconv.FormatUint(v, 10)
}

// A replica's report lives ReportTTL: one that stops reporting stops
// holding the floor back (it rises to the next replica's, then to none),
// while one that keeps reporting holds it for longer than the TTL.
func TestStoppedReportIsForgottenAfterTheTTL(t *testing.T) {
	cfg := defaultConfig()
	cfg.BaseLSN = 100
	cfg.ReportTTL = 300 * time.Millisecond
	ts := startServer(t, cfg)
	r1 := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9})
	r1.start()
	r1.report(10, 100)
	r2 := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r2", VolumeId: 9})
	r2.start()
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				r2.stream.Send(&pb.ReplicaMessage{Kind: &pb.ReplicaMessage_Report{Report: &pb.Report{ReadFloor: 20, Applied: 100}}})
			}
		}
	}()
	wait.For(t, 5*time.Second, "the floor of r1's report", func() bool { return ts.vol.last().floor == 10 })
	r1Gone := time.Now()
	wait.For(t, 5*time.Second, "r1's report to expire", func() bool { return ts.vol.last().floor == 20 })
	if since := time.Since(r1Gone); since < cfg.ReportTTL/2 {
		t.Fatalf("r1's report was forgotten %s after its floor showed, before the TTL %s", since, cfg.ReportTTL)
	}
	// r2 keeps reporting: its floor holds well past the TTL.
	held := time.Now()
	wait.For(t, 5*time.Second, "three TTLs of r2 reporting", func() bool {
		if f := ts.vol.last().floor; f != 20 {
			t.Fatalf("floor %d while r2 reports 20", f)
		}
		return time.Since(held) > 3*cfg.ReportTTL
	})
	close(stop)
	<-stopped
	wait.For(t, 5*time.Second, "r2's report to expire", func() bool { return ts.vol.last().floor == noFloor })
}

// At the writer's start the PGMRPL is held (handed over as held) until every
// replica the catalog listed has reported, or ReportTTL has passed; with
// none expected it is never held.
func TestStartHold(t *testing.T) {
	t.Run("until every expected replica reports", func(t *testing.T) {
		t.Parallel()
		cfg := defaultConfig()
		cfg.BaseLSN = 100
		cfg.Expect = []string{"r1", "r2"}
		cfg.ReportTTL = time.Minute
		ts := startServer(t, cfg)
		if got := ts.vol.last(); !got.held {
			t.Fatalf("floor at Attach: %+v, want held", got)
		}
		r1 := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9})
		r1.start()
		r1.report(70, 100)
		wait.For(t, 5*time.Second, "r1's floor", func() bool { return ts.vol.last().floor == 70 })
		if got := ts.vol.last(); !got.held {
			t.Fatalf("floor with r2 not reported yet: %+v, want held", got)
		}
		// One that was not expected does not end the hold.
		r3 := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r3", VolumeId: 9})
		r3.start()
		r3.report(65, 100)
		wait.For(t, 5*time.Second, "r3's floor", func() bool { return ts.vol.last().floor == 65 })
		if got := ts.vol.last(); !got.held {
			t.Fatalf("floor with r2 not reported yet: %+v, want held", got)
		}
		r2 := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r2", VolumeId: 9})
		r2.start()
		r2.report(60, 100)
		wait.For(t, 5*time.Second, "the hold to end", func() bool {
			got := ts.vol.last()
			return !got.held && got.floor == 60
		})
	})
	t.Run("until the TTL passes", func(t *testing.T) {
		t.Parallel()
		cfg := defaultConfig()
		cfg.BaseLSN = 100
		cfg.Expect = []string{"r1", "r2"}
		cfg.ReportTTL = 1500 * time.Millisecond
		began := time.Now()
		ts := startServer(t, cfg)
		r1 := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9})
		r1.start()
		go func() {
			// r1 keeps reporting; r2 never shows up.
			tk := time.NewTicker(100 * time.Millisecond)
			defer tk.Stop()
			for range tk.C {
				if r1.stream.Send(&pb.ReplicaMessage{Kind: &pb.ReplicaMessage_Report{Report: &pb.Report{ReadFloor: 80, Applied: 100}}}) != nil {
					return
				}
			}
		}()
		wait.For(t, cfg.ReportTTL+5*time.Second, "the hold to end", func() bool { return !ts.vol.last().held })
		for _, c := range ts.vol.calls() {
			if !c.held && c.at.Sub(began) < cfg.ReportTTL {
				t.Fatalf("the hold ended %s after the start, before the TTL %s", c.at.Sub(began), cfg.ReportTTL)
			}
		}
		if got := ts.vol.last(); got.floor != 80 {
			t.Fatalf("floor after the hold %d, want r1's 80", got.floor)
		}
	})
	t.Run("nothing expected", func(t *testing.T) {
		t.Parallel()
		ts := startServer(t, defaultConfig())
		if got := ts.vol.last(); got.held {
			t.Fatalf("floor at Attach %+v with no replica expected: held", got)
		}
	})
}

// Close ends every subscription (Unavailable), refuses new ones, and
// ignores MTRs submitted after it.
func TestCloseEndsSubscriptions(t *testing.T) {
	ts := startServer(t, defaultConfig())
	subs := []*subscriber{
		subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9}),
		subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r2", VolumeId: 9}),
	}
	for _, s := range subs {
		s.start()
	}
	ts.submit(makeMTR(1, 1, 10))
	ts.durable(1)
	ts.s.Close()
	for _, s := range subs {
		for s.next(5*time.Second) != nil {
		}
		if code := s.ended(5 * time.Second); code != codes.Unavailable {
			t.Fatalf("subscription ended with %v (%v), want Unavailable", code, s.endErr())
		}
	}
	wait.For(t, 5*time.Second, "the subscriptions to go", func() bool { return len(ts.s.Subscriptions()) == 0 })
	late := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r3", VolumeId: 9})
	if m := late.next(5 * time.Second); m != nil {
		t.Fatalf("a subscription after Close got %v", m)
	}
	if code := late.ended(5 * time.Second); code != codes.Unavailable {
		t.Fatalf("a subscription after Close ended with %v, want Unavailable", code)
	}
	ts.submit(makeMTR(2, 1, 10))
	ts.durable(2)
	ts.s.Close()
}

// What the Server refuses: a stream before Attach, a first message that is
// not a Hello naming the replica, another volume's Hello.
func TestSubscribeRefusals(t *testing.T) {
	s := NewServer(defaultConfig())
	ts := &testServer{s: s, vol: &fakeVolume{}}
	lis := listen(t)
	ts.addr = lis.Addr().String()
	ts.serve(lis)
	t.Cleanup(func() {
		s.Close()
		ts.g.Stop()
	})
	early := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9})
	if code := early.ended(5 * time.Second); code != codes.Unavailable {
		t.Fatalf("before Attach: %v, want Unavailable", code)
	}
	s.Attach(ts.vol)
	for _, c := range []struct {
		hello *pb.Hello
		want  codes.Code
	}{
		{&pb.Hello{VolumeId: 9}, codes.InvalidArgument},
		{&pb.Hello{ReplicaId: "r1", VolumeId: 8}, codes.FailedPrecondition},
		// A replica that followed a newer writer: this one is fenced.
		{&pb.Hello{ReplicaId: "r1", VolumeId: 9, Epoch: 2, Applied: 5}, codes.FailedPrecondition},
	} {
		sub := subscribe(t, ts.addr, c.hello)
		if code := sub.ended(5 * time.Second); code != c.want {
			t.Fatalf("hello %v: %v (%v), want %v", c.hello, code, sub.endErr(), c.want)
		}
	}
	// A report before any Hello.
	raw := rawStream(t, ts.addr)
	if err := raw.Send(&pb.ReplicaMessage{Kind: &pb.ReplicaMessage_Report{Report: &pb.Report{ReadFloor: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a report first: %v, want InvalidArgument", err)
	}
	// Volume id 0 in the Hello means any.
	any := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r2"})
	if st := any.start(); st.VolumeId != 9 {
		t.Fatalf("start %v", st)
	}
}

// PGStatesOf inverts the wire form the Server sends.
func TestPGStatesRoundTrip(t *testing.T) {
	v := &fakeVolume{}
	for _, at := range []uint64{0, 1, 77} {
		if got, want := PGStatesOf(pgStatesPB(v.PGStates(at))), v.PGStates(at); !reflect.DeepEqual(got, want) {
			t.Fatalf("at %d: %+v, want %+v", at, got, want)
		}
	}
}

// An MTR larger than a message part goes out in parts of at most
// maxPartBytes of records (a record alone may exceed it), every part but
// the last marked partial, contiguous, with no VDL among them.
func TestLargeMTRGoesInParts(t *testing.T) {
	ts := startServer(t, defaultConfig())
	sub := subscribe(t, ts.addr, &pb.Hello{ReplicaId: "r1", VolumeId: 9, Epoch: 1})
	c := newCollector(t, sub.start())
	small := makeMTR(1, 2, 100)
	big := makeMTR(3, 5, 400<<10)   // parts of 2, 2 and 1 records
	huge := makeMTR(8, 2, 1200<<10) // one record a part, each above the bound
	ts.submit(small)
	ts.submit(big)
	ts.durable(small.last)
	ts.submit(huge)
	ts.durable(big.last)
	ts.durable(huge.last)
	var parts []*pb.MTR
	deadline := time.Now().Add(10 * time.Second)
	for c.vdl != huge.last {
		m := sub.next(time.Until(deadline))
		if m == nil {
			t.Fatalf("stream ended: %v", sub.endErr())
		}
		for _, one := range Unbatch(m) {
			if p := one.GetMtr(); p != nil {
				parts = append(parts, p)
			}
		}
		c.take(m)
	}
	sameMTRs(t, c.mtrs, []mtr{small, big, huge})
	var shape []string
	for _, p := range parts {
		size := 0
		for _, r := range p.Records {
			size += len(r)
		}
		if len(p.Records) > 1 && size > maxPartBytes {
			t.Fatalf("part %d..%d holds %d bytes of records, above %d", p.FirstLsn, p.LastLsn, size, maxPartBytes)
		}
		shape = append(shape, fmt.Sprintf("%d-%d/%v", p.FirstLsn, p.LastLsn, p.Partial))
	}
	if got, want := strings.Join(shape, " "), "1-2/false 3-4/true 5-6/true 7-7/false 8-8/true 9-9/false"; got != want {
		t.Fatalf("parts %s, want %s", got, want)
	}
}
