package volume

import (
	"context"
	"errors"
	"fmt"
	"time"

	pb "github.com/borealis-db/borealis/api/borealispb"
	"github.com/borealis-db/borealis/internal/quorum"
)

// ReadPage returns the page as of readLSN (normally a read point: the VDL,
// or a pinned one). It asks one segment of the page's PG, preferring those
// known (from acks and earlier reads) to be complete up to the PG's last LSN
// at or below readLSN (sent as pg_tail_lsn) and, among
// them, a reachable one with the lowest round-trip time. If that segment has not
// answered within max(3x its usual latency, 2ms) the same read goes to the
// next one too (hedging), and the first success wins; a refusal
// (SEGMENT_BEHIND, SEGMENT_CORRUPT, BELOW_GC_HORIZON, ...) or a connection
// error moves on to the next segment at once. Segments not known to be complete are tried last
// (all of them, in latency order, for a fresh client that knows no SCLs).
//
// A page of a PG that no segment hosts reads as zeros: a segment is created
// on its node by the first batch of records the writer sends it, and a
// record is durable only once 4 of 6 segments hold it. So when a read
// quorum (3 of 6) of the PG's nodes answer PG_NOT_HOSTED, no record of the PG
// was ever durable and every page of it is still all zeros. This is only
// trusted if this client has not itself written the PG at or below readLSN.
//
// If no segment can serve the read, the error is a *ReadError naming the PG
// and what each segment said.
//
// The decisions are made in package quorum (ReadNeed, ReadOrder,
// HedgeDelay, Config.ReadsAsZeros); ReadPage gathers what they weigh and
// sends the requests.
func (c *Client) ReadPage(ctx context.Context, page uint64, readLSN uint64) ([]byte, error) {
	idx, err := c.pgOf(page)
	if err != nil {
		return nil, err
	}
	p, err := c.pg(ctx, idx, false)
	if errors.Is(err, ErrNoSuchPG) {
		if t := c.roTail(idx, readLSN); t > 0 {
			// The writer's stream showed records of the PG: it exists,
			// whatever an older view of the catalog says.
			return nil, fmt.Errorf("volume %d: PG %d holds records up to LSN %d, but the catalog does not list it yet: %w", c.cfg.VolumeID, idx, t, err)
		}
		return make([]byte, c.cfg.PageSize), nil
	}
	if err != nil {
		return nil, err
	}
	c.st.reads.Add(1)

	type cand struct {
		n   *node
		m   Member
		lat time.Duration
	}
	c.mu.Lock()
	if err := c.failedLocked(); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	now0 := time.Now()
	tail := c.pgTailLocked(p, readLSN)
	recovered, epoch := p.recovered, c.cfg.Epoch
	if c.cfg.ReadOnly {
		epoch = c.roEpoch.Load()
		recovered = c.roRecovered[p.idx]
		for id, scl := range c.roSCLs[p.idx] {
			p.noteSCLLocked(id, scl, now0, time.Time{})
		}
		delete(c.roSCLs, p.idx)
	}
	// A known tail (from our own writes or from recovery) means the PG holds
	// records at or below readLSN, so "not hosted" can't mean "all zeros".
	wrote := (p.first != 0 && p.first <= readLSN) || tail > 0
	now := time.Now()
	pm := p.mem.Load()
	known := make([]quorum.ReadCandidate, len(pm.nodes))
	for i, n := range pm.nodes {
		id := pm.members[i].NodeID
		known[i] = quorum.ReadCandidate{ID: quorum.SegmentID(id), SCL: p.scl[id], Reachable: n.reachable(now), Latency: n.latency()}
	}
	c.mu.Unlock()
	order := quorum.ReadOrder(known, quorum.ReadNeed(readLSN, tail))
	cands := make([]cand, len(order))
	for k, i := range order {
		cands[k] = cand{n: pm.nodes[i], m: pm.members[i], lat: known[i].Latency}
	}

	req := &pb.GetPageRequest{
		Volume:       c.cfg.VolumeID,
		Pg:           idx,
		Page:         page,
		ReadLsn:      readLSN,
		Epoch:        epoch,
		PgTailLsn:    tail,
		RecoveredLsn: recovered,
		Replica:      c.cfg.ReadOnly,
	}
	type result struct {
		k    int
		resp *pb.GetPageResponse
		err  error
	}
	results := make(chan result, len(cands))
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	launched := 0
	launch := func() time.Duration {
		k := launched
		launched++
		n := cands[k].n
		go func() {
			actx, acancel := context.WithTimeout(rctx, c.cfg.ReadTimeout)
			defer acancel()
			start := time.Now()
			var resp *pb.GetPageResponse
			var err error
			if n.rpc == nil {
				err = fmt.Errorf("no connection to %q", n.m.Addr)
			} else {
				resp, err = n.rpc.GetPage(actx, req)
			}
			if err == nil {
				observe(&n.readLat, time.Since(start))
			}
			results <- result{k, resp, err}
		}()
		return quorum.HedgeDelay(cands[k].lat, minHedge)
	}
	hedge := time.NewTimer(launch())
	defer hedge.Stop()
	errs := make([]error, len(cands))
	for done := 0; done < launched; {
		select {
		case r := <-results:
			done++
			if r.err == nil && len(r.resp.GetData()) != c.cfg.PageSize {
				r.err = fmt.Errorf("returned %d bytes, want a %d-byte page", len(r.resp.GetData()), c.cfg.PageSize)
			}
			if r.err == nil {
				c.noteSCL(p, cands[r.k].m.NodeID, r.resp.GetScl())
				return r.resp.GetData(), nil
			}
			if reasonOf(r.err) == pb.Reason_STALE_EPOCH && !c.cfg.ReadOnly {
				c.fence(cands[r.k].m.NodeID, r.err)
				c.mu.Lock()
				err := c.failedLocked()
				c.mu.Unlock()
				return nil, err
			}
			errs[r.k] = r.err
			if launched < len(cands) {
				c.st.hedged.Add(1)
				hedge.Reset(launch())
			}
		case <-hedge.C:
			if launched < len(cands) {
				c.st.hedged.Add(1)
				hedge.Reset(launch())
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}

	notHosted := map[quorum.SegmentID]bool{}
	re := &ReadError{Volume: c.cfg.VolumeID, PG: idx, Page: page, ReadLSN: readLSN}
	for k, err := range errs {
		if reasonOf(err) == pb.Reason_PG_NOT_HOSTED {
			notHosted[quorum.SegmentID(cands[k].m.NodeID)] = true
		}
		re.Tried = append(re.Tried, SegmentError{Member: cands[k].m, Err: err})
	}
	if pm.qcfg.ReadsAsZeros(func(s quorum.SegmentID) bool { return notHosted[s] }, wrote) {
		return make([]byte, c.cfg.PageSize), nil
	}
	return nil, re
}

// noteSCL records an SCL a segment reported outside an ack (e.g. a read).
func (c *Client) noteSCL(p *pgState, nodeID string, scl uint64) {
	c.mu.Lock()
	if p.noteSCLLocked(nodeID, scl, time.Now(), time.Time{}) {
		p.retain.Store(c.retainLocked(p, time.Now()))
	}
	c.mu.Unlock()
}
