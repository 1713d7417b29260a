package storage

import (
	"context"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// probeEvery is how many gossip ticks pass between probes of a peer when a
// segment sees no reason to pull: a node that missed the end of a stream has
// no holes to notice, only peers that are ahead.
const probeEvery = 5

func (s *seg) notePeerSCL(node string, scl uint64) {
	for {
		old := s.peerSCLs.Load()
		next := map[string]uint64{}
		if old != nil {
			if (*old)[node] >= scl {
				return
			}
			for k, v := range *old {
				next[k] = v
			}
		}
		next[node] = scl
		if s.peerSCLs.CompareAndSwap(old, &next) {
			return
		}
	}
}

func (s *seg) forgetPeer(node string) {
	for {
		old := s.peerSCLs.Load()
		if old == nil {
			return
		}
		if _, ok := (*old)[node]; !ok {
			return
		}
		next := map[string]uint64{}
		for k, v := range *old {
			if k != node {
				next[k] = v
			}
		}
		if s.peerSCLs.CompareAndSwap(old, &next) {
			return
		}
	}
}

func (s *seg) peerAhead() bool {
	m := s.peerSCLs.Load()
	if m == nil {
		return false
	}
	mine := s.durableSCL.Load()
	for _, v := range *m {
		if v > mine {
			return true
		}
	}
	return false
}

// pickPeer prefers the peer known to be furthest ahead; with none known
// ahead, it takes the peers in turn, so every one is probed now and then.
func (s *seg) pickPeer(peers []*pb.Member, tick int) *pb.Member {
	best := peers[tick%len(peers)]
	if m := s.peerSCLs.Load(); m != nil {
		top := s.durableSCL.Load()
		for _, p := range peers {
			if scl := (*m)[p.NodeId]; scl > top {
				best, top = p, scl
			}
		}
	}
	return best
}

func (n *Node) gossipLoop() {
	t := time.NewTicker(n.cfg.GossipInterval)
	defer t.Stop()
	for tick := 0; ; tick++ {
		onlyHoles := false
		select {
		case <-n.stop:
			return
		case <-t.C:
		case <-n.holeFound:
			onlyHoles = true
		}
		for _, s := range n.segments() {
			// A hydrating segment's hydration pulls the log once its pages
			// are in; a retired one completes nothing more and only serves
			// its peers.
			if s.hydrating.Load() || s.retiredFlag.Load() {
				continue
			}
			n.mu.Lock()
			// A segment below the tail a truncation named lacks records
			// just as one with holes does.
			holes := s.chain.HeldAbove() > 0 || s.want.Load() > s.chain.SCL()
			peers := append([]*pb.Member(nil), s.peers...)
			n.mu.Unlock()
			if len(peers) == 0 || (onlyHoles && !holes) {
				continue
			}
			turn := tick
			if !holes && !s.peerAhead() {
				if tick%probeEvery != 0 {
					continue
				}
				// Probes come every probeEvery ticks: counting ticks would
				// ask the same peer each time when there are probeEvery
				// peers (a PG of 6 segments has 5).
				turn = tick / probeEvery
			}
			peer := s.pickPeer(peers, turn)
			if err := n.pullFrom(s, peer); err != nil {
				// Ask the others first until this one answers again.
				s.forgetPeer(peer.NodeId)
				n.log.Debug("gossip pull failed", "segment", s.key.String(), "peer", peer.NodeId, "err", err)
			}
		}
	}
}

// pullFrom fetches from peer the records above this segment's SCL and ingests
// them like any append, fsync included.
func (n *Node) pullFrom(s *seg, peer *pb.Member) error {
	conn, err := n.peerConn(peer.Addr)
	if err != nil {
		return err
	}
	client := pb.NewStorageClient(conn)
	start, pulled := s.durableSCL.Load(), 0
	defer func() {
		// Records held above a hole move no SCL; every gossip round would
		// log them again.
		if pulled > 0 && s.durableSCL.Load() > start {
			n.log.Info("gossip filled segment from peer", "segment", s.key.String(), "peer", peer.NodeId,
				"records_received", pulled, "scl_before", start, "scl_after", s.durableSCL.Load())
		}
	}()
	for i := 0; i < 64; i++ {
		select {
		case <-n.stop:
			return nil
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		after := s.durableSCL.Load()
		resp, err := client.Pull(ctx, &pb.PullRequest{
			Volume: s.key.vol, Pg: s.key.pg, After: after, MaxBytes: 4 << 20,
			FromNode: n.cfg.ID, Scl: after,
		})
		cancel()
		if err != nil {
			return err
		}
		if len(resp.Truncations) > 0 {
			// Before any record: a newer writer's records must not link onto
			// records its recovery dropped here.
			ts := TruncationsFromPB(resp.Truncations)
			n.mu.Lock()
			lacks := lacksTruncation(s.chain, ts)
			n.mu.Unlock()
			if lacks {
				if _, err := n.truncate(s.key.vol, s.key.pg, 0, ts); err != nil {
					return fmt.Errorf("apply the truncations peer %s knows: %w", peer.NodeId, err)
				}
				n.log.Info("learnt recovery truncations from a peer", "segment", s.key.String(), "peer", peer.NodeId)
				// The records came for the SCL before; ask again.
				continue
			}
		}
		s.notePeerSCL(peer.NodeId, resp.Scl)
		if resp.LogFloor > after && resp.Scl > after {
			if s.hydrationWarnDue(time.Now()) {
				n.log.Warn("peer has collected records this segment lacks; it needs hydration from pages unless another peer still holds them",
					"segment", s.key.String(), "peer", peer.NodeId, "scl", after, "peer_log_floor", resp.LogFloor)
			}
			if !s.hydrating.Load() {
				n.rehydrateIfStranded(s)
				if s.hydrating.Load() {
					return nil
				}
			}
		}
		if len(resp.Records) == 0 {
			return nil
		}
		pulled += len(resp.Records)
		n.mu.Lock()
		held := s.chain.HeldAbove()
		n.mu.Unlock()
		g, _, err := n.ingest(&incoming{volume: s.key.vol, fromPeer: true,
			batches: []incomingBatch{{pg: s.key.pg, raw: resp.Records}}})
		if err != nil {
			return err
		}
		if g != nil {
			<-g.done
			if g.err != nil {
				return g.err
			}
		}
		n.mu.Lock()
		useless := s.chain.SCL() == after && s.chain.HeldAbove() == held
		n.mu.Unlock()
		if useless {
			// Nothing taken: the peer's records are ones a truncation
			// dropped here, and its SCL counts them. Ask others first.
			s.forgetPeer(peer.NodeId)
			return nil
		}
		if !resp.More || s.durableSCL.Load() == after {
			return nil
		}
	}
	return nil
}

// hydrationWarnDue reports whether a minute has passed since the last
// warning that the segment needs hydration, and if so starts a new minute.
func (s *seg) hydrationWarnDue(now time.Time) bool {
	last := s.hydrationWarned.Load()
	if last != 0 && now.Sub(time.Unix(0, last)) < time.Minute {
		return false
	}
	return s.hydrationWarned.CompareAndSwap(last, now.UnixNano())
}

func (n *Node) peerConn(addr string) (*grpc.ClientConn, error) {
	n.peersMu.Lock()
	defer n.peersMu.Unlock()
	if c, ok := n.peers[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// gRPC's default backoff grows to two minutes; a peer that restarts
		// should be a gossip source again within a second.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes)))
	if err != nil {
		return nil, err
	}
	n.peers[addr] = c
	return c, nil
}

// peerHorizons are what s knows of its peers, for retainFloor.
func (n *Node) peerHorizons(s *seg) []peerHorizon {
	n.mu.Lock()
	peers := slices.Clone(s.peers)
	joining := s.joining
	n.mu.Unlock()
	scls := s.peerSCLs.Load()
	out := make([]peerHorizon, len(peers))
	for i, p := range peers {
		out[i].Joining = joining[p.NodeId]
		if scls != nil {
			out[i].SCL, out[i].Known = (*scls)[p.NodeId]
		}
	}
	return out
}
