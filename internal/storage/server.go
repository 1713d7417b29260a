package storage

import (
	"cmp"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/redo"
)

// MaxMessageBytes bounds one gRPC message; batches and pulls stay below it.
const MaxMessageBytes = 64 << 20

// headerWireBytes is about what one RecordHeader costs in a PullResponse,
// for its max_bytes.
const headerWireBytes = 48

// Serve answers RPCs on lis until Close.
func (n *Node) Serve(lis net.Listener) error {
	n.mu.Lock()
	if n.closed.Load() {
		n.mu.Unlock()
		return errors.New("storage: node is closed")
	}
	if n.server == nil {
		// serverOptions: see node.go.
		n.server = grpc.NewServer(serverOptions()...)
		pb.RegisterStorageServer(n.server, &rpcServer{n: n})
	}
	srv := n.server
	n.mu.Unlock()
	err := srv.Serve(lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

type rpcServer struct {
	pb.UnimplementedStorageServer
	n *Node
}

type pendingAck struct {
	seq     uint64
	g       *group
	touched []*seg
}

// Append ingests requests in arrival order and answers each after its group
// commit. Receiving, ingesting and answering run apart, so the next request
// is already filling the next group while one is being synced.
func (r *rpcServer) Append(stream pb.Storage_AppendServer) error {
	n := r.n
	ctx := stream.Context()
	type received struct {
		req *pb.AppendRequest
		err error
	}
	reqs := make(chan received)
	go func() {
		for {
			req, err := stream.Recv()
			select {
			case reqs <- received{req, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	pending := make(chan pendingAck, 64)
	answered := make(chan error, 1)
	go func() { answered <- r.answer(stream, pending) }()
	// unanswered gives back the in-flight count of requests that answer
	// left behind when it stopped early.
	unanswered := func() {
		for {
			select {
			case _, ok := <-pending:
				if !ok {
					return
				}
				n.appending.Add(-1)
			default:
				return
			}
		}
	}
	finish := func(err error) error {
		close(pending)
		if aerr := <-answered; err == nil {
			err = aerr
		}
		unanswered()
		return err
	}
	for {
		var in received
		select {
		case in = <-reqs:
		case <-ctx.Done():
			return finish(ctx.Err())
		case err := <-answered:
			// Answering failed (a failed commit or a broken stream): end the
			// stream now rather than wait for a request that may never come.
			unanswered()
			return err
		}
		if in.err == io.EOF {
			return finish(nil)
		}
		if in.err != nil {
			return finish(in.err)
		}
		n.appending.Add(1)
		g, touched, err := n.ingest(fromAppendRequest(in.req))
		if err != nil {
			n.appending.Add(-1)
			n.log.Warn("append refused", "volume", in.req.Volume, "epoch", in.req.Epoch, "err", err)
			return finish(toStatus(err))
		}
		pending <- pendingAck{seq: in.req.Seq, g: g, touched: dedupSegs(touched)}
	}
}

// answer sends the acks of ingested requests in order, each once its group
// is synced. It returns on the first failure, leaving the rest unanswered.
func (r *rpcServer) answer(stream pb.Storage_AppendServer, pending <-chan pendingAck) error {
	n := r.n
	for p := range pending {
		if p.g != nil {
			<-p.g.done
			if p.g.err != nil {
				n.appending.Add(-1)
				return toStatus(p.g.err)
			}
		}
		resp := &pb.AppendResponse{Seq: p.seq, Acks: make([]*pb.SegmentAck, 0, len(p.touched))}
		for _, s := range p.touched {
			resp.Acks = append(resp.Acks, &pb.SegmentAck{Pg: s.key.pg, Scl: s.durableSCL.Load()})
		}
		n.appending.Add(-1)
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}

func dedupSegs(in []*seg) []*seg {
	out := in[:0:0]
	seen := map[*seg]bool{}
	for _, s := range in {
		if s != nil && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func (r *rpcServer) GetPage(ctx context.Context, req *pb.GetPageRequest) (*pb.GetPageResponse, error) {
	data, pageLSN, scl, err := r.n.readPage(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GetPageResponse{Data: data, PageLsn: pageLSN, Scl: scl}, nil
}

// readPage returns the page as of req.ReadLsn: the newest version at or below
// it with the page's later records up to it applied.
func (n *Node) readPage(req *pb.GetPageRequest) ([]byte, uint64, uint64, error) {
	s := n.segment(req.Volume, req.Pg)
	if s == nil {
		return nil, 0, 0, n.volumeDeletedOrNotHosted(req.Volume, req.Pg)
	}
	if req.Epoch > 0 && !req.Replica {
		n.mu.Lock()
		ve := n.volEpochs[req.Volume]
		n.mu.Unlock()
		if req.Epoch < ve {
			return nil, 0, 0, refuse(pb.Reason_STALE_EPOCH, req.Volume, req.Pg, 0, "volume %d: read with epoch %d, older than epoch %d already seen", req.Volume, req.Epoch, ve)
		}
	}
	if s.hydrating.Load() {
		return nil, 0, 0, refuse(pb.Reason_SEGMENT_BEHIND, req.Volume, req.Pg, req.ReadLsn, "node %s: segment of volume %d PG %d is hydrating from a peer and serves no reads until it is complete", n.cfg.ID, req.Volume, req.Pg)
	}
	if !s.holdsPage(req.Page) {
		return nil, 0, 0, refuse(pb.Reason_BAD_REQUEST, req.Volume, req.Pg, 0, "page %d is not in volume %d PG %d", req.Page, req.Volume, req.Pg)
	}
	// The SCL is loaded before the view is opened: it is raised only after
	// its records are committed, so the view holds all they cover. The GC
	// horizon is checked after: whatever GC did before the check is in the
	// view, and what it does after is not.
	scl := s.durableSCL.Load()
	snap := n.db.NewSnapshot()
	defer snap.Close()
	// A drop marks the segment before its deletions commit: a view that
	// may lack them is refused here, not read as zeros.
	if err := n.droppedSegment(s); err != nil {
		return nil, 0, 0, err
	}
	need := req.ReadLsn
	if req.PgTailLsn > 0 {
		if req.PgTailLsn > req.ReadLsn {
			return nil, 0, 0, refuse(pb.Reason_BAD_REQUEST, req.Volume, req.Pg, req.PgTailLsn, "PG tail LSN %d is above read point %d", req.PgTailLsn, req.ReadLsn)
		}
		need = req.PgTailLsn
	}
	if req.RecoveredLsn > 0 && req.Epoch > 0 && min(req.ReadLsn, scl) > req.RecoveredLsn {
		n.mu.Lock()
		_, truncated := s.chain.TruncationFor(req.Epoch)
		n.mu.Unlock()
		if !truncated {
			return nil, 0, scl, refuse(pb.Reason_SEGMENT_BEHIND, req.Volume, req.Pg, req.RecoveredLsn, "node %s: segment of volume %d PG %d has not applied the recovery truncation of epoch %d, so above LSN %d it may hold records that recovery dropped", n.cfg.ID, req.Volume, req.Pg, req.Epoch, req.RecoveredLsn)
		}
	}
	if need > scl {
		return nil, 0, scl, refuse(pb.Reason_SEGMENT_BEHIND, req.Volume, req.Pg, need, "node %s: segment of volume %d PG %d is complete only to LSN %d, below the %d needed to read at %d", n.cfg.ID, req.Volume, req.Pg, scl, need, req.ReadLsn)
	}
	if mat := s.mat.Load(); req.ReadLsn < mat {
		return nil, 0, scl, refuse(pb.Reason_BELOW_GC_HORIZON, req.Volume, req.Pg, req.ReadLsn, "node %s: read point %d of volume %d PG %d is below %d, where older page versions were collected", n.cfg.ID, req.ReadLsn, req.Volume, req.Pg, mat)
	}
	page, pageLSN, _, err := n.pageAt(snap, s, req.Page, min(req.ReadLsn, scl))
	if n.metCorruption(err) {
		return nil, 0, scl, refuseCorrupt(n, s, err)
	}
	return page, pageLSN, scl, err
}

type reader interface {
	NewIter(*pebble.IterOptions) (*pebble.Iterator, error)
}

// pageAt builds the page as of lsn from the view r. It returns the page, the
// LSN of the newest record in it, and the LSN of the stored version it
// started from (0 if none).
func (n *Node) pageAt(r reader, s *seg, page, lsn uint64) (img []byte, pageLSN, base uint64, err error) {
	vol, pg := s.key.vol, s.key.pg
	buf := make([]byte, s.pageSize.Load())
	vit, err := r.NewIter(&pebble.IterOptions{
		LowerBound: pagePrefix(famVersion, vol, pg, page),
		UpperBound: pageKey(famVersion, vol, pg, page, lsn+1),
	})
	if err != nil {
		return nil, 0, 0, err
	}
	if vit.Last() {
		base = lastUint64(vit.Key())
		img, err := decodeVersion(vit.Key(), vit.Value(), len(buf))
		if err != nil {
			vit.Close()
			return nil, 0, 0, &errCorrupt{corruptItem{item: CorruptPageVersion, seg: s.key, page: page, lsn: base}, err}
		}
		copy(buf, img)
	}
	if err := vit.Close(); err != nil {
		return nil, 0, 0, err
	}
	pageLSN = base
	rit, err := r.NewIter(&pebble.IterOptions{
		LowerBound: pageKey(famRecord, vol, pg, page, base+1),
		UpperBound: pageKey(famRecord, vol, pg, page, lsn+1),
	})
	if err != nil {
		return nil, 0, 0, err
	}
	defer rit.Close()
	for rit.First(); rit.Valid(); rit.Next() {
		rec, err := redo.Decode(rit.Value())
		if err != nil {
			return nil, 0, 0, &errCorrupt{corruptItem{item: CorruptRecord, seg: s.key, page: page, lsn: lastUint64(rit.Key())}, err}
		}
		if err := redo.Apply(buf, &rec); err != nil {
			return nil, 0, 0, status.Errorf(codes.DataLoss, "node %s: stored record at LSN %d does not apply to page %d: %v", n.cfg.ID, rec.LSN, page, err)
		}
		pageLSN = rec.LSN
	}
	return buf, pageLSN, base, rit.Error()
}

func (r *rpcServer) Pull(ctx context.Context, req *pb.PullRequest) (*pb.PullResponse, error) {
	n := r.n
	s := n.segment(req.Volume, req.Pg)
	if s == nil {
		return nil, toStatus(n.volumeDeletedOrNotHosted(req.Volume, req.Pg))
	}
	if req.FromNode != "" {
		s.notePeerSCL(req.FromNode, req.Scl)
		n.touchCopy(s, req.FromNode)
	}
	defer n.stats.pullsServed.Add(1)
	max := int(req.MaxBytes)
	if max <= 0 || max > MaxMessageBytes/2 {
		max = 4 << 20
	}
	resp := &pb.PullResponse{Scl: s.durableSCL.Load(), LogFloor: s.logFloor.Load()}
	snap := n.db.NewSnapshot()
	defer snap.Close()
	if err := n.droppedSegment(s); err != nil {
		return nil, toStatus(err)
	}
	it, err := snap.NewIter(&pebble.IterOptions{
		LowerBound: chainKey(req.Volume, req.Pg, req.After+1),
		UpperBound: prefixEnd(segPrefix(famChain, req.Volume, req.Pg)),
	})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	defer it.Close()
	size := 0
	n.mu.Lock()
	resp.Highest = s.chain.Highest()
	resp.Truncations = TruncationsToPB(s.chain.State().Truncations)
	n.mu.Unlock()
	for it.First(); it.Valid(); it.Next() {
		lsn := lastUint64(it.Key())
		if size >= max {
			resp.More = true
			break
		}
		e, ok := decodeChainEntry(it.Value())
		if !ok {
			return nil, status.Errorf(codes.DataLoss, "node %s: corrupt chain entry at LSN %d", n.cfg.ID, lsn)
		}
		v, closer, err := snap.Get(pageKey(famRecord, req.Volume, req.Pg, e.page, lsn))
		if err != nil {
			return nil, status.Errorf(codes.Internal, "node %s: chain entry at LSN %d without its record: %v", n.cfg.ID, lsn, err)
		}
		if req.HeadersOnly {
			// The CPL flag is only in the record itself.
			rec, err := redo.Decode(v)
			closer.Close()
			if err != nil {
				ce := &errCorrupt{corruptItem{item: CorruptRecord, seg: s.key, page: e.page, lsn: lsn}, err}
				n.metCorruption(ce)
				return nil, toStatus(refuseCorrupt(n, s, ce))
			}
			resp.Headers = append(resp.Headers, &pb.RecordHeader{Lsn: lsn, PrevLsn: rec.PrevLSN, Epoch: rec.Epoch, Cpl: rec.CPL, Page: rec.Page})
			size += headerWireBytes
			continue
		}
		if _, err := redo.PeekHeader(v); err != nil {
			closer.Close()
			// Not sent: the puller asks another peer.
			ce := &errCorrupt{corruptItem{item: CorruptRecord, seg: s.key, page: e.page, lsn: lsn}, err}
			n.metCorruption(ce)
			return nil, toStatus(refuseCorrupt(n, s, ce))
		}
		resp.Records = append(resp.Records, append([]byte(nil), v...))
		closer.Close()
		size += len(v)
	}
	return resp, it.Error()
}

func (r *rpcServer) SegmentInfo(ctx context.Context, req *pb.SegmentInfoRequest) (*pb.SegmentInfoResponse, error) {
	n := r.n
	if req.FenceEpoch > 0 {
		// Before anything else, and whether or not the PG is hosted here:
		// an older writer must not create or extend the segment later.
		if err := n.fence(req.Volume, req.FenceEpoch); err != nil {
			return nil, toStatus(err)
		}
	}
	s := n.segment(req.Volume, req.Pg)
	if s == nil {
		return nil, toStatus(n.volumeDeletedOrNotHosted(req.Volume, req.Pg))
	}
	n.mu.Lock()
	resp := &pb.SegmentInfoResponse{
		Scl:             s.durableSCL.Load(),
		Highest:         s.chain.Highest(),
		Epoch:           n.volEpochs[req.Volume],
		MaterializedLsn: s.mat.Load(),
		LogFloor:        s.logFloor.Load(),
		Holes:           uint32(len(s.chain.Holes())),
		Spec:            s.spec,
		VdlSeen:         s.vdlSeen.Load(),
		Truncations:     TruncationsToPB(s.chain.State().Truncations),
		Retired:         s.retired,

		Hydrating:                 s.hydrating.Load(),
		HydrateBytesCopied:        s.hydCopied.Load(),
		HydrateBytesTotal:         s.hydTotal.Load(),
		HydrateRateBytesPerSecond: math.Float64frombits(s.hydRate.Load()),
	}
	n.mu.Unlock()
	resp.Records = n.countKeys(segPrefix(famChain, s.key.vol, s.key.pg))
	resp.PageVersions = n.countKeys(segPrefix(famVersion, s.key.vol, s.key.pg))
	if err := n.droppedSegment(s); err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

func (r *rpcServer) SegmentSCLs(ctx context.Context, req *pb.SegmentSCLsRequest) (*pb.SegmentSCLsResponse, error) {
	resp := &pb.SegmentSCLsResponse{}
	for _, s := range r.n.segments() {
		if s.key.vol == req.Volume && !s.dropped.Load() {
			resp.Segments = append(resp.Segments, &pb.HostedSCL{Pg: s.key.pg, Scl: s.durableSCL.Load(), Hydrating: s.hydrating.Load()})
		}
	}
	slices.SortFunc(resp.Segments, func(a, b *pb.HostedSCL) int { return cmp.Compare(a.Pg, b.Pg) })
	return resp, nil
}

func (n *Node) countKeys(prefix []byte) uint64 {
	it, err := n.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return 0
	}
	defer it.Close()
	var c uint64
	for it.First(); it.Valid(); it.Next() {
		c++
	}
	return c
}

func (r *rpcServer) Stats(ctx context.Context, req *pb.StatsRequest) (*pb.StatsResponse, error) {
	return r.n.Stats(), nil
}

// Stats returns the node's counters.
func (n *Node) Stats() *pb.StatsResponse {
	n.mu.Lock()
	segs := len(n.segs)
	n.mu.Unlock()
	return &pb.StatsResponse{
		NodeId:            n.cfg.ID,
		Az:                n.cfg.AZ,
		Fsyncs:            n.stats.fsyncs.Load(),
		GroupCommits:      n.stats.groupCommits.Load(),
		AppendRequests:    n.stats.appendRequests.Load(),
		RecordsAppended:   n.stats.recordsAppended.Load(),
		RecordsPulled:     n.stats.recordsPulled.Load(),
		PagesMaterialized: n.stats.pagesMaterialized.Load(),
		DiskBytes:         n.DiskUsage(),
		Segments:          uint32(segs),
		PullsServed:       n.stats.pullsServed.Load(),
		FileBytesWritten:  n.stats.fileBytes.Load(),
	}
}
