package storage

import (
	"context"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"

	pb "github.com/borealis-db/borealis/api/borealispb"
)

// strandedCheckEvery spaces a segment's checks of whether its peers still
// hold the log after its SCL: each check asks every peer. The first check
// comes this long after gossip first met a peer that collected the log the
// segment lacks, so that a segment merely behind, whose log a peer's GC
// passed a moment ago, first gets its chance with the others.
const strandedCheckEvery = 10 * time.Second

// logHorizon is what a peer says of the PG's log after an SCL: whether it
// answered, and whether it has collected records after that SCL (its log
// floor is above it, and it holds records above it).
type logHorizon struct {
	answered  bool
	collected bool
}

// stranded decides, from what the peers said, whether a segment can never
// be completed by gossip: some peer answered and every peer that answered
// has collected the log after the segment's SCL. A peer that did not
// answer may still hold that log, but copying the pages again is correct
// whatever it holds, where waiting for it may never end.
func stranded(peers []logHorizon) bool {
	answered := 0
	for _, p := range peers {
		if !p.answered {
			continue
		}
		if !p.collected {
			return false
		}
		answered++
	}
	return answered > 0
}

// rehydrateIfStranded is called by gossip when a peer has collected records
// that s lacks, such as when the node comes back with its old data after
// the writer stopped counting it (its retain LSN leaves out members silent
// for long) and its peers collected their logs. If no peer holds the log
// after s's SCL, s copies the PG's pages again from a complete peer, in
// place and with no membership change, as a segment emptied would; until
// then it counts toward no quorum and refuses reads, as it is behind anyway.
func (n *Node) rehydrateIfStranded(s *seg) {
	now := time.Now().UnixNano()
	last := s.strandedChecked.Load()
	if last != 0 && time.Duration(now-last) < strandedCheckEvery || !s.strandedChecked.CompareAndSwap(last, now) || last == 0 {
		return
	}
	n.mu.Lock()
	peers := slices.Clone(s.peers)
	n.mu.Unlock()
	scl := s.durableSCL.Load()
	horizons := make([]logHorizon, 0, len(peers))
	for _, p := range peers {
		horizons = append(horizons, n.logHorizonOf(s, p, scl))
	}
	if !stranded(horizons) {
		return
	}
	n.mu.Lock()
	if s.hydrating.Load() || s.retired || s.durableSCL.Load() != scl {
		n.mu.Unlock()
		return
	}
	if err := n.droppedSegment(s); err != nil {
		n.mu.Unlock()
		return
	}
	st := hydrateState{Recopy: true}
	key, raw := metaSubKey(s.key.vol, s.key.pg, metaHydrate), st.encode()
	g := n.commits.join(func(b *pebble.Batch, _ *group) { b.Set(key, raw, nil) })
	n.mu.Unlock()
	<-g.done
	if g.err != nil {
		n.log.Warn("could not start the rehydration of a segment its peers cannot complete", "segment", s.key.String(), "err", g.err)
		return
	}
	n.mu.Lock()
	s.hydRecord = true
	s.hyd = st
	s.hydCopied.Store(0)
	s.hydRate.Store(0)
	s.hydTotal.Store(0)
	s.hydrating.Store(true)
	n.mu.Unlock()
	n.stats.repairsStarted.Add(1)
	n.log.Warn("every peer has collected the log after this segment's SCL: it copies the PG's pages again from a complete peer",
		"segment", s.key.String(), "scl", scl, "peers_answered", countAnswered(horizons))
	n.startHydration(s)
}

func countAnswered(hs []logHorizon) int {
	c := 0
	for _, h := range hs {
		if h.answered {
			c++
		}
	}
	return c
}

// logHorizonOf asks peer, headers only, for the PG's log after scl.
func (n *Node) logHorizonOf(s *seg, peer *pb.Member, scl uint64) logHorizon {
	conn, err := n.peerConn(peer.Addr)
	if err != nil {
		return logHorizon{}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := pb.NewStorageClient(conn).Pull(ctx, &pb.PullRequest{Volume: s.key.vol, Pg: s.key.pg, After: scl, MaxBytes: 1, HeadersOnly: true})
	if err != nil {
		return logHorizon{}
	}
	return logHorizon{answered: true, collected: resp.LogFloor > scl && resp.Scl > scl}
}
