package redostream

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/volume"
	"github.com/borealis-db/borealis/internal/wait"
)

// noFloor is what the Server hands SetReadFloor when no replica reports:
// the PGMRPL of no replica at all.
const noFloor = math.MaxUint64

func testLogger() *slog.Logger {
	if os.Getenv("REDOSTREAM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// fakeVolume is the writer's volume client as the Server sees it: fixed PG
// states, and a record of every read floor handed to it.
type fakeVolume struct {
	mu     sync.Mutex
	floors []floorCall
}

type floorCall struct {
	floor uint64
	held  bool
	at    time.Time
}

// PGStates returns two PGs whose tails are at and at-1 (at most), with
// SCLs that tell them apart.
func (f *fakeVolume) PGStates(at uint64) []volume.PGState {
	return []volume.PGState{
		{PG: 0, Tail: at, Recovered: 3, SCLs: map[string]uint64{"s0": at, "s1": at + 1}},
		{PG: 2, Tail: at / 2, SCLs: map[string]uint64{"s2": at / 2}},
	}
}

func (f *fakeVolume) PinReadPoint() (uint64, func()) { return 0, func() {} }

func (f *fakeVolume) SetReadFloor(floor uint64, held bool) {
	f.mu.Lock()
	f.floors = append(f.floors, floorCall{floor, held, time.Now()})
	f.mu.Unlock()
}

// last is the latest SetReadFloor call.
func (f *fakeVolume) last() floorCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.floors) == 0 {
		return floorCall{}
	}
	return f.floors[len(f.floors)-1]
}

// calls returns the SetReadFloor calls so far.
func (f *fakeVolume) calls() []floorCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]floorCall(nil), f.floors...)
}

// testServer is a Server served over gRPC on a loopback port.
type testServer struct {
	s    *Server
	vol  *fakeVolume
	addr string
	mu   sync.Mutex
	g    *grpc.Server
}

func defaultConfig() ServerConfig {
	return ServerConfig{VolumeID: 9, Epoch: 1, PageSize: 4096, PagesPerPG: 16, Logger: testLogger()}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

// rawStream opens a Subscribe stream and sends nothing on it.
func rawStream(t *testing.T, addr string) pb.Replication_SubscribeClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		conn.Close()
	})
	stream, err := pb.NewReplicationClient(conn).Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return stream
}

// startServer makes a Server of cfg, attaches a fakeVolume and serves it.
func startServer(t *testing.T, cfg ServerConfig) *testServer {
	t.Helper()
	ts := &testServer{s: NewServer(cfg), vol: &fakeVolume{}}
	ts.s.Attach(ts.vol)
	lis := listen(t)
	ts.addr = lis.Addr().String()
	ts.serve(lis)
	t.Cleanup(func() {
		ts.s.Close()
		ts.mu.Lock()
		g := ts.g
		ts.mu.Unlock()
		g.Stop()
	})
	return ts
}

func (ts *testServer) serve(lis net.Listener) {
	g := grpc.NewServer()
	pb.RegisterReplicationServer(g, ts.s)
	go g.Serve(lis)
	ts.mu.Lock()
	ts.g = g
	ts.mu.Unlock()
}

// restart stops serving (every subscription breaks) and serves the same
// Server again on the same address.
func (ts *testServer) restart(t *testing.T) {
	t.Helper()
	ts.mu.Lock()
	g := ts.g
	ts.mu.Unlock()
	g.Stop()
	var lis net.Listener
	wait.For(t, 5*time.Second, "listening again on "+ts.addr, func() bool {
		var err error
		lis, err = net.Listen("tcp", ts.addr)
		return err == nil
	})
	ts.serve(lis)
}

// mtr is one MTR as the volume client hands it to the Server.
type mtr struct {
	first, last uint64
	records     [][]byte
}

// makeMTR returns an MTR of n records of size bytes from LSN first, each
// record stamped with its LSN.
func makeMTR(first uint64, n, size int) mtr {
	m := mtr{first: first, last: first + uint64(n) - 1}
	for i := range n {
		b := bytes.Repeat([]byte{byte(first) + byte(i)}, size)
		copy(b, fmt.Sprintf("lsn %d", first+uint64(i)))
		m.records = append(m.records, b)
	}
	return m
}

func (ts *testServer) submit(m mtr) { ts.s.Submitted(m.first, m.last, m.records) }

func (ts *testServer) durable(vdl uint64) { ts.s.Durable(vdl, time.Now()) }

// subscriber is a raw subscription: the Hello is sent, and what the writer
// streams is read by a goroutine into msgs (until paused is closed, if
// the subscriber was made slow).
type subscriber struct {
	t      *testing.T
	stream pb.Replication_SubscribeClient
	cancel context.CancelFunc
	msgs   chan *pb.ReplicationMessage
	done   chan struct{}
	err    error // why the stream ended, once done is closed
	mu     sync.Mutex
}

type subOpts struct {
	// slow: nothing is read until read is called, and the connection's
	// flow-control windows are fixed at gRPC's initial 64 KiB, so the
	// writer's sends block soon.
	slow bool
}

func subscribe(t *testing.T, addr string, hello *pb.Hello, o ...subOpts) *subscriber {
	t.Helper()
	var opt subOpts
	if len(o) > 0 {
		opt = o[0]
	}
	dials := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if opt.slow {
		dials = append(dials, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	}
	conn, err := grpc.NewClient(addr, dials...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		conn.Close()
	})
	stream, err := pb.NewReplicationClient(conn).Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.ReplicaMessage{Kind: &pb.ReplicaMessage_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	s := &subscriber{t: t, stream: stream, cancel: cancel, msgs: make(chan *pb.ReplicationMessage, 1<<16), done: make(chan struct{})}
	if !opt.slow {
		s.read()
	}
	return s
}

// read starts reading the stream into msgs.
func (s *subscriber) read() {
	go func() {
		defer close(s.done)
		for {
			m, err := s.stream.Recv()
			if err != nil {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
				return
			}
			s.msgs <- m
		}
	}()
}

// next returns the next message, failing the test if none comes within d
// (nil if the stream ended).
func (s *subscriber) next(d time.Duration) *pb.ReplicationMessage {
	s.t.Helper()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case m := <-s.msgs:
		return m
	case <-s.done:
		select {
		case m := <-s.msgs:
			return m
		default:
			return nil
		}
	case <-t.C:
		s.t.Fatalf("no message from the writer within %s", d)
		return nil
	}
}

// start returns the subscription's first message, which must be a start.
func (s *subscriber) start() *pb.StreamStart {
	s.t.Helper()
	m := s.next(5 * time.Second)
	st := m.GetStart()
	if st == nil {
		s.t.Fatalf("first message %v, want a StreamStart (stream error %v)", m, s.endErr())
	}
	return st
}

// report sends a Report.
func (s *subscriber) report(floor, applied uint64) {
	s.t.Helper()
	if err := s.stream.Send(&pb.ReplicaMessage{Kind: &pb.ReplicaMessage_Report{Report: &pb.Report{ReadFloor: floor, Applied: applied}}}); err != nil {
		s.t.Fatalf("report: %v", err)
	}
}

// ended waits for the stream to end and returns its status code.
func (s *subscriber) ended(d time.Duration) codes.Code {
	s.t.Helper()
	select {
	case <-s.done:
	case <-time.After(d):
		s.t.Fatalf("the stream did not end within %s", d)
	}
	return status.Code(s.endErr())
}

func (s *subscriber) endErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// collector checks a subscription's messages as they come: MTR parts
// contiguous from the start's From (a large MTR's parts assembled), VDL
// updates never beyond the last whole MTR received and never going back.
type collector struct {
	t        *testing.T
	from     uint64
	mtrs     []mtr  // whole MTRs received
	parts    int    // MTR messages received
	partial  *mtr   // the MTR being received in parts
	lastLSN  uint64 // last LSN received (From, before any)
	complete uint64 // last LSN of the last whole MTR received
	vdl      uint64 // highest VDL update
	vdls     int
	beats    int // VDL updates that repeat the previous one
	pgs      []*pb.PGStates
}

func newCollector(t *testing.T, st *pb.StreamStart) *collector {
	return &collector{t: t, from: st.From, lastLSN: st.From, complete: st.From}
}

// take checks one message.
func (c *collector) take(m *pb.ReplicationMessage) {
	c.t.Helper()
	if m.GetBatch() != nil {
		for _, one := range Unbatch(m) {
			c.take(one)
		}
		return
	}
	switch k := m.Kind.(type) {
	case *pb.ReplicationMessage_Mtr:
		p := k.Mtr
		if p.FirstLsn != c.lastLSN+1 || p.LastLsn < p.FirstLsn {
			c.t.Fatalf("MTR %d..%d after LSN %d: not contiguous", p.FirstLsn, p.LastLsn, c.lastLSN)
		}
		if uint64(len(p.Records)) != p.LastLsn-p.FirstLsn+1 {
			c.t.Fatalf("MTR %d..%d has %d records", p.FirstLsn, p.LastLsn, len(p.Records))
		}
		c.parts++
		c.lastLSN = p.LastLsn
		if c.partial == nil {
			c.partial = &mtr{first: p.FirstLsn}
		}
		c.partial.last = p.LastLsn
		c.partial.records = append(c.partial.records, p.Records...)
		if !p.Partial {
			c.mtrs = append(c.mtrs, *c.partial)
			c.partial = nil
			c.complete = p.LastLsn
		}
	case *pb.ReplicationMessage_Vdl:
		v := k.Vdl.Vdl
		if v > c.complete {
			c.t.Fatalf("VDL update %d beyond the last whole MTR received (LSN %d)", v, c.complete)
		}
		if v < c.vdl {
			c.t.Fatalf("VDL update %d after %d: went back", v, c.vdl)
		}
		if v == c.vdl && c.vdls > 0 {
			c.beats++
		}
		if k.Vdl.DurableUnixUs == 0 {
			c.t.Fatalf("VDL update %d without its time", v)
		}
		c.vdl = v
		c.vdls++
	case *pb.ReplicationMessage_Pgs:
		c.pgs = append(c.pgs, k.Pgs)
	case *pb.ReplicationMessage_Start:
		c.t.Fatalf("a second StreamStart in one subscription")
	}
}

// until takes messages until cond holds, failing after d.
func (c *collector) until(s *subscriber, d time.Duration, what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		left := time.Until(deadline)
		if left <= 0 {
			c.t.Fatalf("gave up after %s waiting for %s (received MTRs up to %d, VDL %d)", d, what, c.lastLSN, c.vdl)
		}
		m := s.next(left)
		if m == nil {
			c.t.Fatalf("the stream ended (%v) while waiting for %s", s.endErr(), what)
		}
		c.take(m)
	}
}

// sameMTRs fails unless got are exactly want, in order.
func sameMTRs(t *testing.T, got, want []mtr) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("received %d MTRs, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.first != w.first || g.last != w.last || len(g.records) != len(w.records) {
			t.Fatalf("MTR %d: got %d..%d (%d records), want %d..%d (%d)", i, g.first, g.last, len(g.records), w.first, w.last, len(w.records))
		}
		for j := range w.records {
			if !bytes.Equal(g.records[j], w.records[j]) {
				t.Fatalf("MTR %d..%d record %d differs", w.first, w.last, j)
			}
		}
	}
}
