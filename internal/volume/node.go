package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/quorum"
)

// entry is one encoded record queued to one node. Each node has its own
// entry (see enqueue); the record bytes are shared by the PG's nodes. sent is
// guarded by the node's mu.
type entry struct {
	pg   *pgState
	lsn  uint64
	data []byte
	sent bool // sent on some stream of this node before (a resend counts)
}

// request is an Append request awaiting its response.
type request struct {
	seq     uint64
	entries []*entry
	sentAt  time.Time
}

// node is one storage node: its connection, Append stream, queue and sender.
type node struct {
	c    *Client
	m    Member
	conn *grpc.ClientConn
	rpc  pb.StorageClient
	wake chan struct{} // cap 1: something to send, or room to send it

	readLat   atomic.Int64 // EWMA of GetPage round trips, ns (0: none yet)
	appendLat atomic.Int64 // EWMA of Append round trips, ns

	mu          sync.Mutex
	pgs         map[uint32]*pgState // PGs written through this node
	queue       []*entry            // not yet sent on the current stream, LSN order
	queueBytes  int
	inflight    []*request // sent on the current stream, unanswered, in order
	connected   bool
	connectedAt time.Time       // when the current stream opened
	reportAsked atomic.Bool     // see askReport
	declared    map[uint32]bool // PGs declared on the current stream
	seq         uint64
	lastSend    time.Time
	answered    bool  // the current stream has answered at least once
	streams     int   // streams opened so far
	lastErr     error // why the last stream ended
}

func (c *Client) newNodeLocked(m Member) *node {
	n := &node{
		c:        c,
		m:        m,
		wake:     make(chan struct{}, 1),
		pgs:      make(map[uint32]*pgState),
		declared: make(map[uint32]bool),
	}
	conn, err := grpc.NewClient(m.Addr, c.dials...)
	if err != nil {
		// NewClient fails only on a malformed target or options; the sender
		// reports it on every attempt instead of failing the caller.
		c.log.Error("bad storage node address", "node", m.NodeID, "addr", m.Addr, "err", err)
	} else {
		n.conn = conn
		n.rpc = pb.NewStorageClient(conn)
	}
	if !c.cfg.ReadOnly {
		c.wg.Add(1)
		go n.run()
	}
	return n
}

// addPG registers a PG whose records this node receives. Called under
// Client.mu.
func (n *node) addPG(p *pgState) {
	n.mu.Lock()
	n.pgs[p.idx] = p
	n.mu.Unlock()
}

// redeclare has the next request declare the PG again: its membership
// changed. Called under Client.mu.
func (n *node) redeclare(pg uint32) {
	n.mu.Lock()
	delete(n.declared, pg)
	n.mu.Unlock()
}

// removePG stops sending the PG to this node, which is no longer one of its
// members: its queued records are dropped, and answers to records already
// sent are ignored by the tracker. Called under Client.mu.
func (n *node) removePG(pg uint32) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.pgs, pg)
	delete(n.declared, pg)
	kept := n.queue[:0]
	bytes := 0
	for _, e := range n.queue {
		if e.pg.idx == pg {
			continue
		}
		kept = append(kept, e)
		bytes += len(e.data)
	}
	clear(n.queue[len(kept):])
	n.queue = kept
	n.queueBytes = bytes
}

// signal wakes the sender.
func (n *node) signal() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// enqueue appends records (in LSN order) to the node's queue. Called under
// Client.mu, which makes the tracker available for trimming.
func (n *node) enqueue(es []*entry) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, e := range es {
		// Each node gets its own entry so that the sent flag is per node;
		// the record bytes are shared.
		ne := *e
		n.queue = append(n.queue, &ne)
		n.queueBytes += len(e.data)
	}
	if n.queueBytes > maxQueueBytes {
		n.trimLocked()
	}
}

// trimLocked drops queued records that are durable on a write quorum of
// their PG (LSN <= PGCL): the node's gossip fetches them from its peers.
// Records above PGCL are kept whatever the size; the LAL bounds them. Called
// under Client.mu and n.mu.
func (n *node) trimLocked() {
	t := n.c.tracker
	kept := n.queue[:0]
	bytes := 0
	dropped := 0
	for _, e := range n.queue {
		if e.lsn <= t.PGCL(e.pg.idx) {
			dropped++
			continue
		}
		kept = append(kept, e)
		bytes += len(e.data)
	}
	clear(n.queue[len(kept):])
	n.queue = kept
	n.queueBytes = bytes
	n.c.st.dropped.Add(uint64(dropped))
}

// reachable: a connected stream whose oldest unanswered request is recent.
func (n *node) reachable(now time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.reachableLocked(now)
}

func (n *node) reachableLocked(now time.Time) bool {
	return n.connected && (len(n.inflight) == 0 || now.Sub(n.inflight[0].sentAt) < staleAfter)
}

// progress is what quorum.Judge weighs for this node's segment of a PG
// whose SCL it last raised (or first reported) at sclAt and last reported at
// reportAt. A stream that opened since then restarts the clock: a node that
// just came back gets the same time as any other to show that it catches up.
func (n *node) progress(now time.Time, scl uint64, sclAt, reportAt time.Time, recv received, head uint64) quorum.Progress {
	n.mu.Lock()
	defer n.mu.Unlock()
	since := sclAt
	if n.connectedAt.After(since) {
		since = n.connectedAt
	}
	got := recv.head == head && !recv.at.Before(n.connectedAt)
	if got && recv.at.After(since) {
		since = recv.at
	}
	return quorum.Progress{Reachable: n.reachableLocked(now), SCL: scl, Received: got, Unchanged: now.Sub(since), Reported: now.Sub(reportAt)}
}

// askReport has the sender send, as soon as it may, a request that carries
// every PG of the node, so that the node reports each PG's SCL.
func (n *node) askReport() {
	n.reportAsked.Store(true)
	n.signal()
}

// connectedSince is when the current stream opened.
func (n *node) connectedSince() time.Time {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.connectedAt
}

// latency is the node's round-trip estimate for read routing.
func (n *node) latency() time.Duration {
	if l := n.readLat.Load(); l > 0 {
		return time.Duration(l)
	}
	return time.Duration(n.appendLat.Load())
}

func observe(ewma *atomic.Int64, d time.Duration) {
	old := ewma.Load()
	if old == 0 {
		ewma.Store(int64(d))
		return
	}
	ewma.Store(old + (int64(d)-old)/5)
}

// run keeps an Append stream open to the node, reconnecting with backoff.
func (n *node) run() {
	c := n.c
	defer c.wg.Done()
	delay := minBackoff
	failing := false
	for c.ctx.Err() == nil {
		var err error
		var answered bool
		if n.rpc == nil {
			err = fmt.Errorf("no connection to %q", n.m.Addr)
		} else {
			answered, err = n.stream()
		}
		if c.ctx.Err() != nil {
			return
		}
		if reasonOf(err) == pb.Reason_STALE_EPOCH {
			c.fence(n.m.NodeID, err)
			return
		}
		if reasonOf(err) == pb.Reason_STALE_MEMBERSHIP {
			// The node was told of a newer membership of the PG than this
			// client counts acks under; until the client takes it, every
			// stream would be refused the same way.
			c.refreshMembership(n.m.NodeID, detailOf(err).GetPg(), err)
		}
		n.mu.Lock()
		n.lastErr = err
		n.mu.Unlock()
		if answered {
			delay = minBackoff
		}
		if !failing || answered {
			attrs := []any{"node", n.m.NodeID, "addr", n.m.Addr, "err", err}
			if r := reasonOf(err); r != pb.Reason_REASON_UNSPECIFIED {
				attrs = append(attrs, "reason", r.String())
			}
			c.log.Warn("append stream to storage node failed; retrying in the background", attrs...)
		} else {
			c.log.Debug("append stream retry failed", "node", n.m.NodeID, "err", err)
		}
		failing = true
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return
		}
		delay = min(2*delay, maxBackoff)
		c.st.reconnects.Add(1)
		if n.conn != nil {
			// gRPC's own reconnect timer may be further out than ours.
			n.conn.ResetConnectBackoff()
		}
	}
}

// stream runs one Append stream until it fails. answered reports whether the
// node answered at least one request on it.
func (n *node) stream() (answered bool, err error) {
	c := n.c
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	s, err := n.rpc.Append(ctx)
	if err != nil {
		return false, err
	}
	n.connect()
	recvErr := make(chan error, 1)
	go func() { recvErr <- n.recv(s) }()
	defer func() {
		cancel()
		<-recvErr // the receiver has exited before the state is reset
		n.mu.Lock()
		n.connected = false
		answered = n.answered
		n.mu.Unlock()
	}()

	tick := time.NewTicker(keepaliveEvery / 5)
	defer tick.Stop()
	for {
		for {
			req := n.build(time.Now())
			if req == nil {
				break
			}
			if err := s.Send(req); err != nil {
				if errors.Is(err, io.EOF) {
					// The stream ended; Recv has the real status.
					e := <-recvErr
					recvErr <- e
					return false, e
				}
				return false, err
			}
		}
		select {
		case <-n.wake:
		case <-tick.C:
			if stuck := n.unansweredFor(time.Now()); stuck > resetAfter {
				// A node that holds requests this long without answering is
				// wedged or stopped; a new stream requeues them.
				return false, fmt.Errorf("node %s answered nothing for %s; resetting the stream", n.m.NodeID, stuck.Round(time.Millisecond))
			}
		case err := <-recvErr:
			recvErr <- err // for the deferred drain
			return false, err
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// unreachableCause says why the node is not reachable now.
func (n *node) unreachableCause(now time.Time) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.connected && len(n.inflight) > 0 {
		return fmt.Errorf("connected, but no answer for %s", now.Sub(n.inflight[0].sentAt).Round(time.Millisecond))
	}
	if n.lastErr != nil {
		if st, ok := status.FromError(n.lastErr); ok {
			return errors.New(st.Message())
		}
	}
	return n.lastErr
}

// unansweredFor is how long the oldest unanswered request has waited.
func (n *node) unansweredFor(now time.Time) time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.inflight) == 0 {
		return 0
	}
	return now.Sub(n.inflight[0].sentAt)
}

// connect prepares the node's state for a new stream: records sent on the
// old stream and never answered are requeued, and records now durable on a
// write quorum (LSN <= PGCL) are dropped instead of resent.
func (n *node) connect() {
	c := n.c
	c.mu.Lock()
	defer c.mu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	var all []*entry
	for _, r := range n.inflight {
		all = append(all, r.entries...)
	}
	all = append(all, n.queue...)
	n.inflight = nil
	n.queue = nil
	n.queueBytes = 0
	dropped := 0
	for _, e := range all {
		if e.lsn <= c.tracker.PGCL(e.pg.idx) {
			dropped++
			continue
		}
		n.queue = append(n.queue, e)
		n.queueBytes += len(e.data)
	}
	c.st.dropped.Add(uint64(dropped))
	clear(n.declared)
	n.connected = true
	n.connectedAt = time.Now()
	n.answered = false
	n.lastSend = time.Time{} // announce ourselves (declare, keepalive) at once
	n.streams++
	if n.streams > 1 {
		c.log.Info("append stream to storage node (re)connected", "node", n.m.NodeID, "addr", n.m.Addr,
			"dropped_durable", dropped, "to_send", len(n.queue))
	}
}

// build takes the next request off the queue, or a keepalive, or nil when
// there is nothing to send or too many requests in flight.
func (n *node) build(now time.Time) *pb.AppendRequest {
	c := n.c
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.connected || len(n.inflight) >= maxInflight {
		return nil
	}
	var take []*entry
	asked := n.reportAsked.Load()
	switch {
	case len(n.queue) > 0:
		k, size := 0, 0
		for k < len(n.queue) && (k == 0 || size+len(n.queue[k].data) <= maxRequestBytes) {
			size += len(n.queue[k].data)
			k++
		}
		take = n.queue[:k:k]
		if k == len(n.queue) {
			n.queue = nil
		} else {
			n.queue = n.queue[k:]
		}
		n.queueBytes -= size
	case asked && len(n.pgs) > 0 && len(n.inflight) == 0:
		// a report of every PG, asked for by a waiter (askReport); with
		// requests in flight it rides on the next one with records, so it
		// never takes the last slot of a slow node
	case len(n.inflight) == 0 && len(n.pgs) > 0 && now.Sub(n.lastSend) >= keepaliveEvery:
		// keepalive: empty batches for every PG
	default:
		return nil
	}
	if asked {
		n.reportAsked.Store(false)
	}
	n.seq++
	req := &pb.AppendRequest{
		Seq:          n.seq,
		Volume:       c.cfg.VolumeID,
		Epoch:        c.cfg.Epoch,
		MinReadPoint: c.mrp.Load(),
		// Durable by the tracker's count, so storage may keep it for
		// recovery.
		Vdl: c.vdl.Load(),
	}
	// Declare every PG of the node not yet declared on this stream: after a
	// reconnect the first request re-declares them all.
	if len(n.declared) < len(n.pgs) {
		idxs := make([]uint32, 0, len(n.pgs))
		for idx := range n.pgs {
			if !n.declared[idx] {
				idxs = append(idxs, idx)
			}
		}
		sort.Slice(idxs, func(i, j int) bool { return idxs[i] < idxs[j] })
		for _, idx := range idxs {
			req.Declare = append(req.Declare, n.pgs[idx].mem.Load().spec)
			n.declared[idx] = true
		}
	}
	batches := map[uint32]*pb.SegmentBatch{}
	batch := func(p *pgState) *pb.SegmentBatch {
		b, ok := batches[p.idx]
		if !ok {
			b = &pb.SegmentBatch{Pg: p.idx, RetainLsn: p.retain.Load(), MembershipEpoch: p.mem.Load().epoch}
			batches[p.idx] = b
			req.Batches = append(req.Batches, b)
		}
		return b
	}
	if take == nil || asked {
		idxs := make([]uint32, 0, len(n.pgs))
		for idx := range n.pgs {
			idxs = append(idxs, idx)
		}
		sort.Slice(idxs, func(i, j int) bool { return idxs[i] < idxs[j] })
		for _, idx := range idxs {
			batch(n.pgs[idx])
		}
	}
	var bytes, resent uint64
	for _, e := range take {
		b := batch(e.pg)
		b.Records = append(b.Records, e.data)
		bytes += uint64(len(e.data))
		if e.sent {
			resent++
		}
		e.sent = true
	}
	n.inflight = append(n.inflight, &request{seq: req.Seq, entries: take, sentAt: now})
	n.lastSend = now
	c.st.requests.Add(1)
	c.st.recordsSent.Add(uint64(len(take)))
	c.st.recordBytesSent.Add(bytes)
	c.st.resent.Add(resent)
	return req
}

// recv handles the stream's responses until it fails.
func (n *node) recv(s grpc.BidiStreamingClient[pb.AppendRequest, pb.AppendResponse]) error {
	for {
		resp, err := s.Recv()
		if err != nil {
			return err
		}
		now := time.Now()
		n.mu.Lock()
		if len(n.inflight) == 0 || n.inflight[0].seq != resp.GetSeq() {
			want := uint64(0)
			if len(n.inflight) > 0 {
				want = n.inflight[0].seq
			}
			n.mu.Unlock()
			return fmt.Errorf("storage node %s answered request %d, expected %d", n.m.NodeID, resp.GetSeq(), want)
		}
		req := n.inflight[0]
		n.inflight[0] = nil
		n.inflight = n.inflight[1:]
		n.answered = true
		n.mu.Unlock()
		observe(&n.appendLat, now.Sub(req.sentAt))
		n.c.onAcks(n, resp.GetAcks(), req.entries)
		n.signal()
	}
}
