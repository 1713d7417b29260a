// Package redostream is the writer's redo stream to read replicas, over
// gRPC: the writer's Server, which keeps a log of recent MTRs and feeds each
// subscription from it, and the replica's Subscribe loop. What a replica
// does with the stream is decided by internal/replica's Follower.
//
// MTRs go out once they are durable, with the VDL that covers them, in one
// message per rise of the VDL. A replica applies an MTR only once the VDL
// passes it anyway, so sending it earlier would not make it visible sooner;
// sending it with its VDL costs one message, not two, on both sides, per
// rise of the VDL (which covers many commits under load), and a replica
// never holds an MTR that a crash of the writer leaves undurable.
package redostream

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/replica"
	"github.com/borealis-db/borealis/internal/volume"
)

// Defaults.
const (
	// DefaultLogBytes bounds the MTRs the writer keeps for subscriptions
	// that fall behind or reconnect; one that needs an older MTR resyncs.
	DefaultLogBytes = 64 << 20
	// Heartbeat: a subscription with nothing new gets its VDL this often, so
	// a replica knows it is current.
	Heartbeat = 100 * time.Millisecond
	// pgStatesEvery paces the segment SCLs sent for read routing.
	pgStatesEvery = 250 * time.Millisecond
	// maxSendBytes caps the MTR bytes gathered for one round of sends.
	maxSendBytes = 1 << 20
)

// ServerConfig configures a Server.
type ServerConfig struct {
	VolumeID   uint64
	Epoch      uint64
	PageSize   int
	PagesPerPG uint64
	// BaseLSN is the VDL the writer recovered at: the stream starts there.
	BaseLSN uint64
	// ReportTTL is how long a replica's read floor holds storage's GC back
	// without a new report.
	ReportTTL time.Duration
	// Expect names the replicas the catalog listed when the writer started:
	// until each reported (or ReportTTL passed), the PGMRPL is held.
	Expect   []string
	LogBytes int
	Logger   *slog.Logger
}

// Volume is what the Server needs of the writer's volume client.
type Volume interface {
	// PGStates returns each PG's state at a read point.
	PGStates(at uint64) []volume.PGState
	// SetReadFloor takes the replicas' part of the PGMRPL.
	SetReadFloor(floor uint64, held bool)
	// PinReadPoint pins the VDL (no min_read_point above it) until release.
	PinReadPoint() (lsn uint64, release func())
}

// Server is the writer's side of the redo stream. It implements
// pb.ReplicationServer and volume.RedoObserver. It is made before the
// volume client (whose Config.Redo it is) and attached to it after.
type Server struct {
	pb.UnimplementedReplicationServer
	cfg ServerConfig
	log *slog.Logger
	vol Volume

	// floorMu serializes computing the PGMRPL and handing it to the volume
	// client, whose lock is taken after it (never under mu).
	floorMu sync.Mutex

	mu sync.Mutex
	// mtrs are the recent MTRs, contiguous in LSN: mtrs[i] is entry
	// number evicted+i. start is the LSN before the first of them (the
	// last LSN evicted, or BaseLSN).
	mtrs     []logMTR
	evicted  int
	start    uint64
	bytes    int
	last     uint64 // last LSN submitted
	vdl      uint64
	vdlAt    time.Time
	floors   *replica.PGMRPL
	subs     map[*subscription]struct{}
	closed   bool
	stopTick chan struct{}
}

type logMTR struct {
	first, last uint64
	records     [][]byte
	size        int
}

// subscription is one replica's stream.
type subscription struct {
	id   string
	wake chan struct{}
	// next is the absolute log index of the next MTR to send.
	next int
	// Counters, guarded by Server.mu.
	applied, floor uint64
	bytes, sent    uint64
}

var (
	_ pb.ReplicationServer = (*Server)(nil)
	_ volume.RedoObserver  = (*Server)(nil)
)

// NewServer returns a Server whose stream starts at cfg.BaseLSN.
func NewServer(cfg ServerConfig) *Server {
	if cfg.LogBytes <= 0 {
		cfg.LogBytes = DefaultLogBytes
	}
	if cfg.ReportTTL <= 0 {
		cfg.ReportTTL = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger.With("volume_id", cfg.VolumeID, "epoch", cfg.Epoch),
		start:    cfg.BaseLSN,
		last:     cfg.BaseLSN,
		vdl:      cfg.BaseLSN,
		vdlAt:    time.Now(),
		floors:   replica.NewPGMRPL(cfg.ReportTTL, time.Now(), cfg.Expect),
		subs:     map[*subscription]struct{}{},
		stopTick: make(chan struct{}),
	}
	return s
}

// Attach gives the Server its volume client and starts it: the PGMRPL
// (held at first) goes to the client at once, before it sends storage
// anything.
func (s *Server) Attach(v Volume) {
	s.vol = v
	s.updateFloor()
	go s.tick()
}

// Submitted takes an MTR (volume.RedoObserver; under the client's lock).
func (s *Server) Submitted(first, last uint64, records [][]byte) {
	size := 0
	for _, r := range records {
		size += len(r)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if first != s.last+1 {
		// Cannot happen: LSNs are allocated without gaps. Subscriptions
		// see the gap and resync.
		s.log.Error("redo stream: MTR does not follow the previous one", "first", first, "previous_last", s.last)
	}
	s.mtrs = append(s.mtrs, logMTR{first: first, last: last, records: records, size: size})
	s.bytes += size
	s.last = last
	for s.bytes > s.cfg.LogBytes && len(s.mtrs) > 1 && s.mtrs[0].last <= s.vdl {
		s.bytes -= s.mtrs[0].size
		s.start = s.mtrs[0].last
		s.mtrs[0] = logMTR{}
		s.mtrs = s.mtrs[1:]
		s.evicted++
	}
	// Subscriptions wake when it is durable (Durable), not now: it goes
	// out with the VDL that covers it.
}

// Durable takes a new VDL (volume.RedoObserver; under the client's lock).
func (s *Server) Durable(vdl uint64, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if vdl > s.vdl {
		s.vdl, s.vdlAt = vdl, at
		s.wakeLocked()
	}
}

func (s *Server) wakeLocked() {
	for sub := range s.subs {
		select {
		case sub.wake <- struct{}{}:
		default:
		}
	}
}

// Serving starts the PGMRPL's hold afresh: replicas find the stream only
// once the writer is in the catalog, so the hold's time runs from there.
func (s *Server) Serving() {
	s.mu.Lock()
	s.floors.Begin(time.Now())
	s.mu.Unlock()
}

// Close ends every subscription.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.stopTick)
	s.wakeLocked()
	s.mu.Unlock()
}

// tick lets expired floor reports go and the start's hold end.
func (s *Server) tick() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stopTick:
			return
		case <-t.C:
			s.updateFloor()
		}
	}
}

func (s *Server) updateFloor() {
	s.floorMu.Lock()
	defer s.floorMu.Unlock()
	s.mu.Lock()
	floor, held := s.floors.Value(math.MaxUint64, time.Now())
	s.mu.Unlock()
	s.vol.SetReadFloor(floor, held)
}

// Subscription is one subscribed replica, as Subscriptions reports it.
type Subscription struct {
	ID             string
	Applied, Floor uint64
	Bytes, MTRs    uint64
}

// Subscriptions lists the replicas subscribed now, by id.
func (s *Server) Subscriptions() []Subscription {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Subscription, 0, len(s.subs))
	for sub := range s.subs {
		out = append(out, Subscription{ID: sub.id, Applied: sub.applied, Floor: sub.floor, Bytes: sub.bytes, MTRs: sub.sent})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Subscribe serves one replica: its Hello, then the stream.
func (s *Server) Subscribe(stream pb.Replication_SubscribeServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil || hello.ReplicaId == "" {
		return status.Error(codes.InvalidArgument, "redo stream: the first message must be a Hello naming the replica")
	}
	if hello.Epoch > s.cfg.Epoch {
		// A replica that followed a newer writer: this one was fenced (or
		// is about to be) and its MTRs above its VDL may be discarded.
		return status.Errorf(codes.FailedPrecondition, "redo stream: this writer's epoch %d is older than the replica's %d; a newer writer took over", s.cfg.Epoch, hello.Epoch)
	}
	if hello.VolumeId != 0 && hello.VolumeId != s.cfg.VolumeID {
		return status.Errorf(codes.FailedPrecondition, "redo stream: this writer serves volume %d, not %d", s.cfg.VolumeID, hello.VolumeId)
	}
	sub := &subscription{id: hello.ReplicaId, wake: make(chan struct{}, 1)}
	s.mu.Lock()
	vol := s.vol
	s.mu.Unlock()
	if vol == nil {
		return status.Error(codes.Unavailable, "redo stream: the writer is not serving")
	}
	// Until the replica's floor is in the PGMRPL and its start's tails are
	// read, nothing above the VDL now may reach storage as min_read_point:
	// storage would collect versions a read at From needs, and the volume
	// client would let go of the PG LSNs those tails are made of.
	_, unpin := vol.PinReadPoint()
	defer unpin()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return status.Error(codes.Unavailable, "redo stream: the writer is not serving")
	}
	from := s.vdl
	if k, ok := s.resumeLocked(hello); ok {
		from, sub.next = hello.Applied, k
	} else {
		sub.next = s.indexAfterLocked(from)
	}
	vdl := s.vdl
	sub.applied, sub.floor = hello.Applied, from
	// The replica's floor from now on: the one its Hello tells, or (a
	// replica that tells none) where it starts, since whatever it pins
	// from now on is at or above it. A report of its last subscription
	// that has not expired still holds the older read points it may pin.
	if hello.ReadFloor > 0 {
		s.floors.Report(sub.id, min(hello.ReadFloor, from), time.Now())
	} else {
		s.floors.Provisional(sub.id, from, time.Now())
	}
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, sub)
		s.mu.Unlock()
	}()
	s.updateFloor()
	s.log.Info("replica subscribed", "replica", sub.id, "asked_after", hello.Applied, "asked_epoch", hello.Epoch, "from", from, "vdl", vdl)

	start := &pb.StreamStart{
		VolumeId: s.cfg.VolumeID, Epoch: s.cfg.Epoch, From: from, Vdl: vdl,
		PageSize: uint32(s.cfg.PageSize), PagesPerPg: s.cfg.PagesPerPG,
		Pgs: pgStatesPB(vol.PGStates(from)), HeartbeatMs: uint32(Heartbeat.Milliseconds()),
	}
	unpin()
	if err := stream.Send(&pb.ReplicationMessage{Kind: &pb.ReplicationMessage_Start{Start: start}}); err != nil {
		return err
	}
	ctx := stream.Context()
	reports := make(chan error, 1)
	go func() { reports <- s.readReports(stream, sub) }()
	return s.feed(ctx, stream, sub, from, reports)
}

// resumeLocked reports whether the log holds every MTR above hello.Applied
// in hello's epoch, and the index of the first of them.
func (s *Server) resumeLocked(hello *pb.Hello) (int, bool) {
	a := hello.Applied
	if hello.Epoch != s.cfg.Epoch || a < s.start || a > s.vdl {
		return 0, false
	}
	if a == s.start {
		return s.evicted, true
	}
	i := sort.Search(len(s.mtrs), func(i int) bool { return s.mtrs[i].last >= a })
	if i == len(s.mtrs) || s.mtrs[i].last != a {
		return 0, false // not an MTR boundary
	}
	return s.evicted + i + 1, true
}

// indexAfterLocked is the log index of the first MTR above lsn (an MTR
// boundary at or above start).
func (s *Server) indexAfterLocked(lsn uint64) int {
	i := sort.Search(len(s.mtrs), func(i int) bool { return s.mtrs[i].first > lsn })
	return s.evicted + i
}

func (s *Server) readReports(stream pb.Replication_SubscribeServer, sub *subscription) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		r := m.GetReport()
		if r == nil {
			continue
		}
		s.mu.Lock()
		sub.applied, sub.floor = r.Applied, r.ReadFloor
		s.floors.Report(sub.id, r.ReadFloor, time.Now())
		s.mu.Unlock()
		s.updateFloor()
	}
}

// errBehind ends a subscription that needs an MTR the log no longer has.
var errBehind = errors.New("redo stream: the replica fell behind the writer's log")

func (s *Server) feed(ctx context.Context, stream pb.Replication_SubscribeServer, sub *subscription, from uint64, reports <-chan error) error {
	sentLSN, sentVDL := from, uint64(0)
	heartbeat := time.NewTicker(Heartbeat)
	defer heartbeat.Stop()
	nextStates := time.Now().Add(pgStatesEvery)
	beat := false
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return status.Error(codes.Unavailable, "redo stream: the writer is stopping")
		}
		if sub.next < s.evicted {
			s.mu.Unlock()
			s.log.Warn("replica fell behind the redo log; it resyncs", "replica", sub.id, "at", sentLSN)
			return status.Error(codes.OutOfRange, errBehind.Error())
		}
		vdl, vdlAt := s.vdl, s.vdlAt
		// The durable MTRs not sent yet, up to maxSendBytes a round.
		var batch []logMTR
		size := 0
		for i := sub.next - s.evicted; i < len(s.mtrs) && s.mtrs[i].last <= vdl && (size == 0 || size+s.mtrs[i].size <= maxSendBytes); i++ {
			batch = append(batch, s.mtrs[i])
			size += s.mtrs[i].size
		}
		sub.next += len(batch)
		s.mu.Unlock()

		if len(batch) > 0 {
			sentLSN = batch[len(batch)-1].last
		}
		// The VDL goes with the MTRs it covers, once all of them are sent
		// (a VDL beyond them is a loss to the replica, and one in between
		// would not be a VDL the writer reached); a heartbeat repeats it.
		var up *pb.VDLUpdate
		if vdl <= sentLSN && (vdl > sentVDL || beat) {
			up = &pb.VDLUpdate{Vdl: vdl, DurableUnixUs: vdlAt.UnixMicro()}
			sentVDL = max(sentVDL, vdl)
		}
		if err := sendBatch(stream, batch, up); err != nil {
			return err
		}
		beat = false
		s.mu.Lock()
		sub.bytes += uint64(size)
		sub.sent += uint64(len(batch))
		s.mu.Unlock()
		if now := time.Now(); !now.Before(nextStates) {
			nextStates = now.Add(pgStatesEvery)
			msg := &pb.ReplicationMessage{Kind: &pb.ReplicationMessage_Pgs{Pgs: &pb.PGStates{Pgs: pgStatesPB(s.vol.PGStates(sentVDL))}}}
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		if len(batch) > 0 {
			continue
		}
		select {
		case <-sub.wake:
		case <-heartbeat.C:
			beat = true
		case err := <-reports:
			if err == nil {
				err = errors.New("redo stream: the replica closed its side")
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sendBatch sends mtrs and then up (if not nil) in as few messages as it
// can: one Batch, except that an MTR above maxPartBytes goes out alone, in
// parts.
func sendBatch(stream pb.Replication_SubscribeServer, mtrs []logMTR, up *pb.VDLUpdate) error {
	b := &pb.Batch{}
	for _, m := range mtrs {
		if m.size <= maxPartBytes {
			b.Mtrs = append(b.Mtrs, &pb.MTR{FirstLsn: m.first, LastLsn: m.last, Records: m.records})
			continue
		}
		if len(b.Mtrs) > 0 {
			if err := stream.Send(&pb.ReplicationMessage{Kind: &pb.ReplicationMessage_Batch{Batch: b}}); err != nil {
				return err
			}
			b = &pb.Batch{}
		}
		if err := sendMTR(stream, m); err != nil {
			return err
		}
	}
	switch {
	case len(b.Mtrs) > 0:
		b.Vdl = up
		return stream.Send(&pb.ReplicationMessage{Kind: &pb.ReplicationMessage_Batch{Batch: b}})
	case up != nil:
		return stream.Send(&pb.ReplicationMessage{Kind: &pb.ReplicationMessage_Vdl{Vdl: up}})
	}
	return nil
}

// maxPartBytes bounds the records of one MTR message: a larger MTR goes out
// in parts (gRPC refuses messages above 4 MiB by default).
const maxPartBytes = 1 << 20

// sendMTR sends m whole, or in parts of at most maxPartBytes of records
// (at least one record each).
func sendMTR(stream pb.Replication_SubscribeServer, m logMTR) error {
	if m.size <= maxPartBytes {
		return stream.Send(&pb.ReplicationMessage{Kind: &pb.ReplicationMessage_Mtr{Mtr: &pb.MTR{FirstLsn: m.first, LastLsn: m.last, Records: m.records}}})
	}
	for i := 0; i < len(m.records); {
		j, size := i, 0
		for j < len(m.records) && (j == i || size+len(m.records[j]) <= maxPartBytes) {
			size += len(m.records[j])
			j++
		}
		part := &pb.MTR{FirstLsn: m.first + uint64(i), LastLsn: m.first + uint64(j) - 1, Records: m.records[i:j], Partial: j < len(m.records)}
		if err := stream.Send(&pb.ReplicationMessage{Kind: &pb.ReplicationMessage_Mtr{Mtr: part}}); err != nil {
			return err
		}
		i = j
	}
	return nil
}

func pgStatesPB(states []volume.PGState) []*pb.PGState {
	out := make([]*pb.PGState, 0, len(states))
	for _, st := range states {
		p := &pb.PGState{Pg: st.PG, Tail: st.Tail, Recovered: st.Recovered}
		ids := make([]string, 0, len(st.SCLs))
		for id := range st.SCLs {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			p.Scls = append(p.Scls, &pb.SegmentSCL{NodeId: id, Scl: st.SCLs[id]})
		}
		out = append(out, p)
	}
	return out
}

// PGStatesOf converts the wire form back.
func PGStatesOf(pgs []*pb.PGState) []volume.PGState {
	out := make([]volume.PGState, 0, len(pgs))
	for _, p := range pgs {
		st := volume.PGState{PG: p.Pg, Tail: p.Tail, Recovered: p.Recovered, SCLs: map[string]uint64{}}
		for _, sc := range p.Scls {
			st.SCLs[sc.NodeId] = sc.Scl
		}
		out = append(out, st)
	}
	return out
}
